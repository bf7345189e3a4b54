"""Chaos tests: real processes killed and restarted mid-job, then the invariants of ``invariants.py`` checked."""
