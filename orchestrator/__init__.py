"""The CPU-only orchestrator: API, database, queue, scheduler and the backends that execute analysis.

Nothing in this package imports torch; the in-process backend imports ``gpu_worker`` lazily.
"""

__version__ = "0.1.0"
