"""Standalone tagging of a folder (``gpu-worker tag``): walk, analyze in batches, write XMP and JSON sidecars.

``walk`` finds media by their bytes, ``checkpoint`` makes runs resumable by content hash, ``keywords`` maps our
``category/label`` tags to XMP keywords, ``exiftool`` talks to one long-lived exiftool process, ``xmp`` edits files
and ``.xmp`` sidecars without ever corrupting an original, ``sidecar`` writes the JSON results, and ``run`` drives
the whole folder through :class:`~gpu_worker.executor.InProcessExecutor`.
"""
