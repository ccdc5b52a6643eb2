"""The inline-PTX E2M1 -> bf16 dequantization, replayed instruction by instruction on the CPU.

Triton's interpreter cannot run inline PTX, and no GPU runs in CI, so this test executes the exact
assembly text the kernels embed (both variants: `mul.rn.bf16x2` for sm_90+, `fma.rn.bf16x2` with a
-0.0 addend for sm_80+) with a tiny interpreter of the instructions it uses, on every packed byte
value and a spread of E8M0 scales, and compares with `gptoss_kernels.dequantize` (the table-tested
MXFP4 codec). The bf16 arithmetic is emulated exactly: products of the operands here are exact in
float64, then rounded to bf16 with round-half-to-even, as PTX's .rn does.
"""

import re

import numpy as np
import pytest
import torch

from gptoss_kernels import dequantize


def _bf16_to_f64(bits: int) -> float:
    return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])


def _f64_to_bf16(x: float) -> int:
    """Round to bf16 (nearest, ties to even) via float32 bits; NaN/inf kept."""
    f = np.array([x], dtype=np.float32)  # exact here: every value of this test fits float32
    assert float(f[0]) == x or not np.isfinite(f[0]), x
    u = int(f.view(np.uint32)[0])
    if (u & 0x7F800000) == 0x7F800000:
        return u >> 16
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16) & 0xFFFF


def _bf16x2(op, a: int, b: int, c: int | None = None) -> int:
    out = 0
    for half in (0, 16):
        x, y = _bf16_to_f64((a >> half) & 0xFFFF), _bf16_to_f64((b >> half) & 0xFFFF)
        r = x * y
        if c is not None:
            z = _bf16_to_f64((c >> half) & 0xFFFF)
            r = r + z if not (r == 0 and z == 0) else (-0.0 if (np.signbit(r) and np.signbit(z)) else 0.0)
        out |= _f64_to_bf16(r) << half
    return out


def _prmt(a: int, b: int, sel: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 0x7] << (8 * i) for i in range(4))


def run_ptx(asm: str, inputs: dict[str, int]) -> dict[str, int]:
    """Execute the handful of PTX instructions the dequantization uses, on 32-bit registers."""
    regs = dict(inputs)
    val = lambda t: int(t, 16) if t.startswith("0x") else (int(t) if t.isdigit() else regs[t])  # noqa: E731
    body = asm.strip().strip("{}")
    for stmt in [s.strip() for s in body.split(";") if s.strip()]:
        if stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        args = [x.strip() for x in rest.split(",")]
        d, srcs = args[0], [val(x) for x in args[1:]]
        M = 0xFFFFFFFF
        if op == "mov.b32":
            r = srcs[0]
        elif op == "and.b32":
            r = srcs[0] & srcs[1]
        elif op == "or.b32":
            r = srcs[0] | srcs[1]
        elif op == "shr.b32":
            r = srcs[0] >> srcs[1]
        elif op == "shl.b32":
            r = (srcs[0] << srcs[1]) & M
        elif op == "prmt.b32":
            r = _prmt(*srcs)
        elif op == "mul.rn.bf16x2":
            r = _bf16x2("mul", srcs[0], srcs[1])
        elif op == "fma.rn.bf16x2":
            r = _bf16x2("fma", srcs[0], srcs[1], srcs[2])
        else:
            raise AssertionError(f"instruction not emulated: {stmt}")
        regs[d] = r & M
    return regs


def _scale_bits(s: int) -> int:
    """The bf16 scale operand the kernel builds: 2**(s-127) as bf16 bits (0x40 = 2**-127 for s=0)."""
    return 0x40 if s == 0 else (s << 7) & 0xFFFF


@pytest.mark.parametrize("variant", ["mul", "fma"])
def test_inline_ptx_dequant_matches_dequantize(variant):
    from gptoss_kernels import fused_moe_triton as tk

    asm = (tk._E2M1X8_ASM_MUL if variant == "mul" else tk._E2M1X8_ASM_FMA).value
    assert ("mul.rn.bf16x2" in asm) == (variant == "mul") and ("fma.rn.bf16x2" in asm) == (variant == "fma")
    rng = np.random.default_rng(0)
    scales = [0, 1, 2, 100, 126, 127, 128, 200, 250] + rng.integers(0, 251, 6).tolist()
    byte_values = np.arange(256, dtype=np.uint8)
    for s in scales:
        # 256 bytes = 64 groups of 4 bytes (what one asm call gets with pack=4); two different
        # scales in the two register halves catch a swap of $5 and $6
        s2 = (s + 37) % 251
        for g in range(0, 256, 4):
            b = byte_values[g:g + 4]
            word = int(b.astype(np.uint32) @ np.array([1, 1 << 8, 1 << 16, 1 << 24], dtype=np.uint32))
            sc01 = _scale_bits(s) | (_scale_bits(s) << 16)
            sc23 = _scale_bits(s2) | (_scale_bits(s2) << 16)
            out = run_ptx(asm, {"$4": word, "$5": sc01, "$6": sc23})
            lo = [out["$0"] & 0xFFFF, out["$0"] >> 16, out["$1"] & 0xFFFF, out["$1"] >> 16]
            hi = [out["$2"] & 0xFFFF, out["$2"] >> 16, out["$3"] & 0xFFFF, out["$3"] >> 16]
            # expected: each byte's low nibble (even element) and high nibble (odd), with the scale
            # of its register half, through the reference codec
            for i in range(4):
                scale = s if i < 2 else s2
                ref = dequantize(torch.tensor([[b[i]] * 16], dtype=torch.uint8),
                                 torch.tensor([[scale]], dtype=torch.uint8), torch.float32)[0]
                want_lo, want_hi = float(ref[0]), float(ref[1])
                got_lo, got_hi = _bf16_to_f64(lo[i]), _bf16_to_f64(hi[i])
                assert got_lo == want_lo and np.signbit(got_lo) == np.signbit(want_lo), \
                    f"{variant}: byte {b[i]:#04x} scale {scale}: low nibble {got_lo} != {want_lo}"
                assert got_hi == want_hi and np.signbit(got_hi) == np.signbit(want_hi), \
                    f"{variant}: byte {b[i]:#04x} scale {scale}: high nibble {got_hi} != {want_hi}"


def test_emulator_catches_a_wrong_selector():
    """The replay is a real check: the same asm with one prmt selector changed disagrees."""
    from gptoss_kernels import fused_moe_triton as tk

    broken = tk._E2M1X8_ASM_FMA.value.replace("0x3424", "0x1404")
    word = 0x12345678
    good = run_ptx(tk._E2M1X8_ASM_FMA.value, {"$4": word, "$5": 0x3F803F80, "$6": 0x3F803F80})
    bad = run_ptx(broken, {"$4": word, "$5": 0x3F803F80, "$6": 0x3F803F80})
    assert (good["$1"], good["$3"]) != (bad["$1"], bad["$3"])
    assert re.search(r"fma\.rn\.bf16x2 \S+, \S+, \S+, z;", tk._E2M1X8_ASM_FMA.value)
