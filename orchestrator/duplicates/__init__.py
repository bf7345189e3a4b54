"""Duplicates in a tenant's library: the same bytes in several jobs, and near-duplicate pictures found by their
perceptual hashes and CLIP embeddings (``docs/duplicates.md``)."""
