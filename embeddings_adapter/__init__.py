"""Embeddings for rerank: ``EmbeddingService`` over sentence-transformers (imported lazily: it
takes seconds to import and is an optional extra, ``rerank[embeddings]``)."""
from .service import PACKAGED_MODEL_ID, EmbeddingService, packaged_model_path

__all__ = ["EmbeddingService", "PACKAGED_MODEL_ID", "packaged_model_path"]
