"""Where the memory database lives: ``--db`` / ``RERANK_DB`` / a per-user data directory.

A file path selects SQLite (the embedded default, with its HNSW index file beside it); a
``postgresql://`` or ``postgres://`` URL selects PostgreSQL, which arrives with the scale-out
backend.
"""
from __future__ import annotations

import os

__all__ = ["resolve_db", "index_path_for", "is_postgres_url", "default_db_path", "ENV_VAR"]

#: The environment variable naming the database when ``--db`` is not given.
ENV_VAR = "RERANK_DB"

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """Whether ``db`` is a PostgreSQL connection URL rather than a file path."""
    return db.strip().lower().startswith(_PG_SCHEMES)


def default_db_path() -> str:
    """``$XDG_DATA_HOME/rerank/memory.db``, or ``~/.local/share/rerank/memory.db``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "rerank", "memory.db")


def resolve_db(db: str | os.PathLike | None = None) -> str:
    """The database to use: ``db`` when given, else ``$RERANK_DB``, else :func:`default_db_path`.

    A file path is returned with ``~`` expanded (``":memory:"`` is kept as is: an in-memory
    store). A PostgreSQL URL raises ``ValueError``: PostgreSQL support arrives with the scale-out
    backend; use a file path (SQLite) for now.
    """
    source = "db"
    if db is None:
        db, source = os.environ.get(ENV_VAR) or None, ENV_VAR
    if db is None:
        return default_db_path()
    if isinstance(db, os.PathLike):
        db = os.fspath(db)
    if not isinstance(db, str):
        raise TypeError(f"db must be a path or a postgresql:// URL; got {type(db).__name__}")
    if not db.strip():
        raise ValueError(f"{source} must name a database file or a postgresql:// URL; got {db!r}")
    if is_postgres_url(db):
        scheme = db.split("://", 1)[0]
        raise ValueError(f"{source} is a PostgreSQL URL ({scheme}://…): PostgreSQL support "
                         "arrives with the scale-out backend and is not available yet; use a "
                         "file path (SQLite, the embedded default) for now")
    if db == ":memory:":
        return db
    return os.path.expanduser(db)


def index_path_for(db_path: str) -> str | None:
    """The HNSW index file beside a SQLite database: ``db_path + ".hnsw"`` (``None`` for an
    in-memory database, whose index is not persisted)."""
    if db_path == ":memory:":
        return None
    return os.fspath(db_path) + ".hnsw"
