"""The memory service, the retrieve pipeline and the CLI on BOTH backends — SQLite + hnswlib and
PostgreSQL + pgvector (a real server started by ``tests/pg_server.py``) — with the same
assertions, plus what only PostgreSQL has: filtered HNSW search that still returns exactly n,
read replicas, schema versions, bulk loads, connection errors.

Every ``db`` fixture instance is a fresh SQLite file or a fresh PostgreSQL database.
"""
from __future__ import annotations

import contextlib
import json
import socket
import time
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from memory_adapter import AttentionEnhancedMemory, Record, UnifiedMemoryService, open_store
from memory_adapter.location import describe, redact_url
from rerank import quantization, reference
from rerank.cli import main

from child_script import ChildScript

D = 16
MODEL = "backend-test-model"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """A fresh database: a SQLite file, or a new PostgreSQL database with pgvector."""
    if request.param == "sqlite":
        yield str(tmp_path / "memory.db")
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def vecs(n: int, seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


class WordEmbedder:
    """A TEST DOUBLE, not a model: each word is a fixed random unit vector seeded by its crc32;
    a text is the normalised sum of its words; its tokens are the words, whose word-piece ids
    are crc32 % 50,000 (so the corpus IDF is countable by hand)."""

    model_id = "test-word-embedder"
    dim = D

    @staticmethod
    def piece(word: str) -> int:
        return zlib.crc32(word.lower().encode()) % 50_000

    def _word(self, word: str) -> np.ndarray:
        return unit(np.random.default_rng(self.piece(word)).standard_normal(self.dim))

    def embed(self, texts):
        return unit(np.stack([sum(self._word(w) for w in t.split()) for t in texts]))

    def embed_tokens(self, texts):
        rows = [[self._word(w) for w in t.split()] for t in texts]
        return (np.stack([v for r in rows for v in r]),
                np.cumsum([0] + [len(r) for r in rows]))

    def token_ids(self, texts):
        return [np.array([self.piece(w) for w in t.split()], np.int32) for t in texts]


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def bulk_load(mem):
    """PostgreSQL: build the HNSW index once after the load (many times faster than inserting
    into it, as the benchmark shows); SQLite: nothing to do."""
    store = mem.document_store
    return store.bulk_load() if store.backend == "postgresql" else contextlib.nullcontext()


def exact_ids(x: np.ndarray, q: np.ndarray, k: int, ids: list[str], space: str = "cosine"):
    if space == "cosine":
        s = unit(x).astype(np.float64) @ unit(q).astype(np.float64)
    elif space == "ip":
        s = x.astype(np.float64) @ q.astype(np.float64)
    else:
        s = -((x.astype(np.float64) - q) ** 2).sum(axis=1)
    return [ids[i] for i in np.argsort(-s, kind="stable")[:k]]


# ------------------------------------------------------------------------------- the store
def test_store_roundtrip_and_bookkeeping(db):
    rng = np.random.default_rng(1)
    tokens = [unit(rng.standard_normal((int(n), D))) for n in (3, 1, 5)]
    recs = [Record(f"doc{i}", vecs(1, i)[0], text=f"text {i} ünïcode",
                   metadata={"n": i, "tags": ["a", "b"], "nested": {"k": [1, None]}},
                   tokens=tokens[i], token_ids=np.arange(len(tokens[i]), dtype=np.int32) + i,
                   chunks=unit(rng.standard_normal((2, D))) if i == 0 else None)
            for i in range(3)]
    recs.append(Record("bare", vecs(1, 9)[0]))
    with open_store(db, model_id=MODEL, dim=D) as store:
        assert store.put([]) == 0
        assert store.put(recs) == 1
        assert store.count() == 4 and len(store) == 4 and "doc1" in store and "nope" not in store
        assert store.ids() == ["doc0", "doc1", "doc2", "bare"]          # insertion order
        got = store.get(["doc2", "nope", "doc0"])
        assert got[1] is None
        for rec, want in ((got[0], recs[2]), (got[2], recs[0])):
            assert rec.text == want.text and rec.metadata == want.metadata
            np.testing.assert_array_equal(rec.vector, want.vector)        # vectors exact
            np.testing.assert_array_equal(rec.token_ids, want.token_ids)
            stored = quantization.decode(quantization.encode(want.tokens, "int8"),
                                         len(want.tokens), D, "int8")
            np.testing.assert_array_equal(rec.tokens, stored)             # int8 + scales
        np.testing.assert_array_equal(got[2].chunks, recs[0].chunks)
        assert got[0].chunks is None
        np.testing.assert_array_equal(store.vectors(["bare", "doc1"]),
                                      np.stack([recs[3].vector, recs[1].vector]))
        codes = store.token_codes(["doc1", "bare"])
        assert codes[1] is None and codes[0].codes.dtype == np.int8
        np.testing.assert_array_equal(codes[0].dequantize(), store.token_vectors(["doc1"])[0])
        assert store.documents(["bare", "x"]) == [(None, {}), None]
        with pytest.raises(KeyError, match="missing"):
            store.vectors(["doc0", "missing"])
        assert store.put([Record("doc1", vecs(1, 5)[0], text="new")]) == 2   # upsert
        assert store.count() == 4 and store.get(["doc1"])[0].tokens is None
        assert store.changes_since(1) == (["doc1"], 2)
        assert store.delete(["doc0", "nope"]) == 1 and store.count() == 3
        assert store.write_seq == 3 and store.delete(["nope"]) == 0 and store.write_seq == 3
        store.set_meta("note", "x")
        assert store.get_meta("note") == "x" and store.get_meta("unset") is None
        with pytest.raises(ValueError, match="key must be"):
            store.set_meta("write_seq", "9")
    info = describe(db)
    assert info["documents"] == 3 and info["model_id"] == MODEL and info["dim"] == D
    assert info["documents_with_tokens"] == 1 and info["token_dtype"] == "int8"


def test_batches_are_all_or_nothing(db, monkeypatch):
    with open_store(db, model_id=MODEL, dim=D) as store:
        store.put([Record("keep", vecs(1, 0)[0], token_ids=np.array([7], np.int32),
                          tokens=unit(vecs(1, 1)))])
        bad = [Record("a", vecs(1, 2)[0]), Record("b", np.zeros(D + 1, np.float32))]
        with pytest.raises(ValueError, match=r"records\[1\].*shape"):
            store.put(bad)
        if store.backend == "postgresql":    # its text and jsonb cannot hold NUL; SQLite can
            with pytest.raises(ValueError, match="NUL"):
                store.put([Record("a", vecs(1, 2)[0], text="nul \x00 inside")])
            with pytest.raises(ValueError, match="NUL"):
                store.put([Record("a", vecs(1, 2)[0], metadata={"k": ["x\x00"]})])
        real = type(store)._write_rows

        def write_then_fail(self, conn, rows):
            real(self, conn, rows)                 # every row written inside the transaction
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(type(store), "_write_rows", write_then_fail)
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.put([Record(f"n{i}", vecs(1, i)[0], tokens=unit(vecs(2, i)),
                              token_ids=np.array([7, 8], np.int32)) for i in range(5)]
                      + [Record("keep", vecs(1, 3)[0])])
        monkeypatch.undo()
        assert store.ids() == ["keep"] and store.count() == 1 and store.write_seq == 1
        np.testing.assert_array_equal(store.vectors(["keep"])[0], vecs(1, 0)[0])
        df, n = store.document_frequencies(np.array([7, 8]))
        assert df.tolist() == [1, 0] and n == 1


def test_token_statistics_follow_every_write(db):
    emb = WordEmbedder()
    corpus = texts(40, seed=3)
    with UnifiedMemoryService.open(db, embedder=emb) as mem:
        mem.store([{"id": f"t{i}", "text": t} for i, t in enumerate(corpus)])
        mem.update("t0", text="alpha alpha omega")
        mem.delete(["t1", "t2"])
        live = {f"t{i}": t for i, t in enumerate(corpus)}
        live["t0"] = "alpha alpha omega"
        del live["t1"], live["t2"]
        pieces = np.array([emb.piece(w) for w in WORDS] + [12345], np.int64)
        df, n = mem.document_store.document_frequencies(pieces)
        expected = [sum(w in t.split() for t in live.values()) for w in WORDS] + [0]
        assert df.tolist() == expected and n == len(live)


FILTER_DOCS = {   # metadata["g"] of each document: what {"g": 1} must (not) match
    "int": 1, "float": 1.0, "list": [0, 1], "str": "1", "bool": True, "nested": [[1]],
    "object": {"g": 1}, "null": None, "listnull": [None, 2], "missing": "<absent>",
}


@pytest.mark.parametrize("filter, expected", [
    ({"g": 1}, {"int", "float", "list"}),
    ({"g": 1.0}, {"int", "float", "list"}),
    ({"g": "1"}, {"str"}),
    ({"g": True}, {"bool"}),
    ({"g": None}, {"null", "listnull"}),
    ({"g": {"$in": ["1", 2, True]}}, {"str", "listnull", "bool"}),
    ({"g": {"$in": []}}, set()),
    ({"g": 1, "h": "x"}, {"int"}),
    ({}, None),
])
def test_filters_match_the_same_documents(db, filter, expected):
    with open_store(db, model_id=MODEL, dim=D) as store:
        store.put([Record(name, vecs(1, i)[0],
                          metadata={} if g == "<absent>" else
                          {"g": g, **({"h": "x"} if name == "int" else {})})
                   for i, (name, g) in enumerate(FILTER_DOCS.items())])
        assert store.resolve_filter(filter) == expected


@pytest.mark.parametrize("filter, message", [
    ("g", "must be a dict"),
    ({"$or": [1]}, "not supported at the top level"),
    ({"g": {"$gt": 1}}, "unknown operator"),
    ({"g": [1, 2]}, "is a list"),
    ({"g": {"$in": 1}}, "must be a list"),
    ({"g": float("nan")}, "finite"),
    ({"g": {"k": 1}}, "unknown operator"),
    ({'a"b': 1}, "double quote"),
])
def test_bad_filters_are_refused_alike(db, filter, message):
    with open_store(db, model_id=MODEL, dim=D) as store:
        with pytest.raises(ValueError, match=message):
            store.resolve_filter(filter)


def test_a_store_refuses_another_model_or_dimension(db):
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL) as mem:
        mem.store([{"id": "a", "vector": vecs(1, 0)[0]}])
    for model_id, dim in (("other-model", D), (MODEL, D + 1)):
        with pytest.raises(ValueError, match="not comparable"):
            UnifiedMemoryService.open(db, dim=dim, model_id=model_id)


# ------------------------------------------------------------------------------- search
def test_filtered_search_returns_exactly_k(db):
    """12 of 3,000 documents match: pgvector's HNSW scan alone stops after ef_search
    candidates and would return fewer (checked below); the search still returns exactly k,
    equal to the exact answer."""
    x = vecs(3000, 4)
    ids = [f"d{i}" for i in range(3000)]
    rare = set(range(5, 3000, 250))
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL) as mem:
        with bulk_load(mem):
            for s in range(0, 3000, 1000):
                mem.store([{"id": ids[i], "vector": x[i],
                            "metadata": {"kind": "rare" if i in rare else "common"}}
                           for i in range(s, s + 1000)])
        q = vecs(1, 99)[0]
        hits = mem.search(q, 10, filter={"kind": "rare"}, documents=False)
        sub = sorted(rare)
        assert [h["corpus_id"] for h in hits] == exact_ids(x[sub], q, 10, [ids[i] for i in sub])
        with pytest.raises(ValueError, match="only 12 documents match the filter"):
            mem.search(q, 13, filter={"kind": "rare"})
        assert mem.available({"kind": "rare"}) == 12
        assert mem.available({"kind": "rare"}, at_most=5) == 5
        if mem.status()["backend"] == "postgresql":
            with mem.document_store.connection() as conn, conn.transaction():
                for off in ("hnsw.iterative_scan", "enable_seqscan", "enable_bitmapscan"):
                    conn.execute(f"SET LOCAL {off} = off")   # the HNSW scan, post-filtered
                n = len(conn.execute("SELECT id FROM rerank_documents WHERE metadata @> "
                                     "'{\"kind\": \"rare\"}' ORDER BY embedding <=> %b LIMIT 10",
                                     (q,)).fetchall())
            assert n < 10, "the test data no longer exercises the post-filter problem"


def fetch_spy(monkeypatch, give_up: bool = False):
    """Records the ``exact`` flag of every query PgVectorSource sends; ``give_up``: HNSW queries
    return half their rows, as a graph walk that stopped early would."""
    from memory_adapter.pgvector_source import PgVectorSource

    calls, real = [], PgVectorSource._fetch

    def spy(self, *args, exact, **kw):
        calls.append(exact)
        rows = real(self, *args, exact=exact, **kw)
        return rows[:len(rows) // 2] if give_up and not exact else rows

    monkeypatch.setattr(PgVectorSource, "_fetch", spy)
    return calls


@pytest.mark.parametrize("options, filter, paths", [
    ({}, {"rare": True}, [True]),                   # 1% match: exact at once
    ({"exact_search_limit": 0}, {"odd": True}, [False]),   # HNSW; 40 walked give ~20 odd rows,
    # so the 30 come from the iterative scan going on
    ({"exact_search_limit": 0, "give_up": True}, {"odd": True}, [False, True]),   # a walk that
    # returns too few rows (simulated) is redone exactly
])
def test_every_filtered_search_path_returns_exactly_k(pg_url, monkeypatch, options, filter,
                                                      paths):
    x = vecs(2000, 5)
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL) as mem, bulk_load(mem):
        mem.store([{"id": f"d{i}", "vector": x[i],
                    "metadata": {"rare": i % 100 == 3, "odd": i % 2 == 1}} for i in range(2000)])
    give_up = options.pop("give_up", False)
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL, **options) as mem:
        calls = fetch_spy(monkeypatch, give_up=give_up)
        q = vecs(1, 7)[0]
        hits = mem.search(q, 30 if "odd" in filter else 15, filter=filter, documents=False)
        assert calls == paths
        sub = list(range(3, 2000, 100)) if "rare" in filter else list(range(1, 2000, 2))
        assert [h["corpus_id"] for h in hits] == exact_ids(x[sub], q, len(hits),
                                                           [f"d{i}" for i in sub])


def test_ef_search_is_raised_to_the_number_of_candidates(pg_url, monkeypatch):
    """pgvector returns at most ef_search rows from a graph walk: 100 candidates come from ONE
    HNSW query only if ef_search = 100 reached the scan (no exact rescue)."""
    x = vecs(1500, 9)
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL, ef=40) as mem, bulk_load(mem):
        mem.store([{"id": f"d{i}", "vector": v} for i, v in enumerate(x)])
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL, ef=40) as mem:
        calls = fetch_spy(monkeypatch)
        hits = mem.search(x[0], 100, documents=False)
        assert calls == [False] and len(hits) == 100
        ids = [f"d{i}" for i in range(1500)]
        recall = len({h["corpus_id"] for h in hits} & set(exact_ids(x, x[0], 100, ids))) / 100
        assert recall >= 0.9
        with mem.document_store.connection() as conn:     # the setting was transaction-local
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"


@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_both_backends_return_the_same_candidates(pg_url, tmp_path, space):
    """400 documents: both HNSW indexes are exact at this size; ids, scores and vectors agree
    with each other and with brute force."""
    x = vecs(400, 6)
    ids = [f"d{i}" for i in range(400)]
    found = {}
    for name, db in (("sqlite", str(tmp_path / "m.db")), ("postgres", pg_url)):
        with UnifiedMemoryService.open(db, dim=D, model_id=MODEL, space=space) as mem:
            mem.store([{"id": i, "vector": v, "metadata": {"even": n % 2 == 0}}
                       for n, (i, v) in enumerate(zip(ids, x))])
            found[name] = [(mem.search(q, 20, documents=False),
                            mem.search(q, 7, filter={"even": True}, documents=False))
                           for q in vecs(5, 8)]
    for q, (sq, pg) in zip(vecs(5, 8), zip(found["sqlite"], found["postgres"])):
        assert [h["corpus_id"] for h in pg[0]] == exact_ids(x, q, 20, ids, space)
        for a, b in zip(sq, pg):
            assert [h["corpus_id"] for h in a] == [h["corpus_id"] for h in b]
            np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.stack([h["vector"] for h in a]),
                                       np.stack([h["vector"] for h in b]), atol=1e-6)


def test_retrieve_and_late_interaction_agree_across_backends(pg_url, tmp_path):
    """AttentionEnhancedMemory on both backends: memory-attention over vectors, late
    interaction over stored int8 token vectors with corpus IDF, filters — the same results."""
    emb = WordEmbedder()
    corpus = texts(300, seed=11)
    docs = [{"id": f"t{i}", "text": t, "metadata": {"part": i % 3}}
            for i, t in enumerate(corpus)]
    queries = ["alpha beta", "omega psi chi", "kappa lambda mu nu", "sigma"]
    results = {}
    for name, db in (("sqlite", str(tmp_path / "m.db")), ("postgres", pg_url)):
        with AttentionEnhancedMemory.open(db, embedder=emb) as mem:
            for s in range(0, 300, 100):
                mem.store(docs[s:s + 100])
            out = []
            for q in queries:
                text = mem.retrieve(q, 5)
                assert text.mechanism == "cross-attention" and len(text) == 5
                vector = mem.retrieve(emb.embed([q])[0], 5, filter={"part": 1})
                assert vector.mechanism == "memory-attention"
                assert all(r["metadata"]["part"] == 1 for r in vector)
                hits = mem.search(emb.embed([q])[0], 15, filter={"part": 1}, documents=False)
                cand = np.stack([h["vector"] for h in hits])
                order = np.argsort(-reference.memory_attention_scores(emb.embed([q])[0], cand)[0],
                                   kind="stable")[:5]
                assert vector.ids == [hits[i]["corpus_id"] for i in order]
                weights = mem.query(q).weights
                out.append((text.ids, [r["score"] for r in text], vector.ids, weights))
            results[name] = out
    for a, b in zip(results["sqlite"], results["postgres"]):
        assert a[0] == b[0] and a[2] == b[2]
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a[3], b[3])          # IDF from the same corpus statistics


def test_writes_of_one_service_are_searched_by_another_at_once(pg_url):
    """Stateless servers: two services over one PostgreSQL store need no sync between them."""
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL) as a, \
            UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL) as b:
        x = vecs(50, 12)
        a.store([{"id": f"d{i}", "vector": v, "text": str(i)} for i, v in enumerate(x)])
        assert b.search(x[7], 1)[0]["corpus_id"] == "d7" and b.count() == 50
        a.delete(["d7"])
        assert b.search(x[7], 1)[0]["corpus_id"] != "d7" and b.available() == 49
        assert b.status()["index_path"] is None and b.sync_index()["rebuilt"] is False
    with UnifiedMemoryService(open_store(pg_url, model_id=MODEL, dim=D)) as c:   # the default
        assert type(c.candidate_source).__name__ == "PgVectorSource" and c.count() == 49


# ------------------------------------------------------------------------------- crash safety
CHILD = r"""
import itertools, os, sys, time
import numpy as np
from memory_adapter import Record, SQLiteStore, UnifiedMemoryService
from memory_adapter.location import is_postgres_url

db, scenario, point = sys.argv[1], sys.argv[2], int(sys.argv[3])
D, MODEL = 16, "backend-test-model"

def vecs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)

def block(message):
    print(message, flush=True)
    time.sleep(600)
    os._exit(3)   # never reached: the parent kills us

svc = UnifiedMemoryService.open(db, dim=D, model_id=MODEL, autosave_seconds=0)
x1, x2 = vecs(200, 1), vecs(200, 2)
ids = lambda n: np.arange(n, dtype=np.int32)
svc.store([Record(f"b1-{i}", x1[i], text=f"one {i}", tokens=x1[[i, (i + 1) % 200]] / 10,
                  token_ids=ids(2) + i % 7, metadata={"batch": 1}) for i in range(200)])
print("COMMITTED", flush=True)
if scenario == "rows":            # inside the store's transaction, `point` rows written
    if is_postgres_url(db):
        from memory_adapter.postgres_store import _UPSERT, PostgresStore
        def slow_write_rows(self, conn, rows):
            for i, row in enumerate(rows):
                if i == point:
                    n = conn.execute("SELECT count(*) FROM rerank_documents WHERE id LIKE %s",
                                     ("b2-%",)).fetchone()[0]
                    block(f"IN_TRANSACTION {n}")
                conn.execute(_UPSERT, row)
        PostgresStore._write_rows = slow_write_rows
    else:
        write_rows = SQLiteStore._write_rows
        def slow_write_rows(self, conn, rows):
            def rows_then_block():
                for i, row in enumerate(rows):
                    if i == point:
                        n = conn.execute("SELECT count(*) FROM documents WHERE id LIKE 'b2-%'"
                                         ).fetchone()[0]
                        block(f"IN_TRANSACTION {n}")
                    yield row
            write_rows(self, conn, rows_then_block())
        SQLiteStore._write_rows = slow_write_rows
    svc.store([Record(f"b2-{i}", x2[i], tokens=x2[i:i + 1] / 10, token_ids=ids(1) + 100)
               for i in range(200)] + [Record("b1-0", x2[0])])
    print("FINISHED", flush=True)
else:                             # write for ever; killed at some moment
    for j in itertools.count():
        svc.store([Record(f"loop-{j}", vecs(1, 1000 + j)[0], tokens=vecs(1, j) / 10,
                          token_ids=ids(1) + 200)])
        print(f"STORED {j}", flush=True)
"""


class Child(ChildScript):
    """The CHILD script for ``scenario`` in a subprocess."""

    def __init__(self, db: str, scenario: str, point: int = 0):
        super().__init__(CHILD, db, scenario, point)


def check_store(db: str, expected: set[str]):
    """Reopened: exactly ``expected`` stored, counters and token statistics recomputed from the
    documents agree, and a search works."""
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL) as mem:
        store = mem.document_store
        assert set(store.ids()) == expected and store.count() == len(expected)
        batch1 = sorted(i for i in expected if i.startswith("b1-"))
        if batch1:
            np.testing.assert_array_equal(store.vectors(batch1[:3]),
                                          vecs(200, 1)[[int(i[3:]) for i in batch1[:3]]])
        ids = store.token_ids(sorted(expected))
        pieces = np.arange(0, 256)
        df, n = store.document_frequencies(pieces)
        assert n == sum(t is not None for t in ids)
        assert df.tolist() == [sum(p in t for t in ids if t is not None) for p in pieces]
        some = sorted(expected)[0]
        assert mem.search(store.vectors([some])[0], 1)[0]["corpus_id"] == some


def test_a_killed_writer_leaves_every_committed_batch_and_nothing_else(db):
    child = Child(db, "rows", point=150)
    try:
        assert child.line() == "COMMITTED"
        assert child.line() == "IN_TRANSACTION 150"     # the rows are written, not committed
        assert describe(db)["documents"] == 200
    finally:
        child.kill()
    check_store(db, {f"b1-{i}" for i in range(200)})


def test_a_writer_killed_at_any_moment_loses_at_most_its_open_batch(db):
    child = Child(db, "loop")
    try:
        assert child.line() == "COMMITTED"
        stored = [child.line() for _ in range(15)]
    finally:
        child.kill()
    last = int(stored[-1].split()[1])
    with open_store(db, model_id=MODEL, dim=D) as store:
        found = set(store.ids())
    loops = {i for i in found if i.startswith("loop-")}
    assert {f"loop-{j}" for j in range(last + 1)} <= loops          # every printed commit
    assert loops <= {f"loop-{j}" for j in range(last + 3)}          # + the one(s) in flight
    check_store(db, {f"b1-{i}" for i in range(200)} | loops)


# ------------------------------------------------------------------------------- command line
CLI_DOCS = [{"id": f"doc{i}", "text": t, "metadata": {"part": i % 2}}
            for i, t in enumerate(texts(30, seed=21))]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], obj={"embedder": WordEmbedder()})


def test_cli_index_search_status(db, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CLI_DOCS), encoding="utf-8")
    out = cli("index", corpus, "--db", db, "--json", "--batch-size", 8)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["stored"] == 30
    again = cli("index", corpus, "--db", db, "--json")
    assert json.loads(again.stdout)["skipped"] == 30                 # resumable
    out = cli("search", "alpha beta gamma", "--db", db, "-k", 4, "--json",
              "--filter", '{"part": 1}')
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert found["mechanism"] == "cross-attention" and len(found["results"]) == 4
    assert all(r["metadata"]["part"] == 1 for r in found["results"])
    out = cli("status", "--db", db, "--json")
    assert out.exit_code == 0, out.output
    store = json.loads(out.stdout)["store"]
    assert store["documents"] == 30 and store["model_id"] == WordEmbedder.model_id
    assert store["documents_with_tokens"] == 30
    assert store["backend"] == ("postgresql" if db.startswith("postgresql") else "sqlite")
    # the same search on the other backend gives the same answer (filled in by the 2nd run)
    _CLI_RESULTS[store["backend"]] = [(r["corpus_id"], round(r["score"], 4))
                                      for r in found["results"]]
    if len(_CLI_RESULTS) == 2:
        assert _CLI_RESULTS["sqlite"] == _CLI_RESULTS["postgresql"]


_CLI_RESULTS: dict = {}


def test_cli_never_shows_a_password(pg_server):
    url = pg_server.url.replace("rerank@", "rerank:s3cret@").replace("/postgres", "/nodb")
    for args in (("status", "--db", url), ("search", "x", "--db", url),
                 ("status", "--db", url.replace("127.0.0.1:", "127.0.0.1:notaport"))):
        out = cli(*args)
        assert out.exit_code != 0 and "s3cret" not in out.output, out.output
        assert "rerank:***@" in out.output and "Traceback" not in out.output


# ------------------------------------------------------------------------------- bad input, errors
def test_redact_url():
    assert redact_url("postgresql://u:pw@h:5/db?sslmode=require&password=x") == \
        "postgresql://u:***@h:5/db?sslmode=require&password=***"
    assert redact_url("postgres://h/db") == "postgres://h/db"
    assert redact_url("/a/b.db") == "/a/b.db"


def test_a_malformed_url_is_refused_without_its_password():
    with pytest.raises(ValueError, match="not a valid PostgreSQL URL") as err:
        open_store("postgresql://u:s3cret@127.0.0.1:notaport/db", model_id=MODEL, dim=D)
    assert "s3cret" not in str(err.value) and "u:***@" in str(err.value)


def test_a_server_that_is_down_fails_fast_naming_the_url():
    with socket.socket() as s:             # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as err:
        UnifiedMemoryService.open(f"postgresql://u:s3cret@127.0.0.1:{port}/db", dim=D,
                                  model_id=MODEL)
    assert time.monotonic() - start < 10 and "s3cret" not in str(err.value)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as s:             # accepts connections (backlog) but never speaks
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="cannot connect"):
            open_store(f"postgresql://u@127.0.0.1:{s.getsockname()[1]}/db", model_id=MODEL,
                       dim=D, connect_timeout=2)
        assert time.monotonic() - start < 15


# ------------------------------------------------------------------------------- PostgreSQL only
def test_searches_go_to_the_read_replica(pg_server):
    primary, replica = pg_server.create_database(), pg_server.create_database()
    try:
        with open_store(replica, model_id=MODEL, dim=D) as other:   # stands in for a replica
            other.put([Record("on-replica", vecs(1, 0)[0], text="r", metadata={"k": 1})])
        with UnifiedMemoryService.open(primary, dim=D, model_id=MODEL,
                                       replica_url=replica) as mem:
            mem.store([{"id": "on-primary", "vector": vecs(1, 0)[0], "metadata": {"k": 1}}])
            assert [h["corpus_id"] for h in mem.search(vecs(1, 0)[0], 1, documents=False)] \
                == ["on-replica"]
            assert mem.get("on-primary") is not None and mem.get("on-replica") is None
            assert mem.document_store.info()["replica"] == redact_url(replica)
    finally:
        pg_server.drop_database(primary)
        pg_server.drop_database(replica)


def test_schema_versions_and_read_only_opening(pg_url):
    import psycopg

    with open_store(pg_url, model_id=MODEL, dim=D) as store:
        store.put([Record("a", vecs(1, 0)[0])])
    read_only = pg_url + "?options=-c%20default_transaction_read_only%3Don"
    with UnifiedMemoryService.open(read_only, dim=D, model_id=MODEL) as mem:   # like a standby
        assert mem.search(vecs(1, 0)[0], 1)[0]["corpus_id"] == "a"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            mem.store([{"id": "b", "vector": vecs(1, 1)[0]}])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM rerank_schema_version").fetchall() == [(1,)]
        conn.execute("INSERT INTO rerank_schema_version (version) VALUES (99)")
    with pytest.raises(ValueError, match="schema version 99, newer"):
        open_store(pg_url, model_id=MODEL, dim=D)


def test_bulk_load_defers_the_index_and_rebuilds_it(pg_url):
    x = vecs(500, 13)
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL) as mem:
        store = mem.document_store
        with store.bulk_load():
            mem.store([{"id": f"d{i}", "vector": v} for i, v in enumerate(x)])
            assert not store.has_index()
            q = vecs(1, 3)[0]                    # exact scan meanwhile
            assert [h["corpus_id"] for h in mem.search(q, 10, documents=False)] == \
                exact_ids(x, q, 10, [f"d{i}" for i in range(500)])
        assert store.has_index()
        with store.connection() as conn:        # an interrupted bulk load: repaired on open
            conn.execute("DROP INDEX rerank_documents_embedding_hnsw")
    with UnifiedMemoryService.open(pg_url, dim=D, model_id=MODEL) as mem:
        assert mem.document_store.has_index() and "missing" in mem.status()["index_repaired"]


def test_processes_creating_one_store_at_once_create_it_once(pg_url):
    """Four openers race on a new database: the advisory lock lets one create the schema."""
    from concurrent.futures import ThreadPoolExecutor

    def open_and_put(i):
        with open_store(pg_url, model_id=MODEL, dim=D, pool_min_size=0) as store:
            return store.put([Record(f"r{i}", vecs(1, i)[0])])

    with ThreadPoolExecutor(4) as pool:
        seqs = sorted(pool.map(open_and_put, range(4)))
    assert seqs == [1, 2, 3, 4]
    with open_store(pg_url, model_id=MODEL, dim=D) as store:
        assert store.count() == 4 and store.info()["schema_version"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"pool_min_size": 9}, "pool_min_size"), ({"pool_max_size": 0}, "pool_max_size"),
    ({"connect_timeout": 0}, "connect_timeout"), ({"space": "hamming"}, "space"),
    ({"token_dtype": "int4"}, "token_dtype"), ({"dim": 0}, "dim"),
    ({"model_id": ""}, "model_id")])
def test_bad_store_arguments_name_the_field(pg_url, kwargs, message):
    args = {"model_id": MODEL, "dim": D, **kwargs}
    with pytest.raises(ValueError, match=message):
        open_store(pg_url, **args)


def test_a_server_lost_mid_life_fails_fast_naming_the_url(pg_server):
    """A second, private server is stopped under an open store: the next calls raise
    ConnectionError naming the URL (password redacted) within the connect timeout."""
    from pg_server import PostgresServer

    with PostgresServer() as private:
        url = private.create_database().replace("rerank@", "rerank:s3cret@")
        store = open_store(url, model_id=MODEL, dim=D, connect_timeout=1)
        store.put([Record("a", vecs(1, 0)[0])])
        private.stop()
        try:
            for call in (store.count, lambda: store.vectors(["a"])):   # broken; no new one
                start = time.monotonic()
                with pytest.raises(ConnectionError, match="127.0.0.1") as err:
                    call()
                assert time.monotonic() - start < 15 and "s3cret" not in str(err.value)
        finally:
            store.close()
