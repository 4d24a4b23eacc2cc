"""The Ray engine of batch reranking: one Ray task (tasks API) per chunk of queries.

The candidate table goes into Ray's object store once (``ray.put``; workers on the same node read
it zero-copy as a read-only numpy array). Each task gets its chunk's query vectors and int32 row
indices and runs :func:`rerank.batch_scoring.rank_chunk`, the same function the local engine
runs. How a chunk travels depends on the cluster: on one node the query vectors, rows and
offsets are put once as well and each task reads its range of them in place (measured on two
cores: a put per chunk cost the driver 5–10 ms each, on the cores the workers need); on
several nodes each chunk is its own object, so a node fetches only the chunks it runs. Ray is
imported here only, so ``rerank`` works without it.
"""
from __future__ import annotations

from collections import deque

from .batch_scoring import MemoryParams, RankedRows, empty_ranked, rank_chunk

INSTALL_HINT = "the ray engine needs Ray: pip install 'rerank[ray]'"


def import_ray():
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def _chunk_task(table, queries, rows, row_offsets, params, top_k, sub_batch, compiled, threads):
    return rank_chunk(queries, table, rows, row_offsets, params, top_k=top_k,
                      sub_batch=sub_batch, compiled=compiled, threads=threads)


def _range_task(table, queries, rows, row_offsets, start, stop, *settings):
    a, b = row_offsets[start], row_offsets[stop]
    return _chunk_task(table, queries[start:stop], rows[a:b], row_offsets[start:stop + 1] - a,
                       *settings)


_REMOTE = {}


def _remote(ray, task, threads: int):
    key = (task.__name__, threads)
    if key not in _REMOTE:
        _REMOTE[key] = ray.remote(num_cpus=threads, max_retries=2)(task)
    return _REMOTE[key]


def rank_on_ray(queries, table, rows, row_offsets, params: MemoryParams, *, chunks, top_k,
                sub_batch: int, compiled: bool, threads: int = 1, ship: str = "auto",
                max_in_flight: int | None = None) -> RankedRows:
    """Rank validated arrays on Ray, one task per ``(start, stop)`` query range of ``chunks``
    (each with ``threads`` CPUs), results in query order. Uses the running Ray (``ray.init``
    done by the caller), else starts one or connects to ``RAY_ADDRESS``. ``ship``: ``"shared"``
    (queries put once, tasks read their range), ``"chunks"`` (one object per chunk) or
    ``"auto"`` (shared on a one-node cluster). At most ``max_in_flight`` tasks (default: twice
    the cluster's task slots) are queued at once, so chunks never fill the object store."""
    if ship not in ("auto", "shared", "chunks"):
        raise ValueError(f"ship must be auto, shared or chunks; got {ship!r}")
    ray = import_ray()
    if not ray.is_initialized():
        ray.init()
    if ship == "auto":
        ship = "shared" if sum(n["Alive"] for n in ray.nodes()) <= 1 else "chunks"
    if max_in_flight is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        max_in_flight = max(2, 2 * cpus // threads)
    settings = (params, top_k, sub_batch, compiled, threads)
    table_ref = ray.put(table)
    if ship == "shared":
        shared = [ray.put(x) for x in (queries, rows, row_offsets)]
        remote = _remote(ray, _range_task, threads)

        def submit(start, stop):
            return remote.remote(table_ref, *shared, start, stop, *settings)
    else:
        remote = _remote(ray, _chunk_task, threads)

        def submit(start, stop):
            a, b = row_offsets[start], row_offsets[stop]
            return remote.remote(table_ref, queries[start:stop], rows[a:b],
                                 row_offsets[start:stop + 1] - a, *settings)
    out = empty_ranked(row_offsets, top_k)
    pending = deque()

    def collect():                         # the oldest task's results into their slice of `out`
        start, stop, ref = pending.popleft()
        part = ray.get(ref)
        o0, o1 = out.offsets[start], out.offsets[stop]
        out.rows[o0:o1] = part.rows
        out.scores[o0:o1] = part.scores

    for start, stop in chunks:
        pending.append((start, stop, submit(start, stop)))
        if len(pending) >= max_in_flight:
            collect()
    while pending:
        collect()
    return out
