"""An attention pattern cache: LRU with a byte budget, keyed by a 128-bit xxh3 hash.

The key (:func:`cache_key`) is xxh3-128 over the WHOLE bytes of every input array, each array's
shape and dtype, the mechanism name and the parameters (arrays among them hashed whole, too) —
never a prefix or a sample of the data, so a change in any byte (the last one included) gives
another key. Values are stored as read-only copies: ``get`` returns that read-only array (no copy),
so a caller cannot corrupt what is cached. Thread-safe: one lock guards the table and counters;
hashing runs outside it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import xxhash

#: Default byte budget of an AttentionCache (256 MiB).
DEFAULT_MAX_BYTES = 256 * 2 ** 20


class UnhashableParameter(TypeError):
    """A parameter the key cannot describe exactly (an arbitrary object): do not cache the call."""


#: Values whose repr describes them exactly (fast path of cache_key).
_PLAIN = frozenset((type(None), bool, int, float, str))
_SCALARS = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)


def _describe(value, arrays: list, where: str):
    """A repr-able stand-in for ``value``: scalars as they are (their repr is exact), arrays as
    ``("<array>", index)`` with the array appended to ``arrays`` (hashed whole afterwards)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnhashableParameter(f"{where}: object arrays cannot be part of a cache key")
        arrays.append(value)
        return ("<array>", len(arrays) - 1)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__,
                tuple(_describe(x, arrays, f"{where}[{i}]") for i, x in enumerate(value)))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((str(k), _describe(x, arrays, f"{where}[{k!r}]"))
                                      for k, x in value.items()), key=lambda kv: kv[0])))
    raise UnhashableParameter(f"{where}: a {type(value).__name__} cannot be part of a cache key "
                              "(use numbers, strings, tuples, dicts or numpy arrays)")


def cache_key(arrays, *, mechanism: str, params: dict | None = None) -> bytes:
    """The 16-byte xxh3-128 digest of ``arrays`` (whole bytes, shapes, dtypes), ``mechanism`` and
    ``params``; raises :class:`UnhashableParameter` for a parameter it cannot describe exactly.

    Layout hashed: a text header (mechanism, the repr of the parameters with arrays replaced by
    their index, then dtype and shape of every array) followed by every array's bytes in order;
    the header fixes each array's length, so no two inputs share a byte stream."""
    if not isinstance(mechanism, str):
        raise TypeError(f"mechanism must be a string; got {type(mechanism).__name__}")
    data = list(arrays)
    for i, arr in enumerate(data):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"arrays[{i}] must be a numpy array; got {type(arr).__name__}")
        if arr.dtype.hasobject:
            raise UnhashableParameter(f"arrays[{i}]: object arrays cannot be hashed")
    if not params:
        described = None
    elif all(type(x) in _PLAIN for x in params.values()):     # the common case, fast
        described = ("dict", tuple(sorted(params.items())))
    else:
        described = _describe(params, data, "params")
    header = [repr(mechanism), repr(described)]
    for arr in data:
        header.append(arr.dtype.str)
        header.append(str(arr.shape))
    h = xxhash.xxh3_128("\x00".join(header).encode())
    for arr in data:
        if arr.size:
            h.update(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
    return h.digest()


class AttentionCache:
    """LRU of computed arrays under a byte budget (``max_bytes``, counted as the stored arrays'
    ``nbytes``); ``get``/``put`` by :func:`cache_key` keys, ``hits``/``misses``/``evictions``
    counters; thread-safe. Values are kept and returned read-only."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer; got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    key = staticmethod(cache_key)

    def get(self, key: bytes) -> np.ndarray | None:
        """The cached read-only array for ``key`` (marked most recently used), or None (a miss)."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value) -> bool:
        """Store a read-only copy of ``value``; evicts least recently used entries until it fits.
        Returns False (and stores nothing) when ``value`` alone exceeds the budget."""
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes (from cache_key); got {type(key).__name__}")
        arr = np.array(value, copy=True, order="C")
        if arr.dtype.hasobject:
            raise TypeError("object arrays cannot be cached")
        arr.setflags(write=False)
        size = arr.nbytes
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._items and self._bytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._items[key] = arr
            self._bytes += size
        return True

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays now."""
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> dict:
        """``{"entries", "bytes", "max_bytes", "hits", "misses", "evictions", "hit_rate"}``."""
        with self._lock:
            lookups = self.hits + self.misses
            return {"entries": len(self._items), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions,
                    "hit_rate": self.hits / lookups if lookups else 0.0}

    def __repr__(self) -> str:
        s = self.stats()
        return (f"AttentionCache({s['entries']} entries, {s['bytes']}/{s['max_bytes']} bytes, "
                f"{s['hits']} hits, {s['misses']} misses)")
