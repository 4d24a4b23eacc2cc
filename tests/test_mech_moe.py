"""The mixture-of-experts attention family against hand-written loops over tokens and experts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rerank import backend, reference, registry
from rerank.mechanisms import moe
from rerank.mechanisms.moe import (ExpertChoiceAttention, MoEAttention, SoftMoEAttention,
                                   SwitchAttention)

from conftest import assert_close, f32

TOL = 1e-4

SPECS = {   # name: (class, complexity, use case) — ADR-029's table
    "moe-attention": (MoEAttention, "O(n²/E)", "Task specialization"),
    "soft-moe-attention": (SoftMoEAttention, "O(n²)", "Smooth routing"),
    "switch-attention": (SwitchAttention, "O(n²/E)", "Sparse activation"),
    "expert-choice-attention": (ExpertChoiceAttention, "O(n²/E)", "Load balanced"),
}
ROUTED = ("moe-attention", "switch-attention", "expert-choice-attention")

# (q shape, k shape, v shape): 2-D; 3-D with n ≠ m and d_v ≠ d; 4-D GQA; one query.
SHAPES = [
    ((9, 8), (9, 8), (9, 8)),
    ((3, 11, 8), (3, 7, 8), (3, 7, 6)),
    ((2, 4, 13, 8), (2, 2, 10, 8), (2, 2, 10, 5)),
    ((1, 2, 1, 7), (1, 1, 6, 7), (1, 1, 6, 7)),
]
SHAPE_IDS = ["2d", "3d-n!=m", "4d-gqa", "one-query"]


def configured(name, **overrides):
    """Each mechanism with non-default sizes that make its routing matter."""
    params = {"moe-attention": dict(num_experts=4, top_k=2),
              "switch-attention": dict(num_experts=3, capacity_factor=1.0),
              "expert-choice-attention": dict(num_experts=3, capacity_factor=1.0),
              "soft-moe-attention": dict(num_experts=3, slots_per_expert=2)}[name]
    return registry.get(name, **{**params, **overrides})


def inputs(rng, shapes, scale=1.0):
    return tuple(f32(rng, *shape, scale=scale) for shape in shapes)


# --------------------------------------------------------------------------------------------
# hand references: loops over (batch, head), tokens and experts, in float64

def as_4d(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def sequences(q, k, v, mask, causal):
    """Per (batch, head): q (n, d), its kv head's k and v, and the additive (n, m) mask."""
    q4, k4, v4 = as_4d(q), as_4d(k), as_4d(v)
    b, h, n, _ = q4.shape
    m, group = k4.shape[2], h // k4.shape[1]
    add = np.zeros((b, h, n, m))
    if mask is not None:
        add = add + reference.additive_mask(np.asarray(mask))
    if causal:
        add = add + np.where(reference.causal_mask(n, m), 0.0, -np.inf)
    for bi in range(b):
        for hi in range(h):
            yield (bi, hi), q4[bi, hi], k4[bi, hi // group], v4[bi, hi // group], add[bi, hi]


def expert_row(weights, e, q_row, k, v, add_row, scale):
    """softmax(q W_q^e (k W_k^e)ᵀ·scale + mask) (v W_v^e) for one query row."""
    wq, wk, wv = (np.asarray(weights[n][e], np.float64) for n in ("w_q", "w_k", "w_v"))
    logits = (k @ wk) @ (q_row @ wq) * scale + add_row
    return reference.softmax(logits) @ (v @ wv)


def router_probs(weights, q_row):
    return reference.softmax(q_row @ np.asarray(weights["w_router"], np.float64))


def top_k_assignment(p, top_k, **_):
    out = []
    for p_i in p:
        chosen = sorted(range(len(p_i)), key=lambda e: (-p_i[e], e))[:top_k]
        total = sum(p_i[e] for e in chosen)
        out.append([(e, p_i[e] / total) for e in chosen])
    return out


def switch_assignment(p, capacity_factor, **_):
    n, experts = p.shape
    capacity = math.ceil(capacity_factor * n / experts)
    load, out = [0] * experts, []
    for p_i in p:
        e = int(np.argmax(p_i))
        if load[e] < capacity:
            load[e] += 1
            out.append([(e, p_i[e])])
        else:
            out.append([])
    return out


def expert_choice_assignment(p, capacity_factor, **_):
    n, experts = p.shape
    quota = min(n, math.ceil(capacity_factor * n / experts))
    out = [[] for _ in range(n)]
    for e in range(experts):
        for i in sorted(range(n), key=lambda i: (-p[i, e], i))[:quota]:
            out[i].append((e, p[i, e]))
    return out


ASSIGN = {"moe-attention": top_k_assignment, "switch-attention": switch_assignment,
          "expert-choice-attention": expert_choice_assignment}


def routed_reference(mech, q, k, v, mask=None, causal=False):
    weights = mech.weights_for(q.shape[-1], v.shape[-1])
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = np.zeros(as_4d(q).shape[:-1] + (v.shape[-1],))
    settings = dict(top_k=getattr(mech, "top_k", None),
                    capacity_factor=getattr(mech, "capacity_factor", None))
    for (bi, hi), q2, k2, v2, add in sequences(q, k, v, mask, causal):
        p = np.array([router_probs(weights, q_row) for q_row in q2])
        for i, assignment in enumerate(ASSIGN[mech.spec.name](p, **settings)):
            for e, gate in assignment:
                out[bi, hi, i] += gate * expert_row(weights, e, q2[i], k2, v2, add[i], scale)
    return out.reshape(q.shape[:-1] + (v.shape[-1],))


def soft_reference(mech, q, k, v, mask=None):
    weights = mech.weights_for(q.shape[-1], v.shape[-1])
    phi = np.asarray(weights["phi"], np.float64)
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = mech.slots_per_expert
    out = np.zeros(as_4d(q).shape[:-1] + (v.shape[-1],))
    for (bi, hi), q2, k2, v2, add in sequences(q, k, v, mask, False):
        logits = q2 @ phi
        slot_outputs = []
        for j in range(phi.shape[1]):
            dispatch = reference.softmax(logits[:, j])           # over tokens
            slot = sum(dispatch[i] * q2[i] for i in range(len(q2)))
            slot_outputs.append(expert_row(weights, j // s, slot, k2, v2, add[0], scale))
        for i in range(len(q2)):
            combine = reference.softmax(logits[i])               # over slots
            out[bi, hi, i] = sum(c * y for c, y in zip(combine, slot_outputs))
    return out.reshape(q.shape[:-1] + (v.shape[-1],))


def random_mask(rng, q, k, keys_only=False):
    rows = 1 if keys_only else q.shape[-2]
    mask = rng.random(q.shape[:-2] + (rows, k.shape[-2])) < 0.75
    mask[..., 0] = True
    return mask


# --------------------------------------------------------------------------------------------
# specs and registry

def test_specs_follow_adr_029():
    assert [s.name for s in registry.by_category("moe")] == list(SPECS)
    for name, (cls, complexity, use_case) in SPECS.items():
        spec = registry.spec(name)
        assert spec is cls.spec
        assert (spec.category, spec.complexity, spec.use_case) == ("moe", complexity, use_case)
        assert "arXiv:" in spec.paper and spec.compiled is True
        assert cls.__doc__ and spec.notes


# --------------------------------------------------------------------------------------------
# against the hand references (both backends, every shape, causal and masks)

@pytest.mark.parametrize("name", ROUTED)
@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_routed_match_hand_reference(backend_name, rng, name, shapes, causal, masked):
    q, k, v = inputs(rng, shapes)
    mask = random_mask(rng, q, k) if masked else None
    mech = configured(name)
    assert mech.not_supported_reasons(q, k, v, mask=mask, causal=causal) == []
    out = mech.forward(q, k, v, mask=mask, causal=causal)
    assert out.dtype == np.float32 and out.shape == q.shape[:-1] + (v.shape[-1],)
    assert_close(out, routed_reference(mech, q, k, v, mask, causal), TOL, name)


@pytest.mark.parametrize("name", ROUTED)
@pytest.mark.parametrize("masked", [False, True])
def test_routed_masked_rows_in_chunks_match_hand_reference(backend_name, rng, monkeypatch, name,
                                                           masked):
    """Masked calls split into chunks of 3 rows; with n − m = 8 the first chunks see no key."""
    monkeypatch.setattr(moe, "MASK_ELEMENTS", 1)
    monkeypatch.setattr(moe, "ROWS_PER_CALL", 3)
    q, k, v = inputs(rng, ((2, 2, 20, 8), (2, 1, 12, 8), (2, 1, 12, 6)))
    mask = random_mask(rng, q, k) if masked else None
    mech = configured(name)
    out = mech.forward(q, k, v, mask=mask, causal=True)
    assert (out[..., :8, :] == 0).all()
    assert_close(out, routed_reference(mech, q, k, v, mask, True), TOL, name)


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("masked", [False, True])
def test_soft_moe_matches_hand_reference(backend_name, rng, shapes, masked):
    q, k, v = inputs(rng, shapes)
    mask = random_mask(rng, q, k, keys_only=True) if masked else None
    mech = configured("soft-moe-attention")
    out = mech.forward(q, k, v, mask=mask)
    assert out.dtype == np.float32 and out.shape == q.shape[:-1] + (v.shape[-1],)
    assert_close(out, soft_reference(mech, q, k, v, mask), TOL)


def test_hand_reference_of_one_token_is_worked_out(rng):
    """The loop reference itself, on one query and one expert: the gate is 1 and the expert is
    softmax over two keys, written out."""
    mech = MoEAttention(num_experts=1, top_k=1)
    q, k, v = f32(rng, 1, 2), f32(rng, 2, 2), f32(rng, 2, 2)
    w = {n: np.asarray(a, np.float64) for n, a in mech.weights_for(2, 2).items()}
    qe, ke, ve = q[0] @ w["w_q"][0], k @ w["w_k"][0], v @ w["w_v"][0]
    s0, s1 = (ke @ qe) / math.sqrt(2)
    a0 = 1.0 / (1.0 + math.exp(s1 - s0))
    expected = a0 * ve[0] + (1.0 - a0) * ve[1]
    assert_close(mech.forward(q, k, v)[0], expected, TOL)
    assert_close(routed_reference(mech, q, k, v)[0], expected, 1e-12)


# --------------------------------------------------------------------------------------------
# properties only the right routing satisfies

def dense_expert(weights, e, q, k, v, mask=None, causal=False):
    """Expert e on every token (the dense reference attention)."""
    return reference.attention(np.asarray(q, np.float64) @ weights["w_q"][e],
                               np.asarray(k, np.float64) @ weights["w_k"][e],
                               np.asarray(v, np.float64) @ weights["w_v"][e],
                               mask=mask, causal=causal).astype(np.float64)


@pytest.mark.parametrize("name,params", [("moe-attention", dict(top_k=1)),
                                         ("switch-attention", dict(capacity_factor=1.0)),
                                         ("expert-choice-attention", dict(capacity_factor=1.0))])
@pytest.mark.parametrize("causal", [False, True])
def test_one_expert_equals_that_expert(backend_name, rng, name, params, causal):
    q, k, v = inputs(rng, SHAPES[2])
    mask = random_mask(rng, q, k)
    weights = {"w_q": f32(rng, 1, 8, 8), "w_k": f32(rng, 1, 8, 8), "w_v": f32(rng, 1, 5, 5),
               "w_router": f32(rng, 8, 1)}
    mech = registry.get(name, num_experts=1, **params, **weights)
    assert mech.route(q, k, v)[1].all()                          # every token served
    expected = dense_expert(weights, 0, q, k, v, mask, causal)
    assert_close(mech.forward(q, k, v, mask=mask, causal=causal), expected, TOL)
    np.testing.assert_array_equal(mech.w_q, weights["w_q"])       # given weights are used


def test_soft_moe_with_one_expert_and_a_slot_per_token_equals_that_expert(backend_name, rng):
    """With orthogonal query tokens and Φ = 30·qᵀ, dispatch and combine are the identity, so each
    slot is one token and soft MoE is the expert itself."""
    n, d = 6, 8
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q = (2.0 * basis[:n]).astype(np.float32)
    k, v = f32(rng, 9, d), f32(rng, 9, d)
    weights = {"w_q": f32(rng, 1, d, d), "w_k": f32(rng, 1, d, d), "w_v": f32(rng, 1, d, d)}
    mech = SoftMoEAttention(num_experts=1, slots_per_expert=n, phi=30.0 * q.T, **weights)
    dispatch, combine = mech.dispatch_combine(q, k, v)
    assert_close(dispatch[0, 0], np.eye(n), 1e-12)
    assert_close(combine[0, 0], np.eye(n), 1e-12)
    mask = rng.random((1, 9)) < 0.7
    mask[0, 0] = True
    assert_close(mech.forward(q, k, v, mask=mask), dense_expert(weights, 0, q, k, v, mask), TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_moe_top_k_equal_to_experts_is_the_dense_softmax_mixture(backend_name, rng, causal):
    q, k, v = inputs(rng, SHAPES[1])
    mech = MoEAttention(num_experts=3, top_k=3, seed=5)
    w = mech.weights_for(8, 6)
    p = reference.softmax(as_4d(q)[0] @ np.asarray(w["w_router"], np.float64))  # (h, n, E)
    expected = sum(p[..., e:e + 1] * dense_expert(w, e, q, k, v, causal=causal) for e in range(3))
    assert_close(mech.forward(q, k, v, causal=causal), expected, TOL)


def test_moe_dense_mixture_matches_torch(rng):
    torch = pytest.importorskip("torch")
    q, k, v = inputs(rng, ((2, 4, 7, 8), (2, 2, 10, 8), (2, 2, 10, 5)))
    mech = MoEAttention(num_experts=2, top_k=2, seed=3)
    w = {n: torch.from_numpy(np.asarray(a, np.float64)) for n, a in mech.weights_for(8, 5).items()}
    tq, tk, tv = (torch.from_numpy(x.astype(np.float64)) for x in (q, k, v))
    tk, tv = tk.repeat_interleave(2, dim=1), tv.repeat_interleave(2, dim=1)      # GQA
    gates = torch.softmax(tq @ w["w_router"], dim=-1)
    bottom_right = torch.ones(7, 10, dtype=torch.bool).tril(diagonal=10 - 7)  # query i: j ≤ i + 3
    expected = sum(gates[..., e:e + 1] * torch.nn.functional.scaled_dot_product_attention(
        tq @ w["w_q"][e], tk @ w["w_k"][e], tv @ w["w_v"][e], attn_mask=bottom_right)
        for e in range(2))
    assert_close(mech.forward(q, k, v, causal=True), expected.numpy(), TOL)


def test_switch_respects_capacity_and_drops_exactly_the_overflow(backend_name, rng):
    q, k, v = inputs(rng, ((2, 3, 40, 8), (2, 3, 40, 8), (2, 3, 40, 8)))
    q += 0.8                                       # a shared direction: the router is unbalanced
    mech = SwitchAttention(num_experts=4, capacity_factor=0.75, seed=1)
    capacity = math.ceil(0.75 * 40 / 4)
    assert mech.capacity(40) == capacity == 8
    gates, served = mech.route(q, k, v)
    p = reference.softmax(q.astype(np.float64) @ mech.w_router.astype(np.float64))
    wanted = np.argmax(p, axis=-1)[..., None] == np.arange(4)
    assert (served.sum(axis=-1) <= 1).all() and (served <= wanted).all()
    load = served.sum(axis=-2)
    assert (load == np.minimum(wanted.sum(axis=-2), capacity)).all()
    assert (wanted.sum(axis=-2) > capacity).any()                 # overflow happened
    for idx in np.ndindex(2, 3):
        for e in range(4):
            in_order = np.flatnonzero(wanted[idx][:, e])
            np.testing.assert_array_equal(np.flatnonzero(served[idx][:, e]), in_order[:capacity])
    np.testing.assert_array_equal(gates, np.where(served, p, 0.0))
    out = mech.forward(q, k, v)
    dropped = ~served.any(axis=-1)
    assert dropped.sum() == (wanted.sum(axis=-2) - load).sum() > 0
    assert (out[dropped] == 0).all() and (np.abs(out[~dropped]).max(axis=-1) > 0).all()


def test_expert_choice_gives_each_expert_exactly_its_quota(backend_name, rng):
    q, k, v = inputs(rng, ((2, 2, 30, 8), (2, 2, 30, 8), (2, 2, 30, 8)))
    mech = ExpertChoiceAttention(num_experts=4, capacity_factor=1.0, seed=2)
    quota = math.ceil(30 / 4)
    assert mech.quota(30) == quota == 8
    gates, served = mech.route(q, k, v)
    assert (served.sum(axis=-2) == quota).all()
    p = reference.softmax(q.astype(np.float64) @ mech.w_router.astype(np.float64))
    for idx in np.ndindex(2, 2):
        for e in range(4):
            threshold = np.sort(p[idx][:, e])[-quota]
            np.testing.assert_array_equal(served[idx][:, e], p[idx][:, e] >= threshold)
    picks = served.sum(axis=-1)
    assert (picks == 0).any() and (picks > 1).any()             # some skipped, some shared
    np.testing.assert_array_equal(gates, np.where(served, p, 0.0))
    out = mech.forward(q, k, v)
    assert (out[picks == 0] == 0).all() and (np.abs(out[picks > 0]).max(axis=-1) > 0).all()
    assert ExpertChoiceAttention(num_experts=2, capacity_factor=9.0).quota(5) == 5


def test_moe_routes_each_token_to_its_top_k_only(rng):
    q, k, v = inputs(rng, SHAPES[2])
    mech = MoEAttention(num_experts=5, top_k=2)
    gates, served = mech.route(q, k, v)
    assert (served.sum(axis=-1) == 2).all()
    assert_close(gates.sum(axis=-1), np.ones(served.shape[:-1]), 1e-12)
    assert (gates[~served] == 0).all() and (gates[served] > 0).all()


@pytest.mark.parametrize("name", ROUTED)
def test_causal_output_ignores_later_keys(backend_name, rng, name):
    q, k, v = inputs(rng, SHAPES[0])
    mech = configured(name)
    out = mech.forward(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[5:], v2[5:] = f32(rng, 4, 8), f32(rng, 4, 8)
    changed = mech.forward(q, k2, v2, causal=True)
    np.testing.assert_array_equal(changed[:5], out[:5])
    assert np.abs(changed[5:] - out[5:]).max() > 1e-3


# --------------------------------------------------------------------------------------------
# not plain attention; deterministic; weights

@pytest.mark.parametrize("name", list(SPECS))
def test_outputs_differ_from_plain_attention(rng, name):
    q, k, v = inputs(rng, SHAPES[2])
    mech = registry.get(name)
    out = mech.forward(q, k, v)
    assert np.isfinite(out).all()
    assert np.abs(out - reference.attention(q, k, v)).max() > 0.05


@pytest.mark.parametrize("name", list(SPECS))
def test_deterministic_for_a_seed(rng, name):
    q, k, v = inputs(rng, SHAPES[1])
    first = registry.get(name, seed=7).forward(q, k, v)
    np.testing.assert_array_equal(registry.get(name, seed=7).forward(q, k, v), first)
    assert np.abs(registry.get(name, seed=8).forward(q, k, v) - first).max() > 1e-3
    if name in ROUTED:
        gates, served = registry.get(name, seed=7).route(q, k, v)
        again = registry.get(name, seed=7).route(q, k, v)
        np.testing.assert_array_equal(gates, again[0])
        np.testing.assert_array_equal(served, again[1])
        assert (registry.get(name, seed=8).route(q, k, v)[1] != served).any()


@pytest.mark.parametrize("name", list(SPECS))
def test_default_weights_are_seeded_distinct_experts(rng, name):
    mech = registry.get(name, seed=4)
    assert mech.w_q is None                                        # created on first forward
    q, k, v = inputs(rng, SHAPES[1])
    mech.forward(q, k, v)
    weights = mech.weights_for(8, 6)
    assert mech.w_q is weights["w_q"] and mech.w_v.shape == (4, 6, 6)
    assert mech.w_q.shape == mech.w_k.shape == (4, 8, 8)
    assert not np.allclose(mech.w_q[0], np.eye(8), atol=0.05)      # not the identity
    assert np.abs(mech.w_q[0] - mech.w_q[1]).max() > 0.05          # experts differ
    np.testing.assert_array_equal(registry.get(name, seed=4).weights_for(8, 6)["w_k"], mech.w_k)
    router = "phi" if name == "soft-moe-attention" else "w_router"
    assert weights[router].shape[0] == 8 and getattr(mech, router) is weights[router]


# --------------------------------------------------------------------------------------------
# the compiled kernel does the attention

@pytest.mark.parametrize("name", list(SPECS))
def test_compiled_kernel_runs_the_experts_and_agrees_with_numpy(compiled, monkeypatch, rng, name):
    q, k, v = inputs(rng, SHAPES[2])
    mask = random_mask(rng, q, k, keys_only=(name == "soft-moe-attention"))
    mech = configured(name)
    with backend.use_backend("numpy"):
        numpy_out = mech.forward(q, k, v, mask=mask)
    calls = []
    real = backend.compiled_kernels

    def spy():
        kernels = real()
        calls.append(kernels)
        return kernels

    monkeypatch.setattr(backend, "compiled_kernels", spy)
    out = mech.forward(q, k, v, mask=mask)
    assert calls and all(c is not None for c in calls)
    assert mech.backend == "compiled"
    assert_close(out, numpy_out, TOL)


# --------------------------------------------------------------------------------------------
# what is not supported, and bad input

@pytest.mark.parametrize("name", ROUTED)
def test_routed_support_everything(rng, name):
    q, k, v = inputs(rng, SHAPES[1])
    assert configured(name).not_supported_reasons(q, k, v, mask=random_mask(rng, q, k),
                                                  causal=True) == []


def test_soft_moe_refuses_causal_and_per_query_masks(rng):
    q, k, v = inputs(rng, SHAPES[1])
    mech = configured("soft-moe-attention")
    assert mech.not_supported_reasons(q, k, v) == []
    assert mech.not_supported_reasons(q, k, v, mask=random_mask(rng, q, k, keys_only=True)) == []
    assert mech.not_supported_reasons(q, k, v, mask=np.ones(7, bool)) == []
    [reason] = mech.not_supported_reasons(q, k, v, causal=True)
    assert "causal" in reason
    per_query = random_mask(rng, q, k)
    [reason] = mech.not_supported_reasons(q, k, v, mask=per_query)
    assert "key masks" in reason
    with pytest.raises(ValueError, match="causal"):
        mech.forward(q, k, v, causal=True)
    with pytest.raises(ValueError, match="key masks"):
        mech.forward(q, k, v, mask=per_query)


@pytest.mark.parametrize("factory,match", [
    (lambda: MoEAttention(num_experts=2, top_k=3), "top_k"),
    (lambda: MoEAttention(top_k=0), "top_k"),
    (lambda: MoEAttention(top_k=1.5), "top_k"),
    (lambda: MoEAttention(num_experts=0), "num_experts"),
    (lambda: SwitchAttention(capacity_factor=0), "capacity_factor"),
    (lambda: SwitchAttention(capacity_factor=-1.0), "capacity_factor"),
    (lambda: ExpertChoiceAttention(capacity_factor=0.0), "capacity_factor"),
    (lambda: ExpertChoiceAttention(capacity_factor=float("nan")), "capacity_factor"),
    (lambda: SoftMoEAttention(slots_per_expert=0), "slots_per_expert"),
    (lambda: MoEAttention(seed=-1), "seed"),
    (lambda: MoEAttention(num_experts=2, w_q=np.zeros((3, 4, 4))), "w_q"),
    (lambda: MoEAttention(num_experts=2, w_k=np.zeros((2, 4, 5))), "w_k"),
    (lambda: SwitchAttention(num_experts=2, w_router=np.zeros((4, 3))), "w_router"),
    (lambda: SoftMoEAttention(num_experts=2, slots_per_expert=2, phi=np.zeros((4, 3))), "phi"),
    (lambda: ExpertChoiceAttention(w_v=np.full((4, 2, 2), np.nan)), "w_v"),
])
def test_bad_parameters_raise(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("name", list(SPECS))
def test_bad_inputs_raise(rng, name):
    q, k, v = inputs(rng, SHAPES[1])
    mech = registry.get(name)
    with pytest.raises(TypeError, match="q"):
        mech.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k"):
        mech.forward(q, k[..., :5], v)
    bad = q.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="q"):
        mech.forward(bad, k, v)
    bad = v.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="v"):
        mech.forward(q, k, bad)
    router = "phi" if name == "soft-moe-attention" else "w_router"
    given = registry.get(name, w_q=np.eye(6, dtype=np.float32)[None].repeat(4, 0),
                         **{router: np.zeros((6, 4), np.float32)})
    with pytest.raises(ValueError, match="w_q"):                   # weights for d = 6, not 8
        given.forward(q, k, v)
