"""Hostile uploads and metadata: the abuse corpus, what the API answers for each file, and bounded memory."""
