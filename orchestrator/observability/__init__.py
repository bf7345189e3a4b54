"""Observability of the orchestrator: Prometheus metrics read from the database, HTTP metrics and request ids."""
