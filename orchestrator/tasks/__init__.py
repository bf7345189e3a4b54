"""Celery tasks. Delivery is at-least-once; every task is idempotent (see :mod:`orchestrator.batching`)."""
