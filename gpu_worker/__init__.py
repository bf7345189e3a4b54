"""Self-contained inference worker: analyzers, model store, batched pipeline and its HTTP server.

Importing this package (and ``gpu_worker.contract``) never imports torch; the analyzers load it when they run.
"""

__version__ = "0.1.0"
