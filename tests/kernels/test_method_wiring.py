"""Our vLLM MXFP4 method dispatches to the fused Triton kernels when they are prepared (CUDA), and
to the torch path otherwise; both give the reference result, expert-parallel id mapping included.
Runs the kernels in Triton's interpreter on the CPU (see conftest.py)."""

from types import SimpleNamespace

import pytest
import torch

import gptoss_kernels as gk
from vllm_gptoss.mxfp4_method import GptOssMxfp4MoEMethod


def _layer(E, H, I, expert_map=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w13, s13 = gk.quantize(torch.randn(E, 2 * I, H, generator=g) * H ** -0.5)
    w2, s2 = gk.quantize(torch.randn(E, H, I, generator=g) * I ** -0.5)
    return SimpleNamespace(
        w13_weight=w13.flatten(-2), w13_weight_scale=s13, w13_bias=torch.randn(E, 2 * I, generator=g) * 0.1,
        w2_weight=w2.flatten(-2), w2_weight_scale=s2, w2_bias=torch.randn(E, H, generator=g) * 0.1,
        expert_map=expert_map, swiglu_alpha=1.702, swiglu_limit=7.0)


@pytest.mark.parametrize("use_ep", [False, True])
def test_apply_triton_and_torch_paths_agree_with_reference(use_ep, device):
    E_global, H, I, T, k = 6, 96, 64, 9, 2
    # EP: this rank holds global experts 3..5 as local 0..2
    emap = torch.tensor([-1, -1, -1, 0, 1, 2], dtype=torch.int32) if use_ep else None
    layer = _layer(3 if use_ep else E_global, H, I, emap)
    layer.__dict__.update({n: t.to(device) for n, t in vars(layer).items() if isinstance(t, torch.Tensor)})
    x = torch.randn(T, H, device=device)
    w, ids = gk.route_reference(torch.randn(T, E_global, device=device), k)
    local = emap[ids.long()] if use_ep else ids
    want = gk.moe_reference(x, w, local, layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
                            layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    assert want.abs().sum() > 0

    method = GptOssMxfp4MoEMethod(moe=None)
    torch_out = method.apply(layer, x, w, ids, None, None)
    method.prepared = gk.prepare_moe_weights(layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
                                             layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    triton_out = method.apply(layer, x, w, ids, None, None)
    torch.testing.assert_close(torch_out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(triton_out, want, rtol=1e-4, atol=1e-4)
