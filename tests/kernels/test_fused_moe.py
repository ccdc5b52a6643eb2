"""fused_moe (Triton, run in the interpreter on the CPU) against moe_reference (plain torch, float32).

Relative error ||out - ref|| / ||ref||, with the reference fed x already rounded to the test dtype:
  float32: <= 1e-5 (interpreter: float32 dots; on CUDA float32 dots run as tf32: 5e-3)
  float16: <= 3e-3 (the activation between the two GEMMs is stored in fp16, output rounded to fp16)
  bfloat16: <= 1.5e-2 (same, in bf16; in the interpreter bf16 dot operands are upcast to float32
           because its bf16 tl.dot is broken, so the bf16 *dot* itself is checked only on a GPU, by
           `python benchmarks/gpu_moe.py`)
Every run: fresh random inputs (never zeros), and the output buffer poisoned with NaN beforehand.
"""

import os

import pytest
import torch

from gptoss_kernels import TileConfig, fused_moe, moe_reference, prepare_moe_weights, quantize, route
from gptoss_kernels.moe import align_tokens

ON_CUDA = os.environ.get("TRITON_INTERPRET") != "1"  # conftest sets it unless asked to run on CUDA

BOUND = {torch.float32: 5e-3 if ON_CUDA else 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def make_experts(E, H, I, device, bias=True, w_std=0.05):
    """Random MXFP4 experts in the checkpoint layout (quantized from gaussian float weights)."""
    b13, s13 = quantize(torch.randn(E, 2 * I, H) * w_std)
    b2, s2 = quantize(torch.randn(E, H, I) * w_std)
    b13_bias = torch.randn(E, 2 * I) * 0.5 if bias else None
    b2_bias = torch.randn(E, H) * 0.5 if bias else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return tuple(to(t) for t in (b13, s13, b13_bias, b2, s2, b2_bias))


def rel_err(out, ref):
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def run_and_check(x, tw, ti, experts, dtype, **kw):
    prepared = prepare_moe_weights(*experts)
    out = torch.full(x.shape, float("nan"), dtype=dtype, device=x.device)
    res = fused_moe(x, tw, ti, prepared, out=out, **kw)
    assert res.data_ptr() == out.data_ptr()
    ref_kw = {n: v for n, v in kw.items() if n in ("alpha", "limit")}
    ref = moe_reference(x.float().cpu(), tw.cpu(), ti.cpu(), *(None if t is None else t.cpu() for t in experts),
                        **ref_kw)
    err = rel_err(out.cpu(), ref)
    assert err <= BOUND[dtype], f"relative error {err:.2e} > {BOUND[dtype]:.0e} for {dtype}"
    # and without an out buffer: the same function, in x's dtype
    res2 = fused_moe(x, tw, ti, prepared, **kw)
    assert res2.dtype == dtype and res2.shape == x.shape
    assert rel_err(res2.cpu(), ref) <= BOUND[dtype]
    return out


CASES = [
    # T, E, H, I, k, dtype   (H and I multiples of 32, not of 128)
    (1, 4, 64, 96, 2, torch.float32),
    (3, 8, 96, 64, 4, torch.bfloat16),
    (17, 32, 64, 32, 4, torch.float16),   # most of the 32 experts get no token
    (64, 16, 160, 96, 4, torch.bfloat16),
    (257, 4, 64, 32, 2, torch.float32),
]


@pytest.mark.parametrize("T,E,H,I,k,dtype", CASES)
def test_fused_moe_matches_reference(device, T, E, H, I, k, dtype):
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(dtype).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    run_and_check(x, tw, ti, experts, dtype)


@pytest.mark.parametrize("k", [1, 4])
def test_all_tokens_on_one_expert(device, k):
    E, H, I, T = 8, 64, 64, 40
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    ti[:, 0] = 5
    if k > 1:  # keep the ids of a token distinct
        ti[:, 1:] = torch.tensor([1, 2, 3], dtype=torch.int32, device=device)[: k - 1]
    run_and_check(x, tw, ti, experts, torch.float32)


def test_minus_one_ids_contribute_nothing(device):
    E, H, I, T, k = 8, 96, 64, 19, 4
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    drop = torch.rand(T, k) < 0.4
    drop[3] = True  # a token routed to no expert on this rank: its output is exactly 0
    ti[drop.to(device)] = -1
    out = run_and_check(x, tw, ti, experts, torch.float32)
    assert out[3].abs().max().item() == 0.0


def test_no_bias_fp16_and_vllm_flat_blocks(device):
    E, H, I, T, k = 6, 64, 96, 9, 3
    b13, s13, _, b2, s2, _ = make_experts(E, H, I, device, bias=False)
    experts = (b13.flatten(-2), s13, None, b2.flatten(-2), s2, None)  # vLLM's [E, N, K/2] view
    x = torch.randn(T, H).half().to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    run_and_check(x, tw, ti.long(), experts, torch.float16)


def test_clamp_is_exercised(device):
    """Large activations: most gate/up values pass the limit, so a wrong clamp would show."""
    E, H, I, T, k = 4, 64, 64, 11, 2
    experts = make_experts(E, H, I, device, w_std=0.5)
    x = (torch.randn(T, H) * 4).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    run_and_check(x, tw, ti, experts, torch.float32, alpha=1.3, limit=3.0)


@pytest.mark.parametrize("how", ["triton", "torch"])
def test_align_invariants(device, how, monkeypatch):
    monkeypatch.setenv("GPTOSS_KERNELS_ALIGN", how)
    E, T, k, bm = 8, 37, 4, 16
    ids = torch.randint(0, E, (T, k))
    ids[torch.rand(T, k) < 0.2] = -1
    ids[:, 0] = torch.where(torch.arange(T) % 2 == 0, 3, ids[:, 0])  # a crowded expert
    sorted_ids, block_expert = align_tokens(ids.to(device), E, bm)
    sorted_ids, block_expert = sorted_ids.cpu(), block_expert.cpu()
    M = T * k
    flat = ids.view(-1)
    valid = (flat >= 0).nonzero().view(-1)
    rows = sorted_ids.view(-1, bm)
    seen = []
    used = block_expert >= 0
    assert used.sum() == sum(-(-int((flat == e).sum()) // bm) for e in range(E))
    assert not used[int(used.sum()):].any(), "used blocks must come first"
    assert (rows[~used] == M).all()
    for b in range(int(used.sum())):
        e = int(block_expert[b])
        real = rows[b][rows[b] < M]
        assert (flat[real] == e).all()
        seen.append(real)
    seen = torch.cat(seen)
    assert torch.equal(torch.sort(seen).values, valid.to(torch.int32))


def test_bad_inputs_name_the_tensor(device):
    experts = make_experts(4, 64, 32, device)
    with pytest.raises(ValueError, match="w2_scales"):
        prepare_moe_weights(*experts[:4], experts[4][:, :3], experts[5])
    with pytest.raises(ValueError, match="w13"):
        prepare_moe_weights(experts[0][:, :5], *experts[1:])
    prepared = prepare_moe_weights(*experts)
    with pytest.raises(ValueError, match="hidden size"):
        fused_moe(torch.randn(2, 32).to(device), torch.ones(2, 1).to(device),
                  torch.zeros(2, 1, dtype=torch.int32).to(device), prepared)


@pytest.mark.parametrize("cfg", [
    TileConfig(16, 32, 32, 4, 1, swap_ab=True),
    TileConfig(16, 64, 128, 4, 1),               # K tail: H=96 and I=64 are not multiples of 128
    TileConfig(32, 64, 64, 4, 1, group_m=2, swap_ab=True),
])
def test_tile_configs(device, cfg):
    E, H, I, T, k = 6, 96, 64, 21, 4
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(torch.bfloat16).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    run_and_check(x, tw, ti, experts, torch.bfloat16, config=cfg)


@pytest.mark.parametrize("cfg", [
    TileConfig(16, 32, 32, 4, 1, split_k=2),      # I=64: two K ranges of 32
    TileConfig(16, 16, 64, 2, 1, split_k=3),      # uneven split: ranges of 64, 0 and 0 rows... of K=96
])
def test_gemm2_split_k(device, cfg):
    E, H, I, T, k = 5, 64, 96, 13, 2
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    run_and_check(x, tw, ti, experts, torch.float32, config=cfg)


def test_torch_align_path_end_to_end(device, monkeypatch):
    monkeypatch.setenv("GPTOSS_KERNELS_ALIGN", "torch")
    E, H, I, T, k = 8, 64, 32, 30, 4
    experts = make_experts(E, H, I, device)
    x = torch.randn(T, H).to(device)
    tw, ti = route(torch.randn(T, E).to(device), k)
    ti[(torch.rand(T, k) < 0.2).to(device)] = -1
    run_and_check(x, tw, ti, experts, torch.float32)
