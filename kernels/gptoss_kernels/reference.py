"""Plain-torch references for routing and the gpt-oss MoE, float32 math, checkpoint layout.

These are the oracles the Triton kernels are tested against, and the CPU path of the plugin: they
dequantize one expert at a time, so memory stays at MXFP4 size plus one expert in float32.
"""

from __future__ import annotations

import torch

from .mxfp4 import dequantize

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def route_reference(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """top-k of the logits, then softmax over the selected k (gpt-oss's router).

    Returns (weights float32 [T, k], ids int32 [T, k]); ties are broken like torch.topk.
    """
    vals, ids = torch.topk(router_logits.float(), top_k, dim=-1)
    return torch.softmax(vals, dim=-1), ids.to(torch.int32)


def swiglu_reference(gate_up: torch.Tensor, alpha: float = SWIGLU_ALPHA, limit: float = SWIGLU_LIMIT) -> torch.Tensor:
    """gpt-oss's clamped SwiGLU on interleaved rows: even columns gate, odd columns up."""
    gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def _expert_weight(w, scales, e: int) -> torch.Tensor:
    """[N, K] float32 weight of expert e: MXFP4 (blocks + scales) or already a float tensor."""
    if scales is None:
        return w[e].float()
    return dequantize(w[e], scales[e], torch.float32)


def moe_reference(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_blocks: torch.Tensor,
    w13_scales: torch.Tensor | None,
    w13_bias: torch.Tensor | None,
    w2_blocks: torch.Tensor,
    w2_scales: torch.Tensor | None,
    w2_bias: torch.Tensor | None,
    alpha: float = SWIGLU_ALPHA,
    limit: float = SWIGLU_LIMIT,
) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) in float32, returned in x's dtype.

    w13: blocks [E, 2I, H/32, 16] (or [E, 2I, H/2]) + scales [E, 2I, H/32], rows interleaved gate/up;
         with scales None, w13 is a float weight [E, 2I, H].
    w2:  blocks [E, H, I/32, 16] (or [E, H, I/2]) + scales [E, H, I/32]; or float [E, H, I].
    An id of -1 (an expert not on this rank under expert parallelism) contributes nothing.
    """
    T, H = x.shape
    xf = x.float()
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    ids = topk_ids.long()
    for e in torch.unique(ids).tolist():
        if e < 0:
            continue
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = xf[tok] @ _expert_weight(w13_blocks, w13_scales, e).t()
        if w13_bias is not None:
            h = h + w13_bias[e].float()
        a = swiglu_reference(h, alpha, limit)
        y = a @ _expert_weight(w2_blocks, w2_scales, e).t()
        if w2_bias is not None:
            y = y + w2_bias[e].float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float().unsqueeze(-1))
    return out.to(x.dtype)
