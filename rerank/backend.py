"""Which backend runs the kernels (compiled | numpy), how many threads they use, and why.

``RERANK_BACKEND`` = auto (default: compiled when the extension imports) | compiled | numpy picks the
backend at import; :func:`set_backend` and :func:`use_backend` change it at run time. The extension
(and the scipy BLAS it links) is imported on first use, not by ``import rerank`` — except with
``RERANK_BACKEND=compiled``, which checks at import that it loads.
``RERANK_NUM_THREADS`` or :func:`set_num_threads` sets the kernels' thread count.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading

BACKENDS = ("auto", "compiled", "numpy")

_lock = threading.RLock()
_NOT_LOADED = object()
_kernels = _NOT_LOADED    # the imported extension module, None when it cannot import

_import_error = None      # why it did not import
_requested = None         # what the user asked for: auto | compiled | numpy
_num_threads = None


def _load_extension():
    global _kernels, _import_error
    try:
        _kernels = importlib.import_module("rerank._kernels")
    except ImportError as exc:  # not built, or hidden on purpose
        _kernels, _import_error = None, f"the compiled extension rerank._kernels did not import: {exc}"


def extension():
    """The compiled extension module (imported on the first call), or None when it cannot import."""
    if _kernels is _NOT_LOADED:
        with _lock:
            if _kernels is _NOT_LOADED:
                _load_extension()
    return _kernels


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select ``auto``, ``compiled`` (raises if the extension is missing) or ``numpy``."""
    global _requested
    _check_name(name)
    if name == "compiled" and extension() is None:
        raise RuntimeError(f"backend 'compiled' requested but {_import_error}")
    with _lock:
        _requested = name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed code on the given backend, then restore the previous one."""
    previous = _requested
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def requested() -> str:
    return _requested


def active() -> str:
    """The backend kernels run on now: 'compiled' or 'numpy'."""
    return "compiled" if (_requested != "numpy" and extension() is not None) else "numpy"


def compiled_kernels():
    """The extension module when the compiled backend is active, else None."""
    return None if _requested == "numpy" else extension()


def reason() -> str | None:
    """Why the compiled backend is not in use (None when it is)."""
    if extension() is None:
        return _import_error
    if _requested == "numpy":
        return "the numpy backend was requested (RERANK_BACKEND=numpy or set_backend('numpy'))"
    return None


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Threads the compiled kernels use (default: ``RERANK_NUM_THREADS`` or the usable CPUs)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer; got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads


class _BlasOneThread:
    """Fallback when the BLAS has no per-thread setting: hold it at one thread, process-wide,
    while a kernel runs. Re-entrant across Python threads: the first caller in saves and lowers
    the limit, the last one out restores it."""

    def __init__(self):
        self._users = 0
        self._saved = []
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            if self._users == 0:
                self._saved = [(c, c.get_num_threads()) for c in _kernel_blas()]
                for c, _ in self._saved:
                    c.set_num_threads(1)
            self._users += 1

    def __exit__(self, *exc):
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for c, n in self._saved:
                    c.set_num_threads(n)


_blas_controllers = None
_blas_setter = None


def _kernel_blas():
    """threadpoolctl controllers of the BLAS the kernels call (scipy's), or every BLAS."""
    global _blas_controllers
    if _blas_controllers is None:
        import scipy
        from threadpoolctl import ThreadpoolController

        libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        scipy_dir = os.path.dirname(os.path.dirname(scipy.__file__))
        own = [c for c in libs if c.filepath.startswith(os.path.join(scipy_dir, "scipy"))]
        _blas_controllers = own or libs
    return _blas_controllers


def blas_thread_setter() -> int:
    """Address of the kernels' BLAS ``openblas_set_num_threads_local`` (0 when it has none)."""
    global _blas_setter
    if _blas_setter is None:
        import ctypes

        _blas_setter = 0
        libs = _kernel_blas()
        if len(libs) == 1 and libs[0].internal_api == "openblas":
            lib = ctypes.CDLL(libs[0].filepath)
            for name in ("openblas_set_num_threads_local",
                         f"{libs[0].prefix}_set_num_threads_local"):
                fn = getattr(lib, name, None)
                if fn is not None:
                    _blas_setter = ctypes.cast(fn, ctypes.c_void_p).value or 0
                    break
    return _blas_setter


blas_one_thread = _BlasOneThread()

#: OpenBLAS starts its own threads for products above m·n·k = 65536·4 (its default threshold).
BLAS_THREADING_MNK = 65536 * 4


def call_holding_blas(rows: int, cols: int, inner: int, kernel, *args):
    """Run ``kernel(*args, blas_setter)`` with its BLAS at one thread in every kernel thread.

    Measured here: OpenBLAS threads started inside our parallel regions, or fighting another
    process, made the tile products 5× slower. Products of at most SMALL_PRODUCT_ROWS rows or
    below OpenBLAS's threading threshold need nothing."""
    if rows <= extension().SMALL_PRODUCT_ROWS or rows * cols * inner <= BLAS_THREADING_MNK:
        return kernel(*args, 0)
    setter = blas_thread_setter()
    if setter:
        return kernel(*args, setter)
    with blas_one_thread:
        return kernel(*args, 0)


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                      "threading_layer", "filepath")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def status() -> dict:
    """What runs and why: backend, whether the extension is compiled and used, threads, build, BLAS."""
    kernels = extension()
    info = {
        "backend": active(),
        "requested": _requested,
        "compiled": active() == "compiled",
        "extension_built": kernels is not None,
        "reason": reason(),
        "threads": get_num_threads(),
        "openmp": None,
        "native": None,
    }
    if kernels is not None:
        build = kernels.build_info()
        info["openmp"] = build["openmp"]
        info["native"] = build["native"]
    info["blas"] = blas_info()
    if kernels is not None:
        info["blas_threads_in_kernels"] = (
            "1 per kernel thread (openblas_set_num_threads_local)" if blas_thread_setter()
            else "1 process-wide while a kernel runs (threadpoolctl)")
    return info


def _init_from_environment():
    global _requested, _num_threads
    name = os.environ.get("RERANK_BACKEND", "auto").strip().lower() or "auto"
    _check_name(name)
    _requested = name
    if name == "compiled" and extension() is None:
        raise ImportError(f"RERANK_BACKEND=compiled but {_import_error}")
    threads = os.environ.get("RERANK_NUM_THREADS")
    if threads:
        try:
            set_num_threads(int(threads))
        except ValueError:
            raise ValueError(f"RERANK_NUM_THREADS must be a positive integer; got {threads!r}") from None
    else:
        _num_threads = _default_threads()


_init_from_environment()
