"""The file-first library: a tenant's files with ``.ai.json`` sidecars exported to folders and imported back.

``export`` writes folders, ``importer`` reads them (and folders tagged by ``gpu-worker tag``), ``documents`` converts
between rows and sidecars, ``names`` makes safe file names, ``scan`` lists a folder, ``commands`` is the CLI group.
"""
