"""The web dashboard: server-rendered pages on the orchestrator's FastAPI app (see ``routes`` for the page map)."""
