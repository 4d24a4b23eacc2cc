"""rerank.cache: whole-input xxh3-128 keys, LRU by bytes, counters, read-only values, threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from rerank.cache import AttentionCache, UnhashableParameter, cache_key


def _inputs(rng, n=64, d=16):
    return tuple(rng.standard_normal((n, d)).astype(np.float32) for _ in range(3))


def _flip_byte(arr: np.ndarray, index: int) -> np.ndarray:
    out = arr.copy()
    raw = out.view(np.uint8).reshape(-1)
    raw[index] ^= 0x01
    return out


def test_equal_inputs_give_equal_keys(rng):
    q, k, v = _inputs(rng)
    a = cache_key((q, k, v), mechanism="flash-attention-v2", params={"causal": False})
    b = cache_key((q.copy(), k.copy(), v.copy()), mechanism="flash-attention-v2",
                  params={"causal": False})
    assert a == b and isinstance(a, bytes) and len(a) == 16


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_any_changed_byte_changes_the_key(rng, which, where):
    arrays = list(_inputs(rng))
    base = cache_key(arrays, mechanism="m")
    nbytes = arrays[which].nbytes
    index = {"first": 0, "middle": nbytes // 2, "last": nbytes - 1}[where]
    arrays[which] = _flip_byte(arrays[which], index)
    assert cache_key(arrays, mechanism="m") != base


def test_last_byte_of_a_large_input_counts(rng):
    """Never a prefix: a 4 MiB array differing only in its very last byte gets another key."""
    big = rng.standard_normal((1024, 1024)).astype(np.float32)
    assert cache_key((big,), mechanism="m") != cache_key((_flip_byte(big, big.nbytes - 1),),
                                                          mechanism="m")


def test_shape_dtype_mechanism_and_params_are_part_of_the_key(rng):
    q, k, v = _inputs(rng)
    base = cache_key((q, k, v), mechanism="m", params={"causal": False, "scale": 0.5})
    others = [
        cache_key((q.reshape(32, 32), k, v), mechanism="m", params={"causal": False, "scale": 0.5}),
        cache_key((q.view(np.int32), k, v), mechanism="m", params={"causal": False, "scale": 0.5}),
        cache_key((q, k, v), mechanism="n", params={"causal": False, "scale": 0.5}),
        cache_key((q, k, v), mechanism="m", params={"causal": True, "scale": 0.5}),
        cache_key((q, k, v), mechanism="m", params={"causal": False, "scale": 0.25}),
        cache_key((q, k, v), mechanism="m", params={"causal": False}),
        # the same bytes split differently between the arrays
        cache_key((np.concatenate([q, k[:1]]), k[1:], v), mechanism="m",
                  params={"causal": False, "scale": 0.5}),
    ]
    assert len({base, *others}) == len(others) + 1


def test_array_parameters_are_hashed_whole(rng):
    q, k, v = _inputs(rng)
    mask = rng.random((64, 64)) > 0.5
    base = cache_key((q, k, v), mechanism="m", params={"mask": mask})
    assert cache_key((q, k, v), mechanism="m", params={"mask": mask.copy()}) == base
    changed = mask.copy()
    changed[-1, -1] = not changed[-1, -1]
    assert cache_key((q, k, v), mechanism="m", params={"mask": changed}) != base
    # non-contiguous arrays hash by value
    assert cache_key((q.T,), mechanism="m") == cache_key((np.ascontiguousarray(q.T),),
                                                         mechanism="m")


def test_unhashable_parameters_and_bad_arguments_raise():
    with pytest.raises(UnhashableParameter, match="object"):
        cache_key((np.zeros(2, np.float32),), mechanism="m", params={"w": object()})
    with pytest.raises(TypeError, match="numpy array"):
        cache_key(([1.0, 2.0],), mechanism="m")
    with pytest.raises(TypeError, match="mechanism"):
        cache_key((np.zeros(2),), mechanism=3)
    with pytest.raises(ValueError, match="max_bytes"):
        AttentionCache(-1)
    with pytest.raises(TypeError, match="bytes"):
        AttentionCache().put("key", np.zeros(2))


def test_hits_misses_and_read_only_values():
    cache = AttentionCache(10_000)
    value = np.arange(10, dtype=np.float32)
    assert cache.get(b"a" * 16) is None
    assert cache.put(b"a" * 16, value)
    value[0] = 99.0                       # the cache kept a copy
    got = cache.get(b"a" * 16)
    assert got[0] == 0.0 and not got.flags.writeable
    with pytest.raises(ValueError):
        got[0] = 5.0
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    assert cache.stats()["hit_rate"] == 0.5


def test_lru_eviction_by_bytes():
    cache = AttentionCache(3 * 400)                   # three 400-byte entries fit
    for name in (b"a", b"b", b"c"):
        cache.put(name, np.zeros(100, np.float32))    # 400 bytes each
    assert len(cache) == 3 and cache.nbytes == 1200
    cache.get(b"a")                                   # a becomes most recently used
    cache.put(b"d", np.zeros(100, np.float32))        # evicts b, the least recently used
    assert b"b" not in cache and all(x in cache for x in (b"a", b"c", b"d"))
    cache.put(b"e", np.zeros(200, np.float32))        # 800 bytes: evicts c and a
    assert [x in cache for x in (b"a", b"c", b"d", b"e")] == [False, False, True, True]
    assert cache.nbytes == 1200 and cache.evictions == 3
    assert not cache.put(b"f", np.zeros(400, np.float32))   # larger than the whole budget
    assert b"f" not in cache and cache.nbytes == 1200
    cache.put(b"d", np.zeros(50, np.float32))         # replacing an entry re-counts its bytes
    assert cache.nbytes == 200 + 800
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_thread_safe_under_concurrent_puts_and_gets():
    cache = AttentionCache(50 * 400)
    errors = []

    def work(t):
        try:
            for i in range(300):
                key = bytes([t, i % 80]) * 8
                if cache.get(key) is None:
                    cache.put(key, np.full(100, t * 1000 + i % 80, np.float32))
                got = cache.get(key)
                if got is not None and got[0] != t * 1000 + i % 80:
                    errors.append((t, i, got[0]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    s = cache.stats()
    assert s["bytes"] == 400 * s["entries"] <= cache.max_bytes
    assert s["hits"] + s["misses"] == 6 * 300 * 2     # two lookups per iteration
