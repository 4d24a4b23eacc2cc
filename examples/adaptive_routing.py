"""ADR-029's third integration example: SONA-style adaptive routing. A pattern embedding attends
over the stored expert vectors with flash attention (registry ``flash-attention-v2``), then
``moe-attention`` routes the attended pattern to its top-2 experts.

Eight experts each keep a key vector (what they are good at) and a value vector (what they
contribute), d = 64. The attended pattern is a mix of expert values; the router's column e is
expert e's value direction, so it is routed to the experts that contributed most. The pattern
here resembles expert 5 most, then expert 2.

Run: python examples/adaptive_routing.py
"""
import numpy as np

from rerank import registry

rng = np.random.default_rng(11)
E, d = 8, 64
expert_keys = rng.standard_normal((E, d)).astype(np.float32)
expert_keys /= np.linalg.norm(expert_keys, axis=1, keepdims=True)
expert_values = rng.standard_normal((E, d)).astype(np.float32)
pattern = (0.8 * expert_keys[5] + 0.5 * expert_keys[2]
           + 0.1 * rng.standard_normal(d)).astype(np.float32)[None]          # (1, d)

# 1. flash attention: the pattern attends over the experts (scale 4: sharper than 1/√d)
flash = registry.get("flash-attention-v2")
attended = flash.forward(pattern, expert_keys, expert_values, scale=4.0)     # (1, d)
weights = flash.forward(pattern, expert_keys, np.eye(E, dtype=np.float32), scale=4.0)[0]
print(f"flash-attention-v2: pattern {pattern.shape} attended over {E} experts -> "
      f"{attended.shape}")
print("  attention over experts: " + "  ".join(f"e{e} {w:.2f}" for e, w in enumerate(weights)))

# 2. moe-attention routes the attended pattern to its top-2 experts
router_columns = (expert_values / np.linalg.norm(expert_values, axis=1, keepdims=True)).T
moe = registry.get("moe-attention", num_experts=E, top_k=2, seed=0,
                   w_router=(0.5 * router_columns).astype(np.float32))        # (d, E)
gates, served = moe.route(attended, expert_keys, expert_values)              # (1, 1, 1, E) each
gates, served = gates.reshape(E), served.reshape(E)
chosen = sorted(np.flatnonzero(served).tolist(), key=lambda e: -gates[e])
output = moe.forward(attended, expert_keys, expert_values)
print(f"moe-attention: routed to experts {chosen} with weights "
      + ", ".join(f"{gates[e]:.3f}" for e in chosen)
      + f" (sum {gates[served].sum():.3f}); output {output.shape}")
print(f"top-2 experts: {sorted(chosen)}")
