"""Writing an asset's tags, people and face regions back into its original file's XMP, with undo.

``plan`` decides what to write (pure), ``apply`` writes a copy of the stored original with exiftool and verifies
it, ``run`` drives one write-back over its assets, ``records`` creates and lists write-backs, ``undo`` puts the
previous files back, and ``archive`` streams a job's current originals as a zip.
"""
