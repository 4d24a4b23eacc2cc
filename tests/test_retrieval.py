"""rerank.retrieval: HNSW candidate source against exact search, deletes and rebuilds, files,
threads, and boundary errors."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from rerank import retrieval
from rerank.retrieval import (HNSWIndex, IndexCorruptError, IndexMismatchError, ReadWriteLock,
                              SearchResult)


def mixture(rng, n, d, centres=200, noise=1.0, means=None):
    """Clustered vectors: a Gaussian mixture with ``centres`` standard-normal means."""
    if means is None:
        means = rng.standard_normal((centres, d))
    pick = rng.integers(0, len(means), n)
    return (means[pick] + noise * rng.standard_normal((n, d))).astype(np.float32), means


def exact_scores(space, q, x):
    """(m, N) float64 similarities of queries to every row, as the index defines them."""
    q = q.astype(np.float64)
    x = x.astype(np.float64)
    if space == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return q @ x.T
    if space == "ip":
        return q @ x.T
    return -(np.sum(q * q, 1)[:, None] - 2 * q @ x.T + np.sum(x * x, 1)[None, :])


def normalised(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build(rng, n, d, space="cosine", **kw):
    """An index of n clustered vectors (20 centres) with ids doc0…; queries: ``mixture(...,
    means=idx.means)``."""
    x, means = mixture(rng, n, d, centres=20)
    kw.setdefault("ef_construction", 100)
    idx = HNSWIndex(d, space=space, **kw)
    ids = [f"doc{i}" for i in range(n)]
    idx.add(ids, x)
    idx.means = means
    return idx, ids, x


def recall(result_ids, ids, exact, k):
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.mean([len(set(r) & {ids[j] for j in t}) / k for r, t in zip(result_ids, truth)])


def check_result(res, m, n, d):
    assert isinstance(res, SearchResult)
    assert len(res.ids) == m and all(len(r) == n for r in res.ids)
    assert all(isinstance(i, str) for r in res.ids for i in r)
    assert all(len(set(r)) == n for r in res.ids), "an id appears twice in one result"
    assert res.scores.shape == (m, n) and res.scores.dtype == np.float32
    assert res.vectors.shape == (m, n, d) and res.vectors.dtype == np.float32
    assert (np.diff(res.scores, axis=1) <= 0).all(), "scores not sorted best first"


# ----------------------------------------------------------------------------- quality

@pytest.fixture(scope="module")
def clustered():
    """20k clustered vectors (200 centres, d = 64, noise that makes clusters overlap) in a
    cosine index, with held-out queries from the same mixture."""
    rng = np.random.default_rng(1234)
    x, means = mixture(rng, 20_000, 64)
    q, _ = mixture(rng, 200, 64, means=means)
    idx = HNSWIndex(64, space="cosine", ef_construction=100, model_id="m1")
    ids = [f"v{i}" for i in range(len(x))]
    idx.add(ids, x)
    return idx, ids, x, q


def test_recall_cosine_against_exact(clustered):
    idx, ids, x, q = clustered
    res = idx.search(q, 10)
    check_result(res, len(q), 10, 64)
    exact = exact_scores("cosine", q, x)
    assert recall(res.ids, ids, exact, 10) >= 0.95
    pos = {s: i for i, s in enumerate(ids)}
    rows = np.array([[pos[s] for s in r] for r in res.ids])
    np.testing.assert_allclose(res.scores, np.take_along_axis(exact, rows, 1), atol=1e-5)
    # vectors are the stored (normalised) ones of the returned ids
    np.testing.assert_allclose(res.vectors, normalised(x[rows]), atol=1e-6)


def test_batch_equals_single_queries(clustered):
    idx, ids, x, q = clustered
    batch = idx.search(q[:40], 25)
    for i in range(40):
        one = idx.search(q[i], 25)  # (d,) → m = 1
        check_result(one, 1, 25, 64)
        assert one.ids[0] == batch.ids[i]
        np.testing.assert_array_equal(one.scores[0], batch.scores[i])
        np.testing.assert_array_equal(one.vectors[0], batch.vectors[i])
    np.testing.assert_array_equal(batch.vectors[3], idx.get_vectors(batch.ids[3]))


def test_never_more_than_n(clustered):
    idx, *_ , q = clustered
    for n in (1, 2, 7, 100):
        check_result(idx.search(q[:3], n), 3, n, 64)


@pytest.mark.parametrize("space", ["ip", "l2"])
def test_ip_l2_scores_are_exact(space):
    rng = np.random.default_rng(7)
    x, means = mixture(rng, 4000, 32, centres=40)
    q, _ = mixture(rng, 50, 32, centres=40, means=means)
    idx = HNSWIndex(32, space=space, ef_construction=100)
    ids = [str(i) for i in range(len(x))]
    idx.add(ids, x)
    res = idx.search(q, 10)
    check_result(res, 50, 10, 32)
    exact = exact_scores(space, q, x)
    rows = np.array([[int(s) for s in r] for r in res.ids])
    want = np.take_along_axis(exact, rows, 1)
    np.testing.assert_allclose(res.scores, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(res.vectors, x[rows])  # ip/l2 store vectors unchanged
    assert recall(res.ids, ids, exact, 10) >= 0.95
    if space == "l2":
        assert (res.scores <= 0).all()


# ----------------------------------------------------------------------------- filter

def test_allowed_filter_graph_and_exact_paths():
    rng = np.random.default_rng(3)
    idx, ids, x = build(rng, 5000, 32)
    q, _ = mixture(rng, 50, 32, means=idx.means)
    exact = exact_scores("cosine", q, x)
    pos = {s: i for i, s in enumerate(ids)}
    for size, limit in ((3000, 0), (3000, None), (40, None)):
        allowed = set(rng.choice(ids, size, replace=False).tolist()) | {"not-indexed"}
        if limit is not None:
            idx.exact_search_limit = limit  # force the filtered graph walk
        else:
            idx.__dict__.pop("exact_search_limit", None)
        res = idx.search(q, 10, allowed=allowed)
        check_result(res, 50, 10, 32)
        assert all(set(r) <= allowed for r in res.ids)
        masked = np.where(np.isin(np.array(ids), list(allowed)), exact, -np.inf)
        assert recall(res.ids, ids, masked, 10) >= (1.0 if size < 2048 else 0.95)
        rows = np.array([[pos[s] for s in r] for r in res.ids])
        np.testing.assert_allclose(res.scores, np.take_along_axis(exact, rows, 1), atol=1e-5)
    small = set(ids[:5]) | {"ghost"}
    check_result(idx.search(q, 5, allowed=small), 50, 5, 32)
    with pytest.raises(ValueError, match="only 5 allowed"):
        idx.search(q, 6, allowed=small)
    with pytest.raises(ValueError, match="only 0 allowed"):
        idx.search(q, 1, allowed=set())


def test_falls_back_to_exact_when_graph_returns_too_few(monkeypatch):
    rng = np.random.default_rng(4)
    idx, ids, x = build(rng, 800, 16)
    q, _ = mixture(rng, 3, 16, means=idx.means)

    class Short:
        def __init__(self, inner):
            self.inner = inner

        def knn_query(self, *a, **kw):
            raise RuntimeError("Cannot return the results in a contiguous 2D array.")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    idx._state.index = Short(idx._state.index)
    res = idx.search(q, 12)
    check_result(res, 3, 12, 16)
    exact = exact_scores("cosine", q, x)
    truth = np.argsort(-exact, axis=1)[:, :12]
    assert res.ids == [[ids[j] for j in row] for row in truth]


# ----------------------------------------------------------------------------- writes

def test_delete_never_returned_and_automatic_rebuild():
    rng = np.random.default_rng(5)
    idx, ids, x = build(rng, 2000, 16, rebuild_ratio=0.25)  # capacity 1024 → 2048
    graph_before = idx._state.index
    assert idx.delete(["nope"]) == 0
    gone = set()
    order = rng.permutation(len(ids))
    for step in range(12):  # 50 per step: the rebuild comes when > 25 % are ghosts
        batch = [ids[j] for j in order[step * 50:(step + 1) * 50]]
        assert idx.delete(batch + ["nope"]) == len(batch)
        gone |= set(batch)
        assert idx.count == len(ids) - len(gone) and len(idx) == idx.count
        assert not any(g in idx for g in batch)
        q = x[order[step * 50:(step + 1) * 50]]  # each deleted vector is its own best match
        res = idx.search(q, 10)
        assert not gone & {s for r in res.ids for s in r}
        if idx.rebuilds == 0:
            assert idx.deleted_count == len(gone)
            assert idx._state.index.element_count == len(ids)
    assert idx.rebuilds == 1
    assert idx._state.index is not graph_before
    assert idx.deleted_count == 600 - 550   # rebuilt at 550 ghosts (> 500), then 50 more
    assert idx._state.index.element_count == idx.count + idx.deleted_count
    assert idx._state.index.max_elements < 2048  # the ghosts' memory went too
    assert set(idx.ids()) == set(ids) - gone
    with pytest.raises(KeyError, match=repr(next(iter(gone)))):
        idx.get_vectors([next(iter(gone))])
    live = [i for i in ids if i not in gone]
    res = idx.search(idx.get_vectors(live[:100]), 1)
    assert [r[0] for r in res.ids] == live[:100]  # each live vector still finds itself


def test_upsert_replaces_vector():
    rng = np.random.default_rng(6)
    idx, ids, x = build(rng, 500, 16, rebuild_ratio=1.0)
    new = -x[7]
    idx.add(["doc7"], new)  # (d,) for one id
    assert idx.count == 500 and idx.deleted_count == 1
    np.testing.assert_allclose(idx.get_vectors("doc7")[0], normalised(new), atol=1e-6)
    res = idx.search(new, 1)
    assert res.ids == [["doc7"]] and res.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    res = idx.search(x[7], 20)
    check_result(res, 1, 20, 16)
    assert "doc7" not in res.ids[0]  # the old vector no longer answers for doc7
    assert idx.ids().count("doc7") == 1


def test_upserts_also_trigger_rebuild():
    rng = np.random.default_rng(8)
    idx, ids, x = build(rng, 400, 8, rebuild_ratio=0.25)
    for _ in range(3):
        idx.add(ids[:50], x[:50] + 1)
    assert idx.rebuilds == 1 and idx.count == 400


def test_capacity_grows_by_doubling():
    rng = np.random.default_rng(9)
    x, _ = mixture(rng, 100, 8, centres=5)
    idx = HNSWIndex(8, capacity=4)
    for i in range(100):
        idx.add([f"k{i}"], x[i])
    assert idx._state.index.max_elements == 128
    assert idx.count == 100
    res = idx.search(x, 1)
    assert [r[0] for r in res.ids] == [f"k{i}" for i in range(100)]


def test_rebuild_from_source_of_truth_and_from_live():
    rng = np.random.default_rng(10)
    idx, ids, x = build(rng, 300, 8, rebuild_ratio=1.0)
    idx.delete(ids[:100])
    assert idx.deleted_count == 100
    idx.rebuild()
    assert idx.deleted_count == 0 and idx.count == 200 and idx.rebuilds == 1
    assert idx._state.index.element_count == 200
    np.testing.assert_allclose(idx.get_vectors(ids[150]), normalised(x[150:151]), atol=1e-6)
    idx.rebuild(["a", "b", "c"], x[:3])  # the store says these three, nothing else
    assert sorted(idx.ids()) == ["a", "b", "c"] and idx.rebuilds == 2
    assert idx.search(x[1], 1).ids == [["b"]]
    with pytest.raises(ValueError, match="both"):
        idx.rebuild(["a"])
    idx.rebuild([], np.empty((0, 8), np.float32))
    assert idx.count == 0


# ----------------------------------------------------------------------------- files

@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(11)
    idx, ids, x = build(rng, 1500, 24, model_id="mini-lm", rebuild_ratio=1.0)
    idx.delete(ids[:100])  # ghosts travel with the file
    idx.add(["doc200"], -x[200])
    path = tmp_path / "index.hnsw"
    idx.save(path)
    q, _ = mixture(rng, 16, 24, means=idx.means)
    return idx, path, q, x


def test_save_load_round_trip(saved):
    idx, path, q, x = saved
    back = HNSWIndex.load(path, dim=24, space="cosine", model_id="mini-lm")
    assert (back.dim, back.space, back.model_id, back.ef, back.M) == (24, "cosine", "mini-lm",
                                                                      64, 16)
    assert back.ids() == idx.ids() and back.deleted_count == idx.deleted_count == 101
    for n, allowed in ((10, None), (50, None), (5, set(idx.ids()[:3000:7]))):
        a, b = idx.search(q, n, allowed), back.search(q, n, allowed)
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.vectors, b.vectors)
    back.add(["new"], x[0])  # the loaded index keeps working
    assert back.search(x[0], 1).ids == [["new"]]  # doc0, its old owner, was deleted
    assert "doc0" not in back and "doc200" in back


def test_save_load_empty_index(tmp_path):
    HNSWIndex(5, space="l2", model_id="x").save(tmp_path / "e")
    back = HNSWIndex.load(tmp_path / "e")
    assert back.count == 0 and back.space == "l2"
    with pytest.raises(ValueError, match="only 0"):
        back.search(np.ones(5), 1)


def test_truncated_file_is_corrupt(saved, tmp_path):
    _, path, *_ = saved
    data = path.read_bytes()
    bad = tmp_path / "bad"
    header_len = int.from_bytes(data[8:16], "little")
    for cut in (0, 5, 19, 20 + header_len // 2, 20 + header_len + 100, len(data) // 2,
                len(data) - 9, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(IndexCorruptError):
            HNSWIndex.load(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(IndexCorruptError, match="trailing"):
        HNSWIndex.load(bad)


def test_flipped_byte_is_corrupt(saved, tmp_path):
    _, path, *_ = saved
    data = path.read_bytes()
    header_len = int.from_bytes(data[8:16], "little")
    bad = tmp_path / "bad"
    body = 20 + header_len
    for where in (0, 10, 17, 20 + header_len // 3, body + 5, body + (len(data) - body) // 2,
                  len(data) - 30, len(data) - 6, len(data) - 2):
        flipped = bytearray(data)
        flipped[where] ^= 0x10
        bad.write_bytes(bytes(flipped))
        with pytest.raises(IndexCorruptError):
            HNSWIndex.load(bad)
    at = data.index(b'"doc500"', 20, body)  # a flip inside an id still parses as JSON
    flipped = bytearray(data)
    flipped[at + 4] ^= 0x01
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IndexCorruptError, match="header"):
        HNSWIndex.load(bad)
    bad.write_bytes(b"not an index at all, just text")
    with pytest.raises(IndexCorruptError, match="not a rerank"):
        HNSWIndex.load(bad)


def test_mismatch_is_refused(saved):
    _, path, *_ = saved
    for kw, names in ((dict(model_id="other-model"), ("mini-lm", "other-model")),
                      (dict(dim=384), ("24", "384")), (dict(space="ip"), ("cosine", "ip"))):
        with pytest.raises(IndexMismatchError) as err:
            HNSWIndex.load(path, **kw)
        assert all(name in str(err.value) for name in names)
        assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        HNSWIndex.load(tmp_path / "absent.hnsw")


@pytest.mark.parametrize("fail", ["fsync", "replace", "graph"])
def test_failed_save_leaves_previous_file(saved, monkeypatch, fail):
    idx, path, q, x = saved
    before = path.read_bytes()
    idx.add([f"extra{i}" for i in range(10)], x[:10])

    def boom(*a, **kw):
        raise OSError("disk on fire")

    if fail == "graph":
        class Failing:
            def __init__(self, inner):
                self.inner = inner

            def save_index(self, p):
                with open(p, "wb") as f:
                    f.write(b"partial")
                raise RuntimeError("disk on fire")

            def __getattr__(self, name):
                return getattr(self.inner, name)

        monkeypatch.setattr(idx._state, "index", Failing(idx._state.index))
    else:
        monkeypatch.setattr(retrieval.os, fail, boom)
    with pytest.raises((OSError, RuntimeError), match="disk on fire"):
        idx.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary files left behind
    assert "extra0" not in HNSWIndex.load(path)
    idx.save(path)
    assert "extra0" in HNSWIndex.load(path)


# ----------------------------------------------------------------------------- threads

class RecordingLock(ReadWriteLock):
    """Records (kind, acquired, released) for every hold, and checks exclusivity live."""

    def __init__(self):
        super().__init__()
        self.holds = []
        self.violations = []
        self._inside = {"read": 0, "write": 0}
        self._guard = threading.Lock()
        self._t_read = {}

    def _enter(self, kind):
        with self._guard:
            self._inside[kind] += 1
            if self._inside["write"] > 1 or (self._inside["write"] and self._inside["read"]):
                self.violations.append(dict(self._inside))
        return time.perf_counter()

    def _exit(self, kind, t0):
        t1 = time.perf_counter()
        with self._guard:
            self._inside[kind] -= 1
        self.holds.append((kind, t0, t1))

    def acquire_read(self):
        super().acquire_read()
        self._t_read[threading.get_ident()] = self._enter("read")

    def release_read(self):
        self._exit("read", self._t_read.pop(threading.get_ident()))
        super().release_read()

    def acquire_write(self):
        super().acquire_write()
        self._t_write = self._enter("write")

    def release_write(self):
        self._exit("write", self._t_write)
        super().release_write()


def test_concurrent_searches_with_adds_and_deletes():
    rng = np.random.default_rng(12)
    d = 16
    x, means = mixture(rng, 3000, d, centres=20)
    idx = HNSWIndex(d, ef_construction=60, rebuild_ratio=0.3, capacity=256, num_threads=1)
    ever = {f"s{i}" for i in range(len(x))}
    idx.add(sorted(ever, key=lambda s: int(s[1:])), x)
    lock = idx._lock = RecordingLock()
    stop = time.perf_counter() + 2.0
    errors, search_calls, add_calls, returned = [], [], [], set()

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while time.perf_counter() < stop:
                q, _ = mixture(r, int(r.choice([1, 4])), d, means=means)
                t0 = time.perf_counter()
                allowed = set(r.choice(sorted(ever), 300).tolist()) if r.random() < 0.2 \
                    else None
                res = idx.search(q, 5 if allowed else 10, allowed=allowed)
                search_calls.append((t0, time.perf_counter()))
                returned.update(s for row in res.ids for s in row)
                if allowed is not None:
                    assert all(set(row) <= allowed for row in res.ids)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer():
        r = np.random.default_rng(99)
        k = 0
        try:
            while time.perf_counter() < stop:
                new = [f"n{k + i}" for i in range(20)]
                k += 20
                ever.update(new)  # before add: a search may return them once add starts
                v, _ = mixture(r, 20, d, means=means)
                t0 = time.perf_counter()
                idx.add(new, v)
                add_calls.append((t0, time.perf_counter()))
                idx.delete(r.choice(idx.ids(), 20, replace=False).tolist())
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert not lock.violations, "a write ran together with another hold"
    assert returned <= ever
    assert idx.rebuilds >= 1  # rebuilds ran under concurrent searches too
    reads = sorted((a, b) for k, a, b in lock.holds if k == "read")
    writes = [(a, b) for k, a, b in lock.holds if k == "write"]
    assert len(writes) > 20 and len(reads) > 50
    # writes exclusive: no write hold overlaps any other hold
    for a, b in writes:
        assert not any(c < b and a < e for k, c, e in lock.holds if (c, e) != (a, b))
    # reads concurrent: some read holds overlap one another
    assert any(reads[i + 1][0] < reads[i][1] for i in range(len(reads) - 1))
    # and calls interleave: a search started before an add finished and ended after it started
    assert any(s0 < a1 and s1 > a0 for s0, s1 in search_calls for a0, a1 in add_calls)


def test_lock_prefers_waiting_writer():
    lock = ReadWriteLock()
    events = []
    lock.acquire_read()
    released = False
    try:
        w = threading.Thread(target=lambda: (lock.acquire_write(), events.append("write"),
                                             lock.release_write()), daemon=True)
        w.start()
        deadline = time.time() + 5
        while not lock._writers_waiting and time.time() < deadline:
            time.sleep(0.001)
        r = threading.Thread(target=lambda: (lock.acquire_read(), events.append("read"),
                                             lock.release_read()), daemon=True)
        r.start()
        time.sleep(0.05)
        assert events == []  # the new reader waits behind the waiting writer
        lock.release_read()
        released = True
        w.join(5)
        r.join(5)
        assert events == ["write", "read"]
    finally:
        if not released:
            lock.release_read()


# ----------------------------------------------------------------------------- errors

def test_search_errors():
    rng = np.random.default_rng(13)
    empty = HNSWIndex(8)
    with pytest.raises(ValueError, match="only 0 items"):
        empty.search(np.ones(8), 1)
    idx, ids, x = build(rng, 30, 8)
    with pytest.raises(ValueError, match="only 30 items"):
        idx.search(x[0], 31)
    check_result(idx.search(x[:2], 30), 2, 30, 8)  # all of them is fine
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            idx.search(x[0], bad)
    with pytest.raises(ValueError, match=r"vectors.*dimension 9.*dimension 8"):
        idx.search(np.ones(9), 1)
    with pytest.raises(ValueError, match="NaN"):
        idx.search(np.full(8, np.nan), 1)
    with pytest.raises(ValueError, match="zeros"):
        idx.search(np.zeros(8), 1)
    with pytest.raises(TypeError, match="vectors"):
        idx.search(np.ones(8, dtype=np.int64), 1)


def test_add_errors():
    idx = HNSWIndex(4)
    v = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"vectors.*dimension 5.*dimension 4"):
        idx.add(["a", "b"], np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        idx.add(["a", "b"], np.array([[1, 2, 3, np.inf], [1, 1, 1, 1]]))
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        idx.add(["a", 2], v)
    with pytest.raises(TypeError, match="ids"):
        idx.add(b"ab", v)
    with pytest.raises(ValueError, match="non-empty"):
        idx.add(["a", ""], v)
    with pytest.raises(ValueError, match="unique"):
        idx.add(["a", "a"], v)
    with pytest.raises(ValueError, match="3 ids"):
        idx.add(["a", "b", "c"], v)
    with pytest.raises(ValueError, match="empty"):
        idx.add([], v)
    with pytest.raises(ValueError, match="zeros"):
        idx.add(["a", "b"], np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.float32))
    assert idx.count == 0 and idx.deleted_count == 0  # nothing half-added
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        idx.delete([1])
    with pytest.raises(KeyError, match="'zz'"):
        idx.get_vectors(["zz"])
    HNSWIndex(4, space="l2").add(["z"], np.zeros(4))  # zero vectors are fine outside cosine


def test_constructor_errors():
    with pytest.raises(ValueError, match="space"):
        HNSWIndex(4, space="hamming")
    with pytest.raises(ValueError, match="dim"):
        HNSWIndex(0)
    with pytest.raises(TypeError, match="model_id"):
        HNSWIndex(4, model_id=3)
    with pytest.raises(ValueError, match="rebuild_ratio"):
        HNSWIndex(4, rebuild_ratio=0)
    with pytest.raises(ValueError, match="num_threads"):
        HNSWIndex(4, num_threads=0)
    with pytest.raises(ValueError, match="space"):
        HNSWIndex.load("whatever", space="dot")
