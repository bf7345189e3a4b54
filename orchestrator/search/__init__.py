"""Search: one query language over tags, full text (tag words, transcripts, file names) and asset fields, ranked."""
