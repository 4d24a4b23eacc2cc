"""Crash safety: a child process is SIGKILLed in the middle of a write; a fresh service over the
same files must find every committed document, none of an uncommitted batch, and an index that is
either the old or the new file (never torn) and agrees with the store once synced.

The child (``sys.executable -c CHILD``) commits batch 1 (200 documents), prints ``COMMITTED``,
then starts batch 2 with a hook that prints where it is (``IN_TRANSACTION <rows written>``,
``IN_SAVE``, ``IN_INDEX_ADD``) and blocks there until the parent kills it.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from memory_adapter import UnifiedMemoryService
from rerank.retrieval import HNSWIndex

from child_script import ChildScript

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

D = 16
MODEL = "crash-test-model"
N1 = N2 = 200
N_UPDATED = 10   # batch 2 also changes the vectors of batch-1 documents b1-0 … b1-9

CHILD = r"""
import itertools, os, sys, time
import numpy as np
from memory_adapter import Record, SQLiteStore, UnifiedMemoryService
from rerank.retrieval import HNSWIndex

db, scenario, point = sys.argv[1], sys.argv[2], int(sys.argv[3])
D, MODEL, N1, N2, N_UPDATED = 16, "crash-test-model", 200, 200, 10

def vecs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)

def block(message):
    print(message, flush=True)
    time.sleep(600)
    os._exit(3)   # never reached: the parent kills us

x1, x2 = vecs(N1, 1), vecs(N2 + N_UPDATED, 2)
svc = UnifiedMemoryService.open(db, dim=D, model_id=MODEL, autosave_seconds=0)
svc.store([Record(f"b1-{i}", x1[i], text=f"one {i}", metadata={"batch": 1}) for i in range(N1)])
print("COMMITTED", flush=True)

batch2 = [Record(f"b2-{i}", x2[i], text=f"two {i}", metadata={"batch": 2}) for i in range(N2)]
batch2 += [Record(f"b1-{i}", x2[N2 + i], text=f"one {i} changed") for i in range(N_UPDATED)]

if scenario == "rows":            # inside the store's transaction, `point` rows written
    write_rows = SQLiteStore._write_rows
    def slow_write_rows(self, conn, rows):
        def rows_then_block():
            for i, row in enumerate(rows):
                if i == point:
                    assert conn.in_transaction
                    n = conn.execute("SELECT count(*) FROM documents WHERE id LIKE 'b2-%'"
                                     ).fetchone()[0]
                    block(f"IN_TRANSACTION {n}")
                yield row
        write_rows(self, conn, rows_then_block())
    SQLiteStore._write_rows = slow_write_rows
elif scenario == "index-add":     # the store committed batch 2; the index has not seen it
    def stuck_add(self, ids, vectors):
        block("IN_INDEX_ADD")
    HNSWIndex.add = stuck_add
elif scenario == "rename":        # the new index file is written in full, not yet renamed
    real_replace = os.replace
    def stuck_replace(src, dst):
        if os.path.abspath(dst) == os.path.abspath(db + ".hnsw"):
            block(f"IN_SAVE {os.path.getsize(src)}")
        return real_replace(src, dst)
    os.replace = stuck_replace
elif scenario == "loop":          # write and save for ever; killed at a random moment
    print("LOOPING", flush=True)
    for j in itertools.count():
        svc.store([Record(f"loop-{j}", vecs(1, 1000 + j)[0])])
svc.store(batch2)
print("FINISHED", flush=True)
"""


def vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


X1, X2 = vecs(N1, 1), vecs(N2 + N_UPDATED, 2)


class Child(ChildScript):
    """The CHILD script for ``scenario``, killed by SIGKILL."""

    def __init__(self, db: str, scenario: str, point: int = 0):
        super().__init__(CHILD, db, scenario, point)

    def kill(self) -> None:
        assert super().kill() == -signal.SIGKILL


def committed_count(db: str, pattern: str) -> int:
    """What another connection sees (only committed rows)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM documents WHERE id LIKE ?",
                            (pattern,)).fetchone()[0]


def check_recovered(db: str, expected: dict[str, np.ndarray]):
    """Reopen: the store holds exactly ``expected``, each found by its own vector, and the index
    agrees with the store. Returns the service's status."""
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL) as svc:
        store = svc.document_store
        assert set(store.ids()) == set(expected)
        ids = list(expected)
        np.testing.assert_array_equal(store.vectors(ids), np.stack([expected[i] for i in ids]))
        assert set(svc.index.ids()) == set(ids) and svc.index.count == len(ids)
        for i in ids:
            assert svc.search(expected[i], 1)[0]["corpus_id"] == i, i
        assert svc.sync_index(verify=True)["updated"] == 0
        return svc.status()


def batch1() -> dict[str, np.ndarray]:
    return {f"b1-{i}": X1[i] for i in range(N1)}


def batch1_and_2() -> dict[str, np.ndarray]:
    out = batch1()
    out.update({f"b2-{i}": X2[i] for i in range(N2)})
    out.update({f"b1-{i}": X2[N2 + i] for i in range(N_UPDATED)})
    return out


@pytest.mark.parametrize("rows", [1, 150])
def test_kill_inside_the_store_transaction_loses_only_the_open_batch(tmp_path, rows):
    db = str(tmp_path / "memory.db")
    child = Child(db, "rows", rows)
    try:
        child.expect("COMMITTED")
        assert child.expect("IN_TRANSACTION") == f"IN_TRANSACTION {rows}"
        # the rows are written inside the child's open transaction, invisible to everyone else
        assert committed_count(db, "b1-%") == N1 and committed_count(db, "b2-%") == 0
    finally:
        child.kill()
    status = check_recovered(db, batch1())
    assert status["index_repaired"] is None   # the index saved after batch 1 is still right
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL) as svc:
        assert svc.get("b1-0").text == "one 0"   # the open batch's update is gone too
        assert svc.document_store.resolve_filter({"batch": 2}) == set()


def test_kill_after_the_store_commit_before_the_index_update(tmp_path):
    db = str(tmp_path / "memory.db")
    child = Child(db, "index-add")
    try:
        child.expect("COMMITTED")
        child.expect("IN_INDEX_ADD")
        assert committed_count(db, "b2-%") == N2
    finally:
        child.kill()
    assert HNSWIndex.load(db + ".hnsw").count == N1   # the index saved after batch 1
    status = check_recovered(db, batch1_and_2())
    assert "stale" in status["index_repaired"] and "added 200" in status["index_repaired"]
    assert "updated 10" in status["index_repaired"]


def test_kill_during_the_index_save_leaves_the_old_file(tmp_path):
    db = str(tmp_path / "memory.db")
    child = Child(db, "rename")
    try:
        child.expect("COMMITTED")
        size = int(child.expect("IN_SAVE").split()[1])
    finally:
        child.kill()
    old = HNSWIndex.load(db + ".hnsw", dim=D, model_id=MODEL)   # not torn: the old file
    assert old.count == N1
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".memory.db.hnsw.")]
    assert any(os.path.getsize(tmp_path / f) == size for f in leftovers)   # the unrenamed new one
    status = check_recovered(db, batch1_and_2())
    assert "stale" in status["index_repaired"]
    for f in leftovers:   # once old enough, the next open removes what the killed save left
        os.utime(tmp_path / f, (time.time() - 3600,) * 2)
    with UnifiedMemoryService.open(db, dim=D, model_id=MODEL):
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".memory.db.hnsw.")]


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.0])
def test_kill_at_a_random_moment_of_writes_and_saves(tmp_path, delay):
    db = str(tmp_path / "memory.db")
    child = Child(db, "loop")
    try:
        child.expect("COMMITTED")
        child.expect("LOOPING")
        time.sleep(delay)
    finally:
        child.kill()
    saved = HNSWIndex.load(db + ".hnsw", dim=D, model_id=MODEL)   # never a torn file
    with sqlite3.connect(db) as conn:
        loops = [r[0] for r in conn.execute("SELECT id FROM documents WHERE id LIKE 'loop-%'")]
    assert N1 <= saved.count <= N1 + len(loops)
    expected = batch1()
    expected.update({i: vecs(1, 1000 + int(i.split("-")[1]))[0] for i in loops})
    # committed loop documents are numbered without gaps: each write committed before the next
    assert sorted(int(i.split("-")[1]) for i in loops) == list(range(len(loops)))
    check_recovered(db, expected)
