"""Scheduler simulator: seeded workload traces, a simulated GPU market and clock, and the policy under test."""
