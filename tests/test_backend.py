"""Backend selection (compiled | numpy), status reporting, thread count and thread safety.

Import-time behaviour (RERANK_BACKEND, RERANK_NUM_THREADS, a missing extension) is tested in
subprocesses so the test process keeps its own backend state.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

import rerank
from rerank import backend, cli, reference, registry, scoring

from conftest import COMPILED_AVAILABLE, assert_close, f32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDE_EXTENSION = "import sys; sys.modules['rerank._kernels'] = None\n"

needs_compiled = pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")

# Run in a subprocess: compares every public kernel with the reference and prints one JSON line.
CHECK_ANSWERS = textwrap.dedent("""
    import json
    import numpy as np
    import rerank
    from rerank import reference, scoring
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))
    q, k, v = f(2, 4, 70, 16), f(2, 2, 600, 16), f(2, 2, 600, 16)
    errors = {"attention": err(rerank.attention(q, k, v, causal=True),
                               reference.attention(q, k, v, causal=True))}
    mq, mc = f(24), f(30, 24)
    errors["memory"] = err(scoring.memory_attention(mq, mc, heads=3, alpha=0.5),
                           reference.memory_attention_scores(mq, mc, heads=3, alpha=0.5)[0])
    qt, tok, off = f(3, 16), f(12, 16), np.array([0, 1, 5, 12])
    got = scoring.late_interaction(qt, tok, off, tau=0.1, details=True)
    ref = reference.late_interaction_scores(qt, tok, off, tau=0.1)
    errors["late"] = max(err(a, b) for a, b in zip(got, ref))
    got = scoring.hierarchical(qt[0], tok, off, details=True)
    ref = reference.hierarchical_scores(qt[0], tok, off)[:3]
    errors["hierarchical"] = max(err(a, b) for a, b in zip(got, ref))
    status = rerank.status()
    try:
        rerank.set_backend("compiled")
        set_compiled = "ok"
    except Exception as exc:
        set_compiled = type(exc).__name__ + ": " + str(exc)
    print(json.dumps({"status": status, "errors": errors, "set_compiled": set_compiled,
                      "mechanism_backend": rerank.registry.get("flash-attention-v2").backend}))
""")


def run_python(code, env=None, args=()):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args] + (["-c", code] if code is not None else []),
                          env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def run_json(code, env=None):
    proc = run_python(code, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_numpy_backend():
    result = run_json(CHECK_ANSWERS, {"RERANK_BACKEND": "numpy"})
    status = result["status"]
    assert status["backend"] == "numpy"
    assert status["compiled"] is False
    assert status["requested"] == "numpy"
    assert "numpy" in status["reason"]
    assert status["extension_built"] is COMPILED_AVAILABLE
    for name, error in result["errors"].items():
        assert error <= 1e-5, (name, error)
    # after set_backend('compiled') the mechanism runs compiled again (if the extension exists)
    if COMPILED_AVAILABLE:
        assert result["set_compiled"] == "ok"
        assert result["mechanism_backend"] == "compiled"


def test_hidden_extension_falls_back_to_numpy():
    result = run_json(HIDE_EXTENSION + CHECK_ANSWERS)
    status = result["status"]
    assert status["backend"] == "numpy"
    assert status["compiled"] is False
    assert status["extension_built"] is False
    assert "did not import" in status["reason"]
    assert "rerank._kernels" in status["reason"]
    assert status["openmp"] is None and status["native"] is None
    assert status["threads"] >= 1
    for name, error in result["errors"].items():
        assert error <= 1e-5, (name, error)
    assert result["set_compiled"].startswith("RuntimeError")
    assert "did not import" in result["set_compiled"]
    assert result["mechanism_backend"] == "numpy"


def test_env_compiled_with_hidden_extension_raises_import_error():
    proc = run_python(HIDE_EXTENSION + "import rerank", {"RERANK_BACKEND": "compiled"})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "RERANK_BACKEND=compiled" in proc.stderr


@needs_compiled
@pytest.mark.parametrize("value", ["compiled", "auto", " Compiled ", ""])
def test_env_compiled_or_auto_uses_the_extension(value):
    status = run_json("import json, rerank; print(json.dumps(rerank.status()))",
                      {"RERANK_BACKEND": value})
    assert status["backend"] == "compiled"
    assert status["compiled"] is True
    assert status["reason"] is None
    assert isinstance(status["openmp"], bool) and isinstance(status["native"], bool)


@pytest.mark.parametrize("env", [{}, {"RERANK_BACKEND": "numpy"}], ids=["default", "numpy"])
def test_cli_status_json(env):
    proc = run_python(None, env, args=["-m", "rerank", "status", "--json"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("backend", "compiled", "reason", "threads"):
        assert key in info
    assert info["backend"] in ("compiled", "numpy")
    assert isinstance(info["compiled"], bool) and info["compiled"] == (info["backend"] == "compiled")
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    if env:
        assert info["backend"] == "numpy" and "numpy" in info["reason"]
    elif COMPILED_AVAILABLE:
        assert info["compiled"] is True and info["reason"] is None


def test_cli_status_in_process():
    runner = CliRunner()
    result = runner.invoke(cli.main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["backend"] == backend.active()
    assert info["threads"] == rerank.get_num_threads()
    table = runner.invoke(cli.main, ["status"])
    assert table.exit_code == 0, table.output
    assert "backend" in table.output and backend.active() in table.output
    with rerank.use_backend("numpy"):
        info = json.loads(runner.invoke(cli.main, ["status", "--json"]).output)
    assert info["backend"] == "numpy" and info["compiled"] is False


@pytest.mark.parametrize("threads", ["1", "3"])
def test_env_num_threads(threads):
    status = run_json("import json, rerank; print(json.dumps(rerank.status()))",
                      {"RERANK_NUM_THREADS": threads})
    assert status["threads"] == int(threads)


def test_default_threads_are_the_usable_cpus():
    status = run_json("import json, rerank; print(json.dumps(rerank.status()))")
    assert status["threads"] == len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------------------------
# in-process backend switching

def test_status_keys_and_types():
    info = rerank.status()
    for key in ("backend", "compiled", "reason", "threads", "openmp", "native", "blas"):
        assert key in info
    assert info["backend"] == backend.active()
    assert info["threads"] == rerank.get_num_threads()
    assert isinstance(info["blas"], list)
    json.dumps(info)                                   # serialisable as the CLI prints it


@needs_compiled
def test_use_backend_switches_and_restores():
    assert backend.active() == "compiled"
    with rerank.use_backend("numpy"):
        assert backend.active() == "numpy"
        assert backend.compiled_kernels() is None
        assert rerank.status()["compiled"] is False
        assert "numpy" in rerank.status()["reason"]
        assert registry.get("memory-attention").backend == "numpy"
        with rerank.use_backend("compiled"):
            assert backend.active() == "compiled"
        assert backend.active() == "numpy"
    assert backend.active() == "compiled"
    assert registry.get("memory-attention").backend == "compiled"
    with pytest.raises(KeyError):
        with rerank.use_backend("numpy"):
            raise KeyError("boom")
    assert backend.active() == "compiled"


@needs_compiled
def test_backends_differ_only_in_rounding(rng):
    """The switch really changes the code path: results agree to float32 rounding, not bit-wise."""
    q, k, v = f32(rng, 4, 300, 64), f32(rng, 4, 700, 64), f32(rng, 4, 700, 64)
    with rerank.use_backend("compiled"):
        fast = rerank.attention(q, k, v)
    with rerank.use_backend("numpy"):
        slow = rerank.attention(q, k, v)
    assert_close(fast, slow)
    assert not np.array_equal(fast, slow)


def test_set_backend_auto(backend_name):
    rerank.set_backend("auto")
    assert backend.active() == ("compiled" if COMPILED_AVAILABLE else "numpy")


# --------------------------------------------------------------------------------------------
# threads

def _workload(rng):
    att = (f32(rng, 2, 4, 300, 32), f32(rng, 2, 2, 700, 32), f32(rng, 2, 2, 700, 32))
    mem = (f32(rng, 6, 32), f32(rng, 6, 50, 32))
    lengths = [[1, 3, 1500, 2], [4, 4, 4, 4], [1, 1, 1, 1], [700, 1, 600, 900]]
    rows = max(sum(ls) for ls in lengths)
    tokens = f32(rng, 4, rows, 32)
    offsets = np.stack([np.concatenate([[0], np.cumsum(ls)]) for ls in lengths])
    late = (f32(rng, 4, 5, 32), tokens, offsets)
    hier = (f32(rng, 4, 32), tokens, offsets)
    single = (f32(rng, 5, 32), tokens[3, :2201], offsets[3])
    # 3 (head, query tile) items: the kernel picks 256-row query tiles for 1 thread, 64 for 2
    small = (f32(rng, 3, 200, 16), f32(rng, 3, 600, 16), f32(rng, 3, 600, 16))
    return att, mem, late, hier, single, small


KERNELS = {
    "attention": lambda w: [rerank.attention(*w[0])],
    "attention-causal": lambda w: [rerank.attention(*w[0], causal=True)],
    "attention-few-heads": lambda w: [rerank.attention(*w[5], causal=True)],
    "memory-batch": lambda w: [scoring.memory_attention(*w[1], heads=4, alpha=0.5)],
    "memory-single": lambda w: [scoring.memory_attention(w[1][0][0], w[1][1][0])],
    "late-batch": lambda w: list(scoring.late_interaction(*w[2], details=True)),
    "late-batch-soft": lambda w: list(scoring.late_interaction(*w[2], tau=0.1, details=True)),
    "late-single": lambda w: list(scoring.late_interaction(*w[4], details=True)),
    "hierarchical-batch": lambda w: list(scoring.hierarchical(*w[3], details=True)),
}


def _compute(work):
    return [out for fn in KERNELS.values() for out in fn(work)]


@needs_compiled
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_thread_count_does_not_change_results(compiled, rng, kernel):
    """set_num_threads(1), (2) and (4) give bit-identical results (same work, split differently)."""
    work = _workload(rng)
    results = {}
    for n in (1, 2, 4):
        rerank.set_num_threads(n)
        results[n] = KERNELS[kernel](work)
    for a, b, c in zip(results[1], results[2], results[4]):
        np.testing.assert_array_equal(a, b, err_msg="1 vs 2 threads")
        np.testing.assert_array_equal(a, c, err_msg="1 vs 4 threads")


@needs_compiled
def test_thread_count_results_agree_within_tolerance(compiled, rng):
    work = _workload(rng)
    rerank.set_num_threads(1)
    one = _compute(work)
    rerank.set_num_threads(2)
    for a, b in zip(one, _compute(work)):
        assert_close(a, b)


def _concurrent(work, workers=4, repeats=3):
    barrier = threading.Barrier(workers)

    def task(_):
        barrier.wait()
        return [_compute(work) for _ in range(repeats)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for per_thread in pool.map(task, range(workers)) for r in per_thread]


def test_python_threads_get_the_serial_results(backend_name, rng):
    """4 Python threads running every kernel concurrently get the serial answers (no shared
    scratch, no races): to float32 rounding here, bit-identical in the test below."""
    work = _workload(rng)
    serial = _compute(work)
    for repeat in _concurrent(work):
        for a, b in zip(repeat, serial):
            assert_close(a, b)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_python_threads_are_bit_identical_to_serial(backend_name, rng, kernel):
    """The same call gives the same bits whichever Python thread makes it, alone or concurrently."""
    work = _workload(rng)
    serial = KERNELS[kernel](work)
    with ThreadPoolExecutor(max_workers=1) as pool:
        alone = pool.submit(KERNELS[kernel], work).result()
    barrier = threading.Barrier(4)

    def task(_):
        barrier.wait()
        return [KERNELS[kernel](work) for _ in range(2)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = [r for rs in pool.map(task, range(4)) for r in rs]
    for a, b in zip(alone, serial):
        np.testing.assert_array_equal(a, b, err_msg="one worker thread vs the main thread")
    for repeat in concurrent:
        for a, b in zip(repeat, serial):
            np.testing.assert_array_equal(a, b, err_msg="4 concurrent threads vs the main thread")


@needs_compiled
def test_status_says_how_kernel_threads_hold_blas(compiled):
    """The bit-identity tests above fail when a worker thread's sgemm runs multi-threaded (this
    OpenBLAS keeps a thread count per calling thread); status says which control is in use."""
    text = rerank.status()["blas_threads_in_kernels"]
    if backend.blas_thread_setter():
        assert "openblas_set_num_threads_local" in text
    else:
        assert "process-wide" in text


def test_threads_with_different_inputs_do_not_mix(backend_name, rng):
    """Concurrent calls on different data each get their own answer (no shared scratch)."""
    inputs = [(f32(rng, 3, 200, 16), f32(rng, 3, 600, 16), f32(rng, 3, 600, 16)) for _ in range(8)]
    mems = [(f32(rng, 16), f32(rng, 40, 16)) for _ in range(8)]
    expected = [reference.attention(*x, causal=True) for x in inputs]
    expected_mem = [reference.memory_attention_scores(*x)[0] for x in mems]

    def task(i):
        return rerank.attention(*inputs[i], causal=True), scoring.memory_attention(*mems[i])

    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, (out, mem) in enumerate(pool.map(task, list(range(8)) * 3)):
            assert_close(out, expected[i % 8])
            assert_close(mem, expected_mem[i % 8])


_OOM_SCRIPT = r"""
import importlib, resource, sys
import numpy as np
import rerank
from rerank import scoring
attention = importlib.import_module("rerank.attention")   # the module, not rerank.attention()
rng = np.random.default_rng(0)
q = rng.standard_normal((2, 300, 16)).astype(np.float32)
qt, dt = q[0, :12], q[1]
offsets = np.array([0, 100, 300])
attention.BLOCK_K = 1 << 28            # per-thread scratch of ~64 GiB: malloc must fail
scoring.BLOCK_TOKENS = 1 << 28
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
for name, call in [("attention", lambda: rerank.attention(q, q, q)),
                   ("late", lambda: scoring.late_interaction(qt, dt, offsets))]:
    try:
        call()
        print(name, "no error")
    except MemoryError as exc:
        print(name, "MemoryError", exc)
"""


@needs_compiled
def test_failed_scratch_allocation_raises_memory_error(compiled):
    """A kernel whose scratch malloc fails raises MemoryError, never a crash."""
    proc = run_python(_OOM_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert "attention MemoryError" in proc.stdout and "late MemoryError" in proc.stdout, \
        proc.stdout


def test_import_rerank_is_light_and_loads_the_extension_on_first_use():
    """`import rerank` imports no torch, sentence-transformers, scipy or the extension; the first
    kernel call loads the extension (when built)."""
    code = textwrap.dedent("""
        import json, sys
        import rerank
        heavy = [m for m in ("torch", "sentence_transformers", "transformers", "scipy",
                             "rerank._kernels") if m in sys.modules]
        import numpy as np
        rerank.scoring.memory_attention(np.ones(4, np.float32), np.eye(4, dtype=np.float32))
        print(json.dumps({"heavy": heavy, "loaded": "rerank._kernels" in sys.modules,
                          "backend": rerank.backend.active()}))
    """)
    result = run_json(code)
    assert result["heavy"] == []
    assert result["loaded"] is COMPILED_AVAILABLE
    assert result["backend"] == ("compiled" if COMPILED_AVAILABLE else "numpy")
