"""`rerank serve` as a subprocess in its own process group: SIGKILL it while a client writes
documents one request at a time, restart it on the same --db: every acknowledged document is
there (a write is answered only after its transaction committed)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sentence_transformers")

REPO = Path(__file__).resolve().parent.parent


class ServeProcess:
    """`rerank serve` in its own process group, its stderr in a file; killed on exit."""

    def __init__(self, db: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if k != "RERANK_API_KEY"}
        env["PYTHONUNBUFFERED"] = "1"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rerank", "serve", "--db", str(db), "--port", "0"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(log, "w"), start_new_session=True)

    def url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.log.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"rerank serve exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"rerank serve did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def test_acknowledged_writes_survive_sigkill(tmp_path):
    db = tmp_path / "crash.db"
    server = ServeProcess(db, tmp_path / "first.log")
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        url = server.url()

        def write():
            with httpx.Client(base_url=url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    doc = {"id": f"doc-{i}", "text": f"crash test document number {i}"}
                    try:
                        response = client.post("/v1/documents", json={"documents": [doc]})
                    except httpx.HTTPError:
                        return                      # the server died mid-request
                    if response.status_code == 200:
                        acknowledged.append(doc["id"])
                    i += 1

        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 20 and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()                               # mid-stream: a request is in flight
        stop.set()
        writer.join(60)
    finally:
        stop.set()
        server.kill()
    assert len(acknowledged) >= 20
    restarted = ServeProcess(db, tmp_path / "second.log")
    try:
        url = restarted.url()
        with httpx.Client(base_url=url, timeout=30) as client:
            for doc_id in acknowledged:
                response = client.get(f"/v1/documents/{doc_id}")
                assert response.status_code == 200, doc_id
                assert response.json()["text"].endswith(doc_id.split("-")[1])
            hit = client.post("/v1/search", json={"query": acknowledged[-1].replace("-", " "),
                                                  "k": 1}).json()
            assert hit["results"]                   # the index caught up with the store
    finally:
        restarted.kill()
