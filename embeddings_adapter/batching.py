"""``BatchingEmbedder``: an embedder whose concurrent calls share forward passes.

Leader/follower: a caller queues its texts; if no forward pass is running it becomes the leader,
takes the queued requests (up to ``max_batch`` texts, oldest first) and runs ONE forward pass for
all of them, then hands the lead to a waiting caller. Requests that arrive while a pass runs
form the next batch, so under load the batch grows by itself and a lone caller never waits.
No background thread; callers block on a condition variable (no busy waiting); an exception in a
pass reaches every caller whose texts were in it.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .service import EmbeddingService

__all__ = ["BatchingEmbedder"]


class _Request:
    __slots__ = ("texts", "result", "error", "done")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.result = None
        self.error: BaseException | None = None
        self.done = False


class BatchingEmbedder:
    """An embedder (``model_id``, ``dim``, ``embed``, ``embed_tokens``, ``token_ids``,
    ``is_word``, ``passages`` … of ``inner``) whose concurrent calls from many threads are
    coalesced into one forward pass of ``inner`` per batch of ≤ ``max_batch`` texts.

    With an ``inner`` that has ``encode(texts)`` (sentence vector, token vectors, word-piece
    ids per text: :meth:`EmbeddingService.encode`) one pass yields all three, and later
    ``embed_tokens``/``token_ids`` calls for the same texts are answered from ``inner``'s cache
    (``cached(texts)``) without queueing. Otherwise only ``embed`` is batched.

    ``max_wait_ms``: how long a leader waits for a batch to fill, and only while concurrent
    calls are being seen (the previous batch held several requests); 0 (default) never waits.
    """

    def __init__(self, inner, *, max_batch: int = 32, max_wait_ms: float = 0.0):
        for name in ("model_id", "dim"):
            if not hasattr(inner, name):
                raise TypeError(f"inner must be an embedder with model_id, dim and embed; "
                                f"{type(inner).__name__} lacks {name}")
        if not callable(getattr(inner, "embed", None)):
            raise TypeError(f"inner must have embed(texts); {type(inner).__name__} has not")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer; got {max_batch!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) \
                or not 0 <= max_wait_ms < 10_000:
            raise ValueError(f"max_wait_ms must be a number in [0, 10000); got {max_wait_ms!r}")
        self.inner = inner
        self.max_batch = max_batch
        self.max_wait_ms = float(max_wait_ms)
        self._triples = callable(getattr(inner, "encode", None))
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Request] = deque()
        self._leading = False
        self._closed = False
        self._last_batch = 0
        self._stats = {"forward_passes": 0, "requests": 0, "texts": 0, "largest_batch": 0}

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def __getattr__(self, name):
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)      # is_word, passages, max_tokens, …

    def __repr__(self) -> str:
        return (f"BatchingEmbedder({self.inner!r}, max_batch={self.max_batch}, "
                f"max_wait_ms={self.max_wait_ms:g})")

    # ------------------------------------------------------------------ the embedder protocol
    _texts = staticmethod(EmbeddingService._texts)   # the same checks and messages

    def encode(self, texts) -> list:
        """Per text (sentence vector, token vectors, word-piece ids), batched with concurrent
        calls (needs an ``inner`` with ``encode``)."""
        if not self._triples:
            raise AttributeError(f"{type(self.inner).__name__} has no encode(texts)")
        return self._results(self._texts(texts))

    def embed(self, texts) -> np.ndarray:
        """L2-normalised sentence embeddings (n, d), batched with concurrent calls."""
        texts = self._texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        found = self._results(texts)
        return np.stack([f[0] for f in found] if self._triples else found)

    def embed_tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors of every text as (T, d) and offsets (n+1,)."""
        texts = self._texts(texts)
        if not self._triples or not texts:
            return self.inner.embed_tokens(texts)
        parts = [t for _, t, _ in self._results(texts)]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        return np.concatenate(parts), offsets

    def token_ids(self, texts) -> list[np.ndarray]:
        """The word-piece ids behind ``embed_tokens``, per text."""
        texts = self._texts(texts)
        if not self._triples or not texts:
            return self.inner.token_ids(texts)
        return [ids for _, _, ids in self._results(texts)]

    # ------------------------------------------------------------------ batching
    def _results(self, texts: list[str]) -> list:
        if self._triples and callable(getattr(self.inner, "cached", None)):
            found = self.inner.cached(texts)
            if all(f is not None for f in found):
                return found
        request = _Request(texts)
        with self._cond:
            if self._closed:
                raise ValueError("the BatchingEmbedder is closed")
            self._queue.append(request)
            while not request.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                self._fill()
                batch = self._take()
                self._cond.release()
                try:
                    self._forward(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.result

    def _pending(self) -> int:
        return sum(len(r.texts) for r in self._queue)

    def _fill(self) -> None:
        """Wait (lock held, released while waiting) up to ``max_wait_ms`` for a full batch,
        only when the previous batch showed concurrent callers."""
        if self.max_wait_ms <= 0 or self._last_batch < 2:
            return
        deadline = time.monotonic() + self.max_wait_ms / 1e3
        while self._pending() < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take(self) -> list[_Request]:
        """The oldest queued requests, up to ``max_batch`` texts (at least one request)."""
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            request = self._queue.popleft()
            batch.append(request)
            size += len(request.texts)
        self._last_batch = len(batch)
        stats = self._stats
        stats["forward_passes"] += 1
        stats["requests"] += len(batch)
        stats["texts"] += size
        stats["largest_batch"] = max(stats["largest_batch"], len(batch))
        return batch

    def _forward(self, batch: list[_Request]) -> None:
        """One forward pass of ``inner`` for every text of ``batch``; results (or the error)
        set on each request."""
        try:
            unique = list(dict.fromkeys(t for r in batch for t in r.texts))
            if self._triples:
                outputs = self.inner.encode(unique)
            else:
                outputs = list(self.inner.embed(unique))
            if len(outputs) != len(unique):
                raise ValueError(f"the inner embedder returned {len(outputs)} results for "
                                 f"{len(unique)} texts")
            by_text = dict(zip(unique, outputs))
            for r in batch:
                r.result = [by_text[t] for t in r.texts]
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets it
            for r in batch:
                r.error = exc
        finally:
            for r in batch:
                r.done = True

    # ------------------------------------------------------------------ lifetime
    def stats(self) -> dict:
        """Forward passes run, requests and texts they served, the largest batch (requests)."""
        with self._cond:
            return {**self._stats, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms}

    def close(self) -> None:
        """Refuse new calls (calls in progress finish). Idempotent; there is no thread to stop."""
        with self._cond:
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
