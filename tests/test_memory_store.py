"""The document store (SQLiteStore), the database location and the memory service
(UnifiedMemoryService): round trips, filters, all-or-nothing batches, model checks, and an index
that is repaired from the store whenever it is missing, corrupt or stale."""
from __future__ import annotations

import os
import sqlite3
import threading
import zlib

import numpy as np
import pytest

from memory_adapter import (CandidateSource, DocumentStore, Record, SQLiteStore,
                            UnifiedMemoryService, index_path_for, resolve_db)
from memory_adapter.sqlite_store import describe
from rerank.retrieval import HNSWIndex

D = 16
MODEL = "test-model"


class HashingTestEmbedder:
    """A TEST DOUBLE, not a model: each word maps to a fixed random unit vector (seeded by a hash
    of the word); a text is the normalised sum of its words' vectors; tokens are the words."""

    def __init__(self, model_id: str = "test-hashing-embedder", dim: int = D):
        self.model_id = model_id
        self.dim = dim
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(word.lower().encode())).standard_normal(self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed(self, texts):
        self.calls += 1
        out = np.stack([sum(self._word(w) for w in t.split()) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_tokens(self, texts):
        rows = [[self._word(w) for w in t.split()] for t in texts]
        offsets = np.cumsum([0] + [len(r) for r in rows])
        return np.stack([v for r in rows for v in r]), offsets


def vecs(n: int, seed: int = 0, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def records(n: int, seed: int = 0, prefix: str = "doc", **extra) -> list[Record]:
    x = vecs(n, seed)
    return [Record(f"{prefix}{i}", x[i], text=f"text {i}",
                   metadata={"group": ["a", "b", "c"][i % 3], "n": i, "even": i % 2 == 0},
                   **extra) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "store.db", model_id=MODEL, dim=D)
    yield s
    s.close()


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "memory.db")


def open_service(db, **kw):
    kw.setdefault("dim", D)
    kw.setdefault("model_id", MODEL)
    kw.setdefault("autosave_seconds", 0)   # these tests check the index file after every batch
    return UnifiedMemoryService.open(db, **kw)


def assert_all_findable(svc, ids, x):
    """Searching each document's own vector returns that document first."""
    for i, v in zip(ids, x):
        hit = svc.search(v, 1)[0]
        assert hit["corpus_id"] == i, f"{i}: got {hit['corpus_id']}"


def assert_index_matches_store(svc):
    assert set(svc.index.ids()) == set(svc.document_store.ids())
    assert svc.index.count == svc.document_store.count()


# ---------------------------------------------------------------------------------- the store

def test_store_satisfies_the_protocols(store):
    assert isinstance(store, DocumentStore)
    assert isinstance(HNSWIndex(D, model_id=MODEL), CandidateSource)
    info = store.info()
    assert info["journal_mode"] == "wal" and info["synchronous"] == "FULL"
    assert (info["model_id"], info["dim"], info["backend"]) == (MODEL, D, "sqlite")


def test_put_get_round_trip(store):
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((5, D)).astype(np.float32) * 0.3
    chunks = rng.standard_normal((2, D)).astype(np.float32)
    rec = Record("a", vecs(1)[0], text="héllo", metadata={"x": [1, {"y": None}], "z": 1.5},
                 tokens=tokens, chunks=chunks)
    store.put([rec, Record("b", vecs(1, 2)[0])])
    got_a, got_none, got_b = store.get(["a", "missing", "b"])
    assert got_none is None
    assert got_a.text == "héllo" and got_a.metadata == rec.metadata
    np.testing.assert_array_equal(got_a.vector, rec.vector)
    assert got_a.vector.dtype == np.float32 and got_a.vector.flags.writeable
    bound = np.abs(tokens).max(axis=1, keepdims=True) / 254 * (1 + 1e-6)   # int8: scale / 2
    assert (np.abs(got_a.tokens - tokens) <= bound).all()
    assert got_a.tokens.dtype == np.float32
    np.testing.assert_array_equal(got_a.chunks, chunks)
    assert got_b.text is None and got_b.metadata == {} and got_b.tokens is None
    assert store.get([]) == []
    assert store.documents(["b", "missing", "a"]) == [(None, {}), None, ("héllo", rec.metadata)]
    assert store.documents([]) == []


def test_count_ids_vectors_delete(store):
    recs = records(10)
    store.put(recs)
    assert store.count() == len(store) == 10
    assert store.ids() == [r.id for r in recs]
    order = ["doc7", "doc2", "doc7"]
    np.testing.assert_array_equal(store.vectors(order), np.stack([recs[7].vector, recs[2].vector,
                                                                  recs[7].vector]))
    assert store.vectors([]).shape == (0, D)
    with pytest.raises(KeyError, match="nope"):
        store.vectors(["doc1", "nope"])
    assert store.delete(["doc1", "doc2", "nope"]) == 2
    assert store.count() == 8 and "doc1" not in store and "doc3" in store
    assert store.get(["doc1"]) == [None]
    assert store.delete([]) == 0


def test_token_vectors(store):
    t = vecs(3, 5)
    store.put([Record("a", vecs(1)[0], tokens=t), Record("b", vecs(1)[0])])
    got = store.token_vectors(["b", "a"])
    assert got[0] is None
    assert (np.abs(got[1] - t) <= np.abs(t).max(axis=1, keepdims=True) / 254 * 1.000001).all()
    codes = store.token_codes(["a", "b"])
    assert codes[1] is None and codes[0].codes.dtype == np.int8
    np.testing.assert_array_equal(codes[0].dequantize(), got[1])
    with pytest.raises(KeyError):
        store.token_vectors(["zzz"])


@pytest.mark.parametrize("fmt, per_token, tol", [("int8", D + 4, 1 / 254), ("float16", 2 * D, 2**-11),
                                                 ("float32", 4 * D, 0.0)])
def test_token_storage_formats(tmp_path, fmt, per_token, tol):
    """Each format keeps tokens within its documented bound at its documented size; status
    (describe) reports the cost per document."""
    s = SQLiteStore(tmp_path / f"{fmt}.db", model_id=MODEL, dim=D, token_dtype=fmt)
    t = vecs(7, 3)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    s.put([Record("a", vecs(1)[0], tokens=t)])
    got = s.token_vectors(["a"])[0]
    assert (np.abs(got - t) <= tol * np.abs(t).max(axis=1, keepdims=True) + 1e-7).all()
    s.close()
    info = describe(tmp_path / f"{fmt}.db")
    assert info["token_dtype"] == fmt and info["tokens_per_document"] == 7
    assert info["token_bytes_per_document"] == 7 * per_token
    reopened = SQLiteStore(tmp_path / f"{fmt}.db", model_id=MODEL, dim=D, token_dtype="float32")
    assert reopened.token_dtype == fmt          # fixed when the store was created
    reopened.close()


def test_float16_store_refuses_tokens_beyond_its_range(tmp_path):
    s = SQLiteStore(tmp_path / "h.db", model_id=MODEL, dim=D, token_dtype="float16")
    with pytest.raises(ValueError, match="float16"):
        s.put([Record("x", vecs(1)[0], tokens=np.full((2, D), 1e6, np.float32))])
    assert s.count() == 0
    with pytest.raises(ValueError, match="token_dtype must be one of"):
        SQLiteStore(tmp_path / "other.db", model_id=MODEL, dim=D, token_dtype="int4")


def _brute_df(store):
    df, n = {}, 0
    for rec in store.get(store.ids()):
        if rec.token_ids is not None:
            n += 1
            for p in set(rec.token_ids.tolist()):
                df[p] = df.get(p, 0) + 1
    return df, n


def test_document_frequencies_follow_puts_upserts_and_deletes(store):
    """token_df always equals a recount over the stored documents' word pieces."""
    rng = np.random.default_rng(4)

    def rec(i, n):
        ids = rng.integers(0, 12, n)
        return Record(f"d{i}", vecs(1, i)[0], tokens=vecs(n, i + 50), token_ids=ids)

    store.put([rec(i, 3 + i) for i in range(6)] + [Record("plain", vecs(1)[0])])
    store.put([rec(2, 9), rec(7, 4)])                 # an upsert replaces d2's pieces
    store.delete(["d0", "d5", "plain"])
    df, n = _brute_df(store)
    pieces = np.arange(15)
    got, got_n = store.document_frequencies(pieces)
    assert got_n == n == 5
    assert got.tolist() == [df.get(p, 0) for p in pieces]
    store.delete(store.ids())
    got, got_n = store.document_frequencies(pieces)
    assert got_n == 0 and not got.any()
    assert store.conn.execute("SELECT count(*) FROM token_df").fetchone()[0] == 0


def test_a_failed_batch_leaves_document_frequencies_alone(store):
    store.put([Record("a", vecs(1)[0], tokens=vecs(2), token_ids=np.array([1, 2]))])
    bad = [Record("b", vecs(1)[0], tokens=vecs(2), token_ids=np.array([2, 3])),
           Record("c", vecs(1)[0], tokens=vecs(2), token_ids=np.array([3]))]   # 1 id, 2 tokens
    with pytest.raises(ValueError, match="one id per token"):
        store.put(bad)
    assert store.document_frequencies(np.array([1, 2, 3]))[0].tolist() == [1, 1, 0]
    with pytest.raises(TypeError, match="integer"):
        store.put([Record("d", vecs(1)[0], tokens=vecs(1), token_ids=np.array([1.5]))])


def test_a_schema_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    s = SQLiteStore(path, model_id=MODEL, dim=D, token_dtype="float16")
    s.put(records(3))
    s.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE documents DROP COLUMN token_ids")
    conn.execute("DROP TABLE token_df")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    s = SQLiteStore(path, model_id=MODEL, dim=D)
    assert s.count() == 3 and s.get(["doc1"])[0].text == "text 1"
    s.put([Record("new", vecs(1)[0], tokens=vecs(2), token_ids=np.array([5, 5]))])
    assert s.document_frequencies(np.array([5]))[0].tolist() == [1]
    assert s.get_meta("schema_version") == "2"
    s.close()


def test_upsert_replaces_by_id(store):
    store.put(records(3))
    new = Record("doc1", vecs(1, 9)[0], text="new", metadata={"group": "z"})
    store.put([new])
    assert store.count() == 3
    assert store.get(["doc1"])[0] == new
    assert store.ids() == ["doc0", "doc1", "doc2"]   # the row keeps its place


def test_ids_argument_must_be_a_list(store):
    with pytest.raises(TypeError, match="ids"):
        store.get("doc1")
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        store.delete(["a", 3])


@pytest.mark.parametrize("bad, match", [
    (lambda r: Record("x", vecs(1, d=D + 1)[0]), r"vector must have shape \(16,\)"),
    (lambda r: Record("x", np.full(D, np.nan, np.float32)), "NaN"),
    (lambda r: Record("", r.vector), "id must be a non-empty string"),
    (lambda r: Record(7, r.vector), "id must be a non-empty string"),
    (lambda r: Record("a\x00b", r.vector), "NUL"),
    (lambda r: Record("x", None), "vector is missing"),
    (lambda r: Record("x", r.vector, metadata={"when": object()}), "JSON-serialisable"),
    (lambda r: Record("x", r.vector, metadata={"v": float("inf")}), "JSON-serialisable"),
    (lambda r: Record("x", r.vector, metadata={1: "a"}), "keys must be strings"),
    (lambda r: Record("x", r.vector, tokens=vecs(2, d=D - 1)), "tokens must have shape"),
    (lambda r: Record("x", r.vector, tokens=np.full((2, D), np.inf, np.float32)), "NaN or Inf"),
    (lambda r: Record("x", r.vector, tokens=vecs(2), token_ids=np.arange(3)), "one id per token"),
    (lambda r: Record("doc0", r.vector), "repeats the id"),
])
def test_a_batch_with_one_bad_record_writes_nothing(store, bad, match):
    before = records(5)
    store.put(before)
    batch = [Record("doc0", vecs(1, 99)[0], text="changed"), Record("fresh", vecs(1, 98)[0])]
    batch.append(bad(batch[0]))
    with pytest.raises((ValueError, TypeError), match=match):
        store.put(batch)
    assert store.count() == 5 and store.get(["fresh"]) == [None]
    assert store.get([r.id for r in before]) == before


def test_a_failure_while_writing_rolls_the_batch_back(store, monkeypatch):
    store.put(records(3))
    original = SQLiteStore._write_rows

    def fail_midway(self, conn, rows):
        def some_then_fail():
            for i, row in enumerate(rows):
                if i == 4:
                    raise sqlite3.OperationalError("disk I/O error (simulated)")
                yield row
        original(self, conn, some_then_fail())

    monkeypatch.setattr(SQLiteStore, "_write_rows", fail_midway)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        store.put(records(10, seed=3, prefix="new"))
    monkeypatch.undo()
    assert store.count() == 3 and not store.conn.in_transaction
    store.put(records(2, seed=4, prefix="after"))   # the store still works
    assert store.count() == 5


# ---------------------------------------------------------------------------------- filters

@pytest.fixture
def filtered(store):
    store.put([
        Record("a", vecs(1)[0], metadata={"lang": "en", "year": 2020, "tags": ["x", "y"],
                                          "ok": True}),
        Record("b", vecs(1)[0], metadata={"lang": "de", "year": 2021.0, "tags": ["y"],
                                          "ok": False}),
        Record("c", vecs(1)[0], metadata={"lang": "en", "year": "2020", "ok": 1,
                                          "nested": {"lang": "en"}, "none": None}),
        Record("d", vecs(1)[0]),
    ])
    return store


@pytest.mark.parametrize("flt, expected", [
    (None, None),
    ({}, None),
    ({"lang": "en"}, {"a", "c"}),
    ({"lang": {"$in": ["de", "fr"]}}, {"b"}),
    ({"lang": {"$in": ["en", "de"]}}, {"a", "b", "c"}),
    ({"lang": "en", "year": 2020}, {"a"}),                 # AND; "2020" (text) ≠ 2020
    ({"year": 2021}, {"b"}),                               # 2021 == 2021.0
    ({"year": {"$in": [2020, "2020"]}}, {"a", "c"}),
    ({"ok": True}, {"a"}),                                 # true ≠ 1
    ({"ok": 1}, {"c"}),
    ({"tags": "y"}, {"a", "b"}),                           # a list field contains the value
    ({"none": None}, {"c"}),
    ({"nested": "en"}, set()),                             # an object never equals a scalar
    ({"lang": "fr"}, set()),
    ({"missing": "x"}, set()),
    ({"lang": {"$in": []}}, set()),
    ({"lang": "en", "missing": 1}, set()),
])
def test_filters(filtered, flt, expected):
    assert filtered.resolve_filter(flt) == expected


@pytest.mark.parametrize("flt, match", [
    ("lang=en", "filter must be a dict"),
    ({"lang": {"$nin": ["en"]}}, r"unknown operator.*\$nin"),
    ({"lang": {"$in": ["en"], "$eq": "de"}}, r"unknown operator.*\$eq"),
    ({"lang": {"x": 1}}, "unknown operator"),
    ({"$or": [{"lang": "en"}]}, r"operator '\$or' is not supported"),
    ({"lang": ["en", "de"]}, r"\$in"),
    ({"lang": {"$in": "en"}}, "must be a list"),
    ({"lang": {"$in": [["en"]]}}, "string, number, boolean or null"),
    ({"year": float("nan")}, "finite"),
    ({"": 1}, "non-empty"),
])
def test_malformed_filters_raise_value_error(filtered, flt, match):
    with pytest.raises(ValueError, match=match):
        filtered.resolve_filter(flt)


# ---------------------------------------------------------------------------------- opening

def test_reopen_with_another_model_or_dim_is_refused(tmp_path):
    path = tmp_path / "s.db"
    SQLiteStore(path, model_id="model-a", dim=D).close()
    with pytest.raises(ValueError, match=r"'model-a'.*dim 16.*'model-b'.*dim 16"):
        SQLiteStore(path, model_id="model-b", dim=D)
    with pytest.raises(ValueError, match=r"'model-a'.*dim 16.*'model-a'.*dim 32"):
        SQLiteStore(path, model_id="model-a", dim=32)
    with SQLiteStore(path, model_id="model-a", dim=D) as s:   # the right model still opens
        assert s.count() == 0


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        SQLiteStore(junk, model_id=MODEL, dim=D)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="not a rerank store"):
        SQLiteStore(other, model_id=MODEL, dim=D)
    with pytest.raises(ValueError, match="model_id"):
        SQLiteStore(tmp_path / "x.db", model_id="", dim=D)


def test_closed_store_raises(store):
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.count()


def test_store_is_thread_safe(store):
    errors = []

    def writer(t):
        try:
            for j in range(10):
                store.put(records(5, seed=t * 100 + j, prefix=f"t{t}-{j}-"))
                store.get([f"t{t}-{j}-0"])
                store.resolve_filter({"group": "a"})
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 4 * 10 * 5


# ---------------------------------------------------------------------------------- location

def test_resolve_db(tmp_path, monkeypatch):
    monkeypatch.delenv("RERANK_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_db() == str(tmp_path / "xdg" / "rerank" / "memory.db")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_db() == str(tmp_path / "home" / ".local" / "share" / "rerank" / "memory.db")
    monkeypatch.setenv("RERANK_DB", str(tmp_path / "env.db"))
    assert resolve_db() == str(tmp_path / "env.db")
    assert resolve_db(str(tmp_path / "arg.db")) == str(tmp_path / "arg.db")
    assert resolve_db(tmp_path / "p.db") == str(tmp_path / "p.db")
    assert resolve_db("~/x.db") == str(tmp_path / "home" / "x.db")
    assert index_path_for("/a/b.db") == "/a/b.db.hnsw"
    assert index_path_for(":memory:") is None
    for url in ("postgresql://u:secret@h/db", "postgres://h/db"):   # PostgreSQL: kept as given
        assert resolve_db(f" {url} ") == url
    monkeypatch.setenv("RERANK_DB", "postgres://h/db")
    assert resolve_db() == "postgres://h/db"


def test_open_uses_rerank_db(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_DB", str(tmp_path / "sub" / "env.db"))
    with open_service(None) as svc:
        svc.store(records(3))
        assert svc.status()["path"] == str(tmp_path / "sub" / "env.db")
    assert (tmp_path / "sub" / "env.db").exists() and (tmp_path / "sub" / "env.db.hnsw").exists()


# ---------------------------------------------------------------------------------- service

def test_service_store_search_get_update_delete(db):
    x = vecs(60)
    docs = [{"id": f"d{i}", "vector": x[i], "text": f"text {i}", "metadata": {"g": i % 3}}
            for i in range(60)]
    with open_service(db) as svc:
        assert svc.store(docs) == [f"d{i}" for i in range(60)]
        assert len(svc) == 60 and svc.index.count == 60 and "d5" in svc
        hits = svc.search(x[7], 5)
        assert [h["corpus_id"] for h in hits][0] == "d7"
        assert set(hits[0]) == {"corpus_id", "score", "text", "metadata", "vector"}
        assert hits[0]["text"] == "text 7" and hits[0]["metadata"] == {"g": 1}
        np.testing.assert_array_equal(hits[0]["vector"], x[7])
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
        assert_all_findable(svc, [f"d{i}" for i in range(60)], x)

        hits = svc.search(x[7], 20, filter={"g": {"$in": [0, 2]}})
        assert len(hits) == 20 and all(h["metadata"]["g"] in (0, 2) for h in hits)
        assert svc.search(x[7], 1, filter={"g": 1})[0]["corpus_id"] == "d7"

        assert svc.get("d3").text == "text 3"
        assert [r.id if r else None for r in svc.get(["d4", "nope"])] == ["d4", None]

        rec = svc.update("d3", metadata={"g": 9})
        assert rec.metadata == {"g": 9} and svc.get("d3").metadata == {"g": 9}
        np.testing.assert_array_equal(svc.get("d3").vector, x[3])
        svc.update("d3", vector=x[50] + 0.01)
        assert svc.search(x[50], 2)[1]["corpus_id"] == "d3"
        assert svc.search(x[3], 1)[0]["corpus_id"] != "d3"
        with pytest.raises(KeyError, match="nope"):
            svc.update("nope", metadata={})
        with pytest.raises(ValueError, match="needs text, vector or metadata"):
            svc.update("d3")

        assert svc.delete(["d7", "d8", "nope"]) == 2
        assert svc.delete("d9") == 1
        assert svc.get("d7") is None and svc.index.count == 57
        for q in (x[7], x[8], x[9]):
            assert not {"d7", "d8", "d9"} & {h["corpus_id"] for h in svc.search(q, 57)}
        assert_index_matches_store(svc)
        status = svc.status()
        assert status["documents"] == status["index_items"] == 57
        assert (status["model_id"], status["dim"], status["space"]) == (MODEL, D, "cosine")
        assert status["embedder"] is None and status["index_path"] == db + ".hnsw"
        assert status["index_repaired"] is None
    with open_service(db) as svc:   # everything persisted, nothing to repair
        assert svc.count() == 57 and svc.status()["index_repaired"] is None
        assert svc.get("d3").metadata == {"g": 9}
        assert svc.search(x[50], 2)[1]["corpus_id"] == "d3"


def test_k_larger_than_available_raises(db):
    with open_service(db) as svc:
        with pytest.raises(ValueError, match="only 0 documents are stored"):
            svc.search(vecs(1)[0], 1)
        svc.store(records(10))
        assert len(svc.search(vecs(1)[0], 10)) == 10
        with pytest.raises(ValueError, match="k = 11 but only 10 documents are stored"):
            svc.search(vecs(1)[0], 11)
        with pytest.raises(ValueError, match=r"only 4 documents match the filter"):
            svc.search(vecs(1)[0], 5, filter={"group": "a"})
        with pytest.raises(ValueError, match="k must be a positive integer"):
            svc.search(vecs(1)[0], 0)


def test_search_asks_the_index_for_exactly_k(db, monkeypatch):
    with open_service(db) as svc:
        svc.store(records(30))
        asked = []
        original = HNSWIndex.search

        def spy(self, vectors, n, allowed=None):
            asked.append(n)
            return original(self, vectors, n, allowed)

        monkeypatch.setattr(HNSWIndex, "search", spy)
        svc.search(vecs(1)[0], 7)
        svc.search(vecs(1)[0], 3, filter={"group": "b"})
        assert asked == [7, 3]


def test_bad_documents_write_nothing(db):
    with open_service(db) as svc:
        svc.store(records(3))
        with pytest.raises(ValueError, match="no embedder"):
            svc.store([{"id": "t", "text": "words only"}])
        with pytest.raises(ValueError, match="unknown key"):
            svc.store([{"id": "t", "vector": vecs(1)[0], "meta": {}}])
        with pytest.raises(ValueError, match="all-zero vector"):
            svc.store([{"id": "z1", "vector": vecs(1)[0]}, {"id": "z", "vector": np.zeros(D)}])
        with pytest.raises(ValueError, match="shape"):
            svc.store([{"id": "w1", "vector": vecs(1)[0]}, {"id": "w", "vector": np.ones(D + 1)}])
        with pytest.raises(ValueError, match="query must have shape"):
            svc.search(np.ones(D + 1), 1)
        with pytest.raises(ValueError, match="query is text but the service has no embedder"):
            svc.search("hello", 1)
        assert svc.count() == svc.index.count == 3


def test_closed_service_raises(db):
    svc = open_service(db)
    svc.close()
    svc.close()
    with pytest.raises(ValueError, match="closed"):
        svc.search(vecs(1)[0], 1)


# ---------------------------------------------------------------------------------- repairs

@pytest.fixture
def populated(db):
    x = vecs(120, seed=7)
    ids = [f"p{i}" for i in range(120)]
    with open_service(db) as svc:
        svc.store([Record(i, v) for i, v in zip(ids, x)])
    return ids, x


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "garbage", "empty", "delete"])
def test_a_damaged_or_missing_index_is_rebuilt_from_the_store(db, populated, damage):
    ids, x = populated
    path = db + ".hnsw"
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "flip-byte":
        i = len(data) * 3 // 4
        open(path, "wb").write(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage":
        open(path, "wb").write(os.urandom(len(data)))
    elif damage == "empty":
        open(path, "wb").close()
    else:
        os.remove(path)
    with open_service(db) as svc:
        repaired = svc.status()["index_repaired"]
        assert repaired and "rebuilt from the store (120 documents)" in repaired
        assert ("missing" if damage == "delete" else "corrupt") in repaired
        assert_index_matches_store(svc)
        assert_all_findable(svc, ids, x)
    HNSWIndex.load(path, dim=D, model_id=MODEL)   # the repaired index was saved
    with open_service(db) as svc:
        assert svc.status()["index_repaired"] is None


def test_an_index_built_for_another_model_is_rebuilt(db, populated):
    ids, x = populated
    other = HNSWIndex(D, model_id="other-model")
    other.add(["ghost"], vecs(1, 5))
    other.save(db + ".hnsw")
    with open_service(db) as svc:
        assert "other-model" in svc.status()["index_repaired"]
        assert_index_matches_store(svc)
        assert_all_findable(svc, ids, x)
    assert HNSWIndex.load(db + ".hnsw").model_id == MODEL


def test_a_stale_index_is_repaired_on_open(db, populated):
    """Another process writes the store directly (adds, deletes, changes vectors); the saved
    index knows nothing of it until the service opens."""
    ids, x = populated
    y = vecs(30, seed=8)
    with SQLiteStore(db, model_id=MODEL, dim=D) as other:
        other.put([Record(f"new{i}", y[i]) for i in range(30)])
        other.delete(ids[:10])
        other.put([Record(ids[10], y[0] * -1.0), Record(ids[11], x[20] + 0.01)])
    with open_service(db) as svc:
        assert "stale" in svc.status()["index_repaired"]
        assert_index_matches_store(svc)
        assert svc.count() == 140
        assert_all_findable(svc, [f"new{i}" for i in range(30)], y)
        assert_all_findable(svc, ids[12:], x[12:])
        assert svc.search(-y[0], 1)[0]["corpus_id"] == ids[10]   # the changed vector is indexed
        assert svc.search(x[20], 2)[1]["corpus_id"] == ids[11]
        assert not set(ids[:10]) & {h["corpus_id"] for h in svc.search(x[0], 140)}


def test_sync_index_on_demand_picks_up_another_writer(db, populated):
    ids, x = populated
    with open_service(db) as svc, SQLiteStore(db, model_id=MODEL, dim=D) as other:
        other.put([Record("late", vecs(1, 50)[0])])
        other.delete([ids[0]])
        report = svc.sync_index()
        assert (report["added"], report["removed"], report["rebuilt"]) == (1, 1, False)
        assert svc.search(vecs(1, 50)[0], 1)[0]["corpus_id"] == "late"
        assert_index_matches_store(svc)
        assert svc.sync_index(verify=True)["updated"] == 0


def test_an_index_restored_from_an_old_copy_is_caught_by_verify(db, populated):
    ids, x = populated
    old = open(db + ".hnsw", "rb").read()
    with open_service(db) as svc:
        svc.update(ids[5], vector=-x[5])
    open(db + ".hnsw", "wb").write(old)   # same ids, one stale vector, newer seq recorded
    with open_service(db) as svc:
        assert svc.sync_index(verify=True)["updated"] == 1
        assert svc.search(-x[5], 1)[0]["corpus_id"] == ids[5]


def test_writes_after_an_index_failure_are_repaired(db, monkeypatch):
    with open_service(db) as svc:
        svc.store(records(5))

        def broken_add(self, ids, vectors):
            raise RuntimeError("simulated index failure")

        monkeypatch.setattr(HNSWIndex, "add", broken_add)
        with pytest.raises(RuntimeError, match="simulated"):
            svc.store(records(3, seed=2, prefix="late"))
        monkeypatch.undo()
        assert svc.count() == 8 and svc.status()["needs_sync"]   # the store committed
        assert svc.search(vecs(3, 2)[1], 1)[0]["corpus_id"] == "late1"
        assert_index_matches_store(svc)


def test_concurrent_writes_and_searches(db):
    with open_service(db, autosave=False) as svc:
        svc.store(records(50))
        errors = []

        def writer(t):
            try:
                for j in range(8):
                    svc.store(records(5, seed=1000 + t * 10 + j, prefix=f"w{t}-{j}-"))
                    svc.delete([f"w{t}-{j}-0"])
            except Exception as exc:   # pragma: no cover - reported below
                errors.append(exc)

        def reader():
            try:
                for j in range(40):
                    hits = svc.search(vecs(1, j)[0], 10)
                    assert len(hits) == 10 and all(h["corpus_id"] and h["text"] for h in hits)
            except Exception as exc:   # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        threads += [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert svc.count() == 50 + 3 * 8 * 4
        assert_index_matches_store(svc)
    with open_service(db) as svc:   # close() saved the index (autosave was off)
        assert svc.status()["index_repaired"] is None and svc.index.count == 146


# ---------------------------------------------------------------------------------- embedder

def test_text_path_with_a_test_embedder(db):
    emb = HashingTestEmbedder()
    texts = ["the cat sat on the mat", "dogs chase cats", "stock markets fell sharply",
             "a recipe for bread", "quantum computing basics"]
    with UnifiedMemoryService.open(db, embedder=emb) as svc:
        assert svc.store_tokens
        svc.store([{"id": f"t{i}", "text": t, "metadata": {"i": i}} for i, t in enumerate(texts)])
        assert svc.status()["embedder"] == "test-hashing-embedder"
        assert svc.status()["model_id"] == "test-hashing-embedder" and svc.dim == D
        for i, t in enumerate(texts):
            assert svc.search(t, 1)[0]["corpus_id"] == f"t{i}"
        np.testing.assert_allclose(svc.get("t2").vector, emb.embed([texts[2]])[0], atol=1e-6)
        toks = svc.token_vectors(["t0", "t1"])
        assert [t.shape for t in toks] == [(6, D), (3, D)]
        svc.update("t3", text="quantum bread")
        np.testing.assert_allclose(svc.get("t3").vector, emb.embed(["quantum bread"])[0],
                                   atol=1e-6)
        assert svc.token_vectors("t3")[0].shape == (2, D)
        assert svc.search("quantum bread", 1)[0]["corpus_id"] == "t3"
        # a vector given with the text is kept as given
        svc.store([Record("v", vecs(1)[0], text="anything")])
        np.testing.assert_array_equal(svc.get("v").vector, vecs(1)[0])


def test_an_embedder_of_another_model_is_refused(db):
    with UnifiedMemoryService.open(db, embedder=HashingTestEmbedder()) as svc:
        svc.store([{"id": "a", "text": "hello world"}])
    with pytest.raises(ValueError, match=r"'test-hashing-embedder'.*'other-model'|"
                                         r"'other-model'.*'test-hashing-embedder'"):
        UnifiedMemoryService.open(db, embedder=HashingTestEmbedder("other-model"))
    store = SQLiteStore(db, model_id="test-hashing-embedder", dim=D)
    with pytest.raises(ValueError, match=r"embedder is model 'other-model' \(dim 16\)"):
        UnifiedMemoryService(store, None, HashingTestEmbedder("other-model"))
    with pytest.raises(ValueError, match=r"embedder is model 'test-hashing-embedder' \(dim 8\)"):
        UnifiedMemoryService(store, None, HashingTestEmbedder(dim=8))
    with pytest.raises(TypeError, match="lacks model_id, dim, embed"):
        UnifiedMemoryService(store, None, object())
    store.close()


def test_subclass_contract(db):
    """What AttentionEnhancedMemory relies on: search is overridable and calls _embed_query;
    hits carry vectors; token_vectors delegates to the store."""

    class Doubling(UnifiedMemoryService):
        def search(self, query, k, filter=None):
            return super().search(query, min(2 * k, self.available(filter)), filter=filter)[:k]

    emb = HashingTestEmbedder()
    with Doubling.open(db, embedder=emb) as svc:
        svc.store([{"id": "a", "text": "red apple"}, {"id": "b", "text": "green pear"},
                   {"id": "c", "text": "blue sky"}])
        q = svc._embed_query("red apple")
        assert q.shape == (D,) and q.dtype == np.float32
        hits = svc.search("red apple", 1)
        assert [h["corpus_id"] for h in hits] == ["a"] and hits[0]["vector"].shape == (D,)
        assert svc.token_vectors(["a"])[0].shape == (2, D)
    import memory_adapter
    assert issubclass(memory_adapter.AttentionEnhancedMemory, UnifiedMemoryService)


def test_throttled_autosave_catches_up_on_open(db):
    """With the default throttle a batch may not be saved to the index file; the store is the
    source of truth, so reopening catches the index up and every document is findable."""
    x = vecs(40, 7)
    with open_service(db, autosave_seconds=3600) as svc:
        svc.store([{"id": "first", "vector": x[0]}])
        svc.save_index()
        svc.store([{"id": f"d{i}", "vector": x[i]} for i in range(1, 40)])
        assert HNSWIndex.load(svc.index_path).count == 1      # not saved: throttled
        path = svc.index_path
        svc._closed = True                                     # simulate a crash: no save on close
        svc.document_store.close()
    with open_service(db) as svc:
        assert svc.count() == 40 and svc.candidate_source.count == 40
        for i in range(40):
            assert svc.search(x[i], 1)[0]["corpus_id"] == ("first" if i == 0 else f"d{i}")
    assert os.path.exists(path)
