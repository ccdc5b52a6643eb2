"""The K16 weight layout (issue 14: the decode K loop reads the nibbles where they lie) against
`moe_reference`, in Triton's interpreter.

`prepare_moe_weights(..., layout="k16")` permutes each 32-element block once at load so that byte j
holds elements j and j + 16; the shared K loop (`fused_moe_triton._mxfp4_k_loop`) then dequantizes
the low and high nibbles into two [BLOCK_N, BLOCK_K/2] tiles and runs two dots, with the
activations loaded in the same order, instead of joining and reshaping the weight tile.

Every case: fresh random blocks over all 256 byte values (so every E2M1 code), random E8M0 scales,
experts with no token, some ids -1, the output poisoned with NaN first. Bounds are those of
test_fused_moe.py. The inline-PTX dequantization (what runs on sm_80+/sm_90 in bf16) cannot run in
the interpreter; `test_ptx_dequant_wiring_emulated` replaces the interpreter's inline-asm hook by
the values that PTX computes (proved instruction by instruction in test_dequant_bits.py: each
byte's low / high nibble times the scale, exactly, in bf16) to check how both layouts wire it.
"""

import os

import numpy as np
import pytest
import torch

from gptoss_kernels import TileConfig, fused_moe, moe_reference, prepare_moe_weights, route
from gptoss_kernels import moe as moe_mod
from gptoss_kernels.moe import permute_k16, unpermute_k16
from gptoss_kernels.mxfp4 import dequantize, unpack_codes

ON_CUDA = os.environ.get("TRITON_INTERPRET") != "1"
BOUND = {torch.float32: 5e-3 if ON_CUDA else 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def random_experts(E, H, I, device, bias=True, seed=0):
    """Blocks over every byte value, scales 2**-8 .. 2**-3: weights of gpt-oss-like size."""
    g = torch.Generator().manual_seed(seed)
    b13 = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=g)
    b2 = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=g)
    assert len(torch.unique(unpack_codes(b13))) == 16 and len(torch.unique(unpack_codes(b2))) == 16
    s13 = torch.randint(119, 125, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
    s2 = torch.randint(119, 125, (E, H, I // 32), dtype=torch.uint8, generator=g)
    bias13 = torch.randn(E, 2 * I, generator=g) * 0.5 if bias else None
    bias2 = torch.randn(E, H, generator=g) * 0.5 if bias else None
    return tuple(None if t is None else t.to(device) for t in (b13, s13, bias13, b2, s2, bias2))


def check(T, E, H, I, k, dtype, device, layout, config=None, drop=0.25, seed=0):
    experts = random_experts(E, H, I, device, seed=seed)
    prepared = prepare_moe_weights(*experts, layout=layout)
    assert prepared.layout == layout
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, H, generator=g).to(dtype).to(device)
    tw, ti = route(torch.randn(T, E, generator=g).to(device), k)
    ti = torch.where((torch.rand(T, k, generator=g) < drop).to(device), -1, ti)
    out = torch.full((T, H), float("nan"), dtype=dtype, device=device)
    fused_moe(x, tw, ti, prepared, out=out, config=config)
    ref = moe_reference(x.float().cpu(), tw.cpu(), ti.cpu(), *(None if t is None else t.cpu() for t in experts))
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written"
    err = ((out.float().cpu() - ref).norm() / ref.norm()).item()
    assert err <= BOUND[dtype], f"{layout} T={T} {dtype}: relative error {err:.2e} > {BOUND[dtype]:.0e}"
    return err


def test_permute_k16_is_the_documented_byte_order():
    b = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8)
    p = permute_k16(b)
    assert p.shape == b.shape and p.dtype == torch.uint8
    codes = unpack_codes(b)  # [3, 5, 4, 32], k order
    assert torch.equal(p & 0xF, codes[..., :16]) and torch.equal(p >> 4, codes[..., 16:])
    assert torch.equal(unpermute_k16(p), b)
    assert torch.equal(unpermute_k16(permute_k16(b.flatten(-2))), b.flatten(-2))  # vLLM's [E, N, K/2] view
    s = torch.randint(100, 140, (3, 5, 4), dtype=torch.uint8)
    assert torch.equal(dequantize(unpermute_k16(p), s), dequantize(b, s))


def test_prepare_inplace_overwrites_the_given_blocks():
    experts = random_experts(3, 64, 32, "cpu")
    original = [t.clone() for t in (experts[0], experts[3])]
    w = prepare_moe_weights(*experts, layout="k16", inplace=True)
    assert w.w13.data_ptr() == experts[0].data_ptr() and w.w2.data_ptr() == experts[3].data_ptr()
    assert torch.equal(experts[0], permute_k16(original[0])) and torch.equal(experts[3], permute_k16(original[1]))
    with pytest.raises(ValueError, match="layout"):
        prepare_moe_weights(*experts, layout="k32")


@pytest.mark.parametrize("layout", ["k16", "checkpoint"])
@pytest.mark.parametrize("T,E,H,I,k,dtype", [
    (1, 16, 64, 64, 4, torch.float32),     # 12 of 16 experts empty
    (3, 16, 96, 64, 4, torch.bfloat16),    # H = 96: no multiple of the interpreter's BLOCK_K... of 64
    (17, 32, 64, 32, 4, torch.float16),
    (64, 8, 64, 96, 4, torch.bfloat16),
    (257, 4, 64, 32, 2, torch.float32),
])
def test_layouts_match_reference(device, layout, T, E, H, I, k, dtype):
    check(T, E, H, I, k, dtype, device, layout)


@pytest.mark.parametrize("cfg", [
    TileConfig(16, 64, 128, 4, 1, split_k=2, evict_w=True),              # K tails: H=96, I=64 vs BLOCK_K 128
    TileConfig(16, 32, 64, 4, 1, swap_ab=True, split_k=3, evict_w=True),  # weights as the left operand
    TileConfig(32, 64, 32, 4, 1, group_m=2),
])
@pytest.mark.parametrize("layout", ["k16", "checkpoint"])
def test_decode_configs(device, cfg, layout):
    check(5, 8, 96, 64, 4, torch.float32, device, layout, config=cfg)
    check(19, 8, 96, 64, 4, torch.bfloat16, device, layout, config=cfg, seed=3)


@pytest.mark.parametrize("cfg", [
    TileConfig(32, 64, 32, 4, 1, group_m=2, persistent=1),            # prefill tile, grid of 1 per SM
    TileConfig(64, 32, 64, 4, 1, group_m=4, persistent=3),            # larger row block, K tail (H=96)
    TileConfig(16, 32, 64, 4, 1, split_k=2, persistent=2, evict_w=True),  # persistent over each K range
])
@pytest.mark.parametrize("layout", ["k16", "checkpoint"])
def test_persistent_grid(device, cfg, layout, monkeypatch):
    """The persistent grid (issue 14 part 3): fewer programs than tiles, each looping over tiles.
    Every output tile must be written once (NaN poison) and match the reference; a grid of one
    program per tile must give the same numbers up to the order of the atomic adds."""
    programs = []
    real = moe_mod._programs
    monkeypatch.setattr(moe_mod, "_programs", lambda *a: programs.append((a[0], real(*a))) or programs[-1][1])
    check(257, 8, 96, 64, 4, torch.bfloat16, device, layout, config=cfg, seed=5)
    check(64, 5, 96, 64, 2, torch.float32, device, layout, config=cfg, seed=6)
    assert any(n < tiles for tiles, n in programs), f"no launch looped: (tiles, programs) = {programs}"
    assert all(1 <= n <= tiles for tiles, n in programs)


# ------------------------------------------------------------------ inline PTX, emulated
_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                 dtype=np.float32)


def _emulated_inline_asm(self, asm, constraints, values, types, is_pure, pack):
    """What `_E2M1X8_ASM_MUL` / `_FMA` compute, elementwise: (low nibble, high nibble) of each byte
    times its bf16 scale, exact in bf16 (test_dequant_bits.py proves the PTX does exactly this)."""
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    from gptoss_kernels import fused_moe_triton as tk

    assert asm in (tk._E2M1X8_ASM_MUL.value, tk._E2M1X8_ASM_FMA.value), "unexpected inline asm"
    wb, sbits = np.broadcast_arrays(values[0].data, values[1].data)
    scale = (sbits.astype(np.uint32) << 16).view(np.float32)
    outs = []
    for nib in (wb & 0xF, wb >> 4):
        v = _E2M1[nib] * scale
        outs.append(TensorHandle((v.view(np.uint32) >> 16).astype(np.uint16), tl.bfloat16))

    class Call:
        def get_result(self, i):
            return outs[i]

    return Call()


@pytest.mark.skipif(ON_CUDA, reason="on CUDA the real PTX runs (test_layouts_match_reference)")
@pytest.mark.parametrize("dequant", [1, 2])
@pytest.mark.parametrize("layout", ["k16", "checkpoint"])
def test_ptx_dequant_wiring_emulated(monkeypatch, layout, dequant):
    import triton.runtime.interpreter as interp

    monkeypatch.setattr(interp.InterpreterBuilder, "create_inline_asm", _emulated_inline_asm, raising=False)
    monkeypatch.setattr(moe_mod, "_INTERPRETER_PTX", True)
    for cfg in (TileConfig(16, 32, 64, 4, 1, split_k=2, dequant=dequant, evict_w=True),
                TileConfig(16, 32, 32, 4, 1, swap_ab=True, dequant=dequant)):
        check(7, 8, 96, 64, 4, torch.bfloat16, "cpu", layout, config=cfg, seed=dequant)
    # and the emulation is a real check: the halves swapped must fail
    real = _emulated_inline_asm

    def swapped(*a):
        call = real(*a)
        return type("C", (), {"get_result": lambda self, i: call.get_result(1 - i)})()

    monkeypatch.setattr(interp.InterpreterBuilder, "create_inline_asm", swapped, raising=False)
    with pytest.raises(AssertionError, match="relative error"):
        check(7, 8, 96, 64, 4, torch.bfloat16, "cpu", layout, config=TileConfig(16, 32, 64, 4, 1, dequant=dequant))
