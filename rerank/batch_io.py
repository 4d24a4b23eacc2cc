"""The JSON-lines files of batch reranking.

Input, one request per line: ``{"query_id": str, "query": text or [d floats], "candidates":
[ids]}`` (blank lines are skipped). Output, one line per request in input order:
``{"query_id": str, "results": [{"corpus_id": str, "score": float}, ...]}`` best first.
Every input error is a ``ValueError`` naming the file and line.
"""
from __future__ import annotations

import json
import os
import tempfile
from array import array
from dataclasses import dataclass, field

import numpy as np

from .batch_scoring import RankedRows


@dataclass
class Requests:
    """The parsed input: ``query_ids`` and their input ``lines``; ``texts`` {query index: text}
    for text queries and ``vectors`` (m, d) float32 (rows of text queries are zero until
    embedded); candidate ``ids`` (distinct, in order of first appearance) and, per query, the
    positions of its candidates in ``ids``: ``rows`` (R,) int32 and ``offsets`` (m+1,) int64."""
    path: str
    query_ids: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def where(self, query: int) -> str:
        """``"<file>, line <n>"`` of a query."""
        return f"{self.path}, line {self.lines[query]}"


_F32_MAX = float(np.finfo(np.float32).max)


def _number(x) -> bool:
    return type(x) is float or (type(x) is int)


def read_requests(path: str | os.PathLike, dim: int) -> Requests:
    """Parse and check the input file (vector queries must have ``dim`` finite numbers)."""
    path = os.fspath(path)
    req = Requests(path)
    positions: dict[str, int] = {}
    rows, ends, vectors = array("i"), array("q", [0]), []
    seen: dict[str, int] = {}
    zero = np.zeros(dim, dtype=np.float32)
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the batch input {path}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") \
                    from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object with query_id, query and "
                                 f"candidates; got {type(item).__name__}")
            for key in ("query_id", "query", "candidates"):
                if key not in item:
                    raise ValueError(f"{where}: missing field {key!r}")
            qid, query, cands = item["query_id"], item["query"], item["candidates"]
            if not isinstance(qid, str) or not qid:
                raise ValueError(f"{where}: query_id must be a non-empty string; got {qid!r}")
            if qid in seen:
                raise ValueError(f"{where}: query_id {qid!r} repeats line {seen[qid]}")
            seen[qid] = number
            if not isinstance(cands, list) or not cands:
                raise ValueError(f"{where}: candidates of query {qid!r} must be a non-empty list "
                                 f"of ids; got {cands!r}"[:300])
            if not all(type(c) is str for c in cands):
                bad = next(c for c in cands if type(c) is not str)
                raise ValueError(f"{where}: candidate ids of query {qid!r} must be strings; got "
                                 f"{bad!r}")
            index = len(req.query_ids)
            if isinstance(query, str):
                if not query.strip():
                    raise ValueError(f"{where}: query {qid!r} is an empty text")
                req.texts[index] = query
                vectors.append(zero)
            else:
                vectors.append(_vector(query, dim, f"{where}: query {qid!r}"))
            req.query_ids.append(qid)
            req.lines.append(number)
            rows.extend([positions.setdefault(c, len(positions)) for c in cands])
            ends.append(len(rows))
    if not req.query_ids:
        raise ValueError(f"{path}: no requests (expected JSON lines with query_id, query and "
                         "candidates)")
    req.ids = list(positions)
    req.vectors = np.stack(vectors)
    req.rows = np.frombuffer(rows, dtype=np.int32).copy()
    req.offsets = np.frombuffer(ends, dtype=np.int64).copy()
    return req


def _vector(value, dim: int, what: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a text or a list of {dim} numbers; got "
                         f"{type(value).__name__}")
    if len(value) != dim:
        raise ValueError(f"{what} has {len(value)} numbers; the store's vectors have dimension "
                         f"{dim}")
    if not all(map(_number, value)):
        bad = next(x for x in value if not _number(x))
        raise ValueError(f"{what} must hold numbers only; got {bad!r}")
    try:
        vec = np.asarray(value, dtype=np.float64)
    except OverflowError:                                      # an integer beyond float64
        vec = np.full(1, np.inf)
    if not (np.isfinite(vec).all() and np.abs(vec).max() <= _F32_MAX):
        raise ValueError(f"{what} holds NaN, Inf or a value beyond float32's range")
    return vec.astype(np.float32)


def write_results(path: str | os.PathLike, query_ids: list[str], ids: list[str],
                  ranked: RankedRows) -> None:
    """Write one result line per query (``ranked`` rows index ``ids``), atomically: the file
    appears complete or not at all."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    encoded = [json.dumps(i, ensure_ascii=False) for i in ids]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rerank-batch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for q, qid in enumerate(query_ids):
                rows, scores = ranked.query(q)
                results = ", ".join(f'{{"corpus_id": {encoded[r]}, "score": {s!r}}}'
                                    for r, s in zip(rows.tolist(), scores.tolist()))
                out.write(f'{{"query_id": {json.dumps(qid, ensure_ascii=False)}, '
                          f'"results": [{results}]}}\n')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
