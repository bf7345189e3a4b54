"""Similarity search over a tenant's image embeddings: "more like this" and text-to-image.

``exact`` keeps each tenant's embeddings as one float32 matrix in memory and ranks them exactly; ``pgvector`` asks
PostgreSQL's ``vector`` extension when the database has it; ``service`` chooses between them and answers gallery
cards; ``text_encoder`` has a worker turn a query text into a CLIP text embedding.
"""
