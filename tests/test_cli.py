"""The `rerank` command line: status with and without a store."""
import json

import numpy as np
from click.testing import CliRunner

from memory_adapter import UnifiedMemoryService
from rerank.cli import main


def test_status_without_a_database(tmp_path):
    out = CliRunner().invoke(main, ["status", "--json", "--db", str(tmp_path / "none.db")])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert {"backend", "compiled", "reason", "threads"} <= set(info) and "store" not in info


def test_status_reports_the_store(tmp_path):
    db = tmp_path / "m.db"
    with UnifiedMemoryService.open(db, dim=8, model_id="unit-test") as mem:
        mem.store([{"id": str(i), "vector": np.full(8, i + 1, np.float32)} for i in range(5)])
    out = CliRunner().invoke(main, ["status", "--json", "--db", str(db)])
    store = json.loads(out.output)["store"]
    assert store["documents"] == 5 and store["model_id"] == "unit-test" and store["dim"] == 8
    assert store["index_bytes"] > 0
    table = CliRunner().invoke(main, ["status", "--db", str(db)])
    assert "store.documents" in table.output


def test_status_env_database(tmp_path, monkeypatch):
    db = tmp_path / "env.db"
    with UnifiedMemoryService.open(db, dim=4, model_id="m") as mem:
        mem.store([{"id": "a", "vector": np.ones(4, np.float32)}])
    monkeypatch.setenv("RERANK_DB", str(db))
    info = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert info["store"]["documents"] == 1


def test_status_refuses_a_foreign_file(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    out = CliRunner().invoke(main, ["status", "--db", str(bad)])
    assert out.exit_code != 0 and "not a readable rerank store" in out.output


def test_status_reports_token_storage_per_document(tmp_path):
    db = tmp_path / "tok.db"
    rng = np.random.default_rng(0)
    with UnifiedMemoryService.open(db, dim=8, model_id="unit-test") as mem:
        mem.store([{"id": str(i), "vector": rng.standard_normal(8).astype(np.float32),
                    "tokens": rng.standard_normal((10, 8)).astype(np.float32)} for i in range(3)])
    store = json.loads(CliRunner().invoke(main, ["status", "--json", "--db", str(db)]).output)[
        "store"]
    assert store["token_dtype"] == "int8" and store["documents_with_tokens"] == 3
    assert store["tokens_per_document"] == 10
    assert store["token_bytes_per_document"] == 10 * (8 + 4)      # int8 codes + a float32 scale
    assert store["vector_bytes_per_document"] == 8 * 4
