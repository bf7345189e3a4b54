"""The HTTP face of the orchestrator: REST under /api/v1 and the server-rendered dashboard."""
