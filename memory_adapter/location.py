"""Where the memory database lives: ``--db`` / ``RERANK_DB`` / a per-user data directory.

A file path selects SQLite (the embedded default, with its HNSW index file beside it); a
``postgresql://`` or ``postgres://`` URL selects PostgreSQL + pgvector (the scale-out backend:
documents, token vectors and the HNSW index live in the database). :func:`describe` and
:func:`open_store` work on either; :func:`redact_url` is how a URL is shown (no password).
"""
from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["resolve_db", "index_path_for", "is_postgres_url", "default_db_path", "redact_url",
           "describe", "open_store", "ENV_VAR"]

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
    store); a ``postgresql://`` / ``postgres://`` URL is returned as given (surrounding blanks
    removed; it is checked when connecting).
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
        return db.strip()
    if db == ":memory:":
        return db
    return os.path.expanduser(db)


def index_path_for(db_path: str) -> str | None:
    """The HNSW index file beside a SQLite database: ``db_path + ".hnsw"`` (``None`` for an
    in-memory database, whose index is not persisted)."""
    if db_path == ":memory:":
        return None
    return os.fspath(db_path) + ".hnsw"


_SECRET_PARAMS = ("password", "sslpassword")


def redact_url(db: str) -> str:
    """``db`` as it may be shown: a URL's password (in the user part or a ``password=`` query
    parameter) replaced by ``***``; a file path unchanged."""
    if not isinstance(db, str) or not is_postgres_url(db):
        return db
    try:
        parts = urlsplit(db.strip())
    except ValueError:
        return db.split("://", 1)[0] + "://***"   # unparseable: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k in _SECRET_PARAMS else v) for k, v in pairs],
                              safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def describe(db: str) -> dict | None:
    """What the store at ``db`` (a resolved path or URL) holds — documents, model, dim, schema,
    bytes — read-only, without knowing its model; ``None`` when there is no store there."""
    if is_postgres_url(db):
        from .postgres_store import describe as describe_postgres

        return describe_postgres(db)
    if db == ":memory:":
        return None
    from .sqlite_store import describe as describe_sqlite

    return describe_sqlite(db)


def open_store(db: str, *, model_id: str, dim: int, **options):
    """The document store at ``db`` (a resolved path or URL): a ``SQLiteStore`` for a path, a
    ``PostgresStore`` for a URL (``options`` go to its constructor)."""
    if is_postgres_url(db):
        from .postgres_store import PostgresStore

        return PostgresStore(db, model_id=model_id, dim=dim, **options)
    from .sqlite_store import SQLiteStore

    return SQLiteStore(db, model_id=model_id, dim=dim, **options)
