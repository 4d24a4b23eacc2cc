"""Batch reranking: many queries, each with its own candidate ids, scored locally or on Ray.

:func:`rerank_batch` reads JSON lines ``{"query_id", "query" (text or vector), "candidates":
[ids]}`` and writes ``{"query_id", "results": [{"corpus_id", "score"}]}`` in input order, best
first. The score is what the memory gives pooled vectors: memory-attention (``Reranker()``'s
default scorer; its ``heads``, ``tau``, ``alpha``) over each query's candidates. The candidate
vectors are read from the store once (one (N, d) float32 table of the ids the input names) and
never copied per query; :func:`rank_rows` does the scoring over arrays, in chunks of
``chunk_size`` queries, each in sub-batches of about 16k candidate rows through the compiled
kernel. The ``local`` engine runs the chunks on a thread pool (the kernel releases the GIL); the
``ray`` engine runs one Ray task per chunk (:mod:`rerank.batch_ray`). A query's scores depend on
that query alone, so both engines write the same results, bit for bit.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import backend
from .batch_io import Requests, read_requests, write_results
from .batch_scoring import (MemoryParams, RankedRows, check_rows, default_sub_batch,
                            empty_ranked, rank_chunk)
from .scoring import MEMORY_TAU
from .validation import positive_int

__all__ = ["rerank_batch", "rank_rows", "RankedRows", "ENGINES"]

ENGINES = ("local", "ray")
#: Text queries embedded per call of the embedder.
EMBED_BATCH = 256
#: Candidate ids read from the store per call.
LOOKUP_BATCH = 20000


def _check_engine(engine) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return engine


def rank_rows(queries, rows, table, *, row_offsets=None, top_k: int | None = None,
              engine: str = "local", heads: int = 1, tau: float = MEMORY_TAU,
              alpha: float = 0.0, chunk_size: int = 4096, sub_batch: int | None = None,
              threads: int | None = None) -> RankedRows:
    """Memory-attention rank of each query (m, d) over its candidate rows of ``table`` (N, d):
    ``rows`` (m, c) integers, a list of m 1-D arrays, or flat (R,) with ``row_offsets`` (m+1,).
    Returns :class:`~rerank.batch_scoring.RankedRows` (rows and scores best first, the first
    ``top_k`` of each query). ``threads``: the local engine's pool size (default: the kernels'
    thread count), or the CPUs of each Ray task (default 1); ``sub_batch``: queries per kernel
    call (default: ~16k candidate rows)."""
    engine = _check_engine(engine)
    queries, rows, row_offsets, table = check_rows(queries, rows, table, row_offsets)
    params = MemoryParams.checked(table.shape[1], heads, tau, alpha)
    if top_k is not None:
        top_k = positive_int("top_k", top_k)
    chunk_size = positive_int("chunk_size", chunk_size)
    sub_batch = default_sub_batch(row_offsets) if sub_batch is None \
        else positive_int("sub_batch", sub_batch)
    m = queries.shape[0]
    chunks = [(s, min(s + chunk_size, m)) for s in range(0, m, chunk_size)]
    compiled = backend.active() == "compiled"
    if engine == "ray":
        from .batch_ray import rank_on_ray

        threads = 1 if threads is None else positive_int("threads", threads)
        return rank_on_ray(queries, table, rows, row_offsets, params, chunks=chunks,
                           top_k=top_k, sub_batch=sub_batch, compiled=compiled, threads=threads)
    workers = backend.get_num_threads() if threads is None else positive_int("threads", threads)
    pool_size = min(workers, len(chunks))
    kernel_threads = max(1, workers // len(chunks))   # fewer chunks than threads: split queries

    out = empty_ranked(row_offsets, top_k)

    def run(chunk):                        # each chunk writes its own slice of `out`
        start, stop = chunk
        a, b = row_offsets[start], row_offsets[stop]
        o0, o1 = out.offsets[start], out.offsets[stop]
        rank_chunk(queries[start:stop], table, rows[a:b], row_offsets[start:stop + 1] - a,
                   params, top_k=top_k, sub_batch=sub_batch, compiled=compiled,
                   threads=kernel_threads,
                   out=RankedRows(out.rows[o0:o1], out.scores[o0:o1],
                                  out.offsets[start:stop + 1] - o0))

    if pool_size <= 1:
        for chunk in chunks:
            run(chunk)
    else:
        with ThreadPoolExecutor(pool_size, thread_name_prefix="rerank-batch") as pool:
            list(pool.map(run, chunks))
    return out


def _open_store(db):
    """(store, owned): an open DocumentStore (or a service's) as given, or the one at ``db``."""
    if db is not None and not isinstance(db, (str, os.PathLike)):
        store = getattr(db, "document_store", db)
        if not (callable(getattr(store, "vectors", None)) and hasattr(store, "dim")):
            raise TypeError(f"db must be a path, a postgresql:// URL, a DocumentStore or a "
                            f"memory service; got {type(db).__name__}")
        return store, False
    from memory_adapter.location import describe, open_store, redact_url, resolve_db

    target = resolve_db(db)
    info = describe(target)                    # SQLite file or PostgreSQL, read-only
    if info is None:
        shown = redact_url(target)
        raise ValueError(f"no database at {shown}: index documents first "
                         f"(rerank index PATH --db {shown})")
    return open_store(target, model_id=info["model_id"], dim=info["dim"]), True


def _lookup(store, req: Requests) -> np.ndarray:
    """The (N, d) float32 table of ``req.ids`` read from the store; an unknown id raises
    ValueError naming the first line that asks for it."""
    parts = []
    try:
        for s in range(0, len(req.ids), LOOKUP_BATCH):
            parts.append(np.asarray(store.vectors(req.ids[s:s + LOOKUP_BATCH]), dtype=np.float32))
    except KeyError:
        stored = set(store.ids())
        missing = np.array([i not in stored for i in req.ids])
        hit = np.flatnonzero(missing[req.rows])[0]
        query = int(np.searchsorted(req.offsets, hit, side="right") - 1)
        raise ValueError(f"{req.where(query)}: candidate id {req.ids[req.rows[hit]]!r} of query "
                         f"{req.query_ids[query]!r} is not in the store "
                         f"({int(missing.sum())} unknown ids in all)") from None
    return np.ascontiguousarray(np.concatenate(parts))


def _embed_texts(req: Requests, store, embedder) -> None:
    """Embed the text queries in place (batches of :data:`EMBED_BATCH`)."""
    if not req.texts:
        return
    if embedder is None:
        try:
            from embeddings_adapter import EmbeddingService
        except ImportError as exc:
            line = req.where(next(iter(req.texts)))
            raise ImportError(f"{line}: text queries need an embedder (pip install "
                              f"'rerank[embeddings]'), or give query vectors: {exc}") from None
        embedder = EmbeddingService()
    if embedder.model_id != store.model_id or int(embedder.dim) != int(store.dim):
        raise ValueError(f"the store holds vectors of model {store.model_id!r} (dim {store.dim}) "
                         f"but the embedder is {embedder.model_id!r} (dim {embedder.dim}): "
                         "vectors of different models are not comparable")
    order = list(req.texts)
    for s in range(0, len(order), EMBED_BATCH):
        part = order[s:s + EMBED_BATCH]
        req.vectors[part] = np.asarray(embedder.embed([req.texts[i] for i in part]),
                                       dtype=np.float32)


def _check_output(output) -> str:
    output = os.fspath(output)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write the batch output {output}: no folder {folder}")
    if os.path.isdir(output):
        raise ValueError(f"the batch output {output} is a folder; name a file")
    return output


def rerank_batch(input, output, *, db=None, engine: str = "local", top_k: int | None = None,
                 mechanism: str | None = None, chunk_size: int = 4096,
                 sub_batch: int | None = None, threads: int | None = None, embedder=None,
                 heads: int = 1, tau: float = MEMORY_TAU, alpha: float = 0.0) -> dict:
    """Rerank every request of the JSON-lines file ``input`` into ``output`` (see the module
    docstring) with the candidate vectors of the store ``db`` (a path, a postgresql:// URL, an
    open DocumentStore or memory service; default ``RERANK_DB``). ``mechanism``: None or
    ``"memory-attention"`` (the scorer of pooled vectors); ``embedder`` embeds text queries
    (default: the packaged model, loaded only when a query is text). Returns a summary:
    ``queries``, ``candidates``, ``seconds``, ``engine``, ``backend``, ``mechanism``, ``top_k``,
    ``output`` and ``timings_s`` per stage."""
    start = time.perf_counter()
    engine = _check_engine(engine)
    if mechanism not in (None, "memory-attention"):
        raise ValueError(f"batch reranking scores pooled vectors with memory-attention; got "
                         f"mechanism={mechanism!r}")
    if engine == "ray":
        from .batch_ray import import_ray

        import_ray()                           # fail before reading anything
    if top_k is not None:
        top_k = positive_int("top_k", top_k)
    output = _check_output(output)
    timings = {}
    store, owned = _open_store(db)
    try:
        t = time.perf_counter()
        req = read_requests(input, int(store.dim))
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        _embed_texts(req, store, embedder)
        timings["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        table = _lookup(store, req)
        timings["lookup"] = time.perf_counter() - t
    finally:
        if owned:
            store.close()
    t = time.perf_counter()
    ranked = rank_rows(req.vectors, req.rows, table, row_offsets=req.offsets, top_k=top_k,
                       engine=engine, heads=heads, tau=tau, alpha=alpha, chunk_size=chunk_size,
                       sub_batch=sub_batch, threads=threads)
    timings["rank"] = time.perf_counter() - t
    t = time.perf_counter()
    write_results(output, req.query_ids, req.ids, ranked)
    timings["write"] = time.perf_counter() - t
    return {"queries": len(req.query_ids), "candidates": int(req.offsets[-1]),
            "seconds": round(time.perf_counter() - start, 3), "engine": engine,
            "backend": backend.active(), "mechanism": "memory-attention", "top_k": top_k,
            "output": output, "timings_s": {k: round(v, 3) for k, v in timings.items()}}
