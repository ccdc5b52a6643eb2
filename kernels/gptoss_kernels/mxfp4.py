"""MXFP4 (OCP microscaling FP4) encode/decode in plain torch, in the gpt-oss checkpoint layout.

Layout (as in openai/gpt-oss-20b/-120b safetensors):
  blocks: uint8 [..., K/32, 16]  two E2M1 codes per byte, LOW nibble = EVEN element
  scales: uint8 [..., K/32]      E8M0: value = 2 ** (s - 127)
An element is E2M1_VALUES[code] * 2 ** (scale - 127).
"""

from __future__ import annotations

import torch

BLOCK = 32  # elements sharing one E8M0 scale
E8M0_BIAS = 127
E2M1_MAX = 6.0
E2M1_EMAX = 2  # 6.0 = 1.5 * 2**2

# code -> value; bit 3 is the sign, bits 0-2 index the magnitudes below.
E2M1_VALUES = (
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)


def _check_k(name: str, k: int) -> None:
    if k % BLOCK:
        raise ValueError(f"{name}: the last dimension must be a multiple of {BLOCK} for MXFP4, found {k}")


def e2m1_lut(device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(E2M1_VALUES, dtype=dtype, device=device)


def e8m0_to_float(scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 E8M0 -> powers of two in `dtype` (255 is NaN in the OCP spec)."""
    if scales.dtype != torch.uint8:
        raise TypeError(f"scales: expected dtype uint8, found {scales.dtype}")
    exp = scales.to(torch.int32) - E8M0_BIAS
    out = torch.ldexp(torch.ones_like(exp, dtype=dtype), exp)
    return torch.where(scales == 255, torch.full_like(out, float("nan")), out)


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n, 16] -> uint8 codes [..., n, 32] (low nibble first)."""
    if blocks.dtype != torch.uint8:
        raise TypeError(f"blocks: expected dtype uint8, found {blocks.dtype}")
    lo = blocks & 0x0F
    hi = blocks >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., n, 32] -> uint8 [..., n, 16] (even element in the low nibble)."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks [..., K/32, 16] uint8, scales [..., K/32] uint8 -> [..., K] in `dtype`.

    Also accepts blocks already flattened to [..., K/2] (vLLM's parameter view).
    """
    if blocks.dim() == scales.dim():  # [..., K/2] form
        if blocks.shape[-1] != scales.shape[-1] * 16:
            raise ValueError(
                f"blocks [..., K/2] and scales [..., K/32] disagree: blocks {tuple(blocks.shape)}, "
                f"scales {tuple(scales.shape)}")
        blocks = blocks.unflatten(-1, (scales.shape[-1], 16))
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(
            f"blocks must be [..., K/32, 16] matching scales [..., K/32]: "
            f"blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}")
    # float32 math (float64 when asked for): 6 * 2^127 overflows float32, as it would in any kernel
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    # one gather per byte: a 256 x 2 table holds (low-nibble value, high-nibble value) of every byte
    if blocks.dtype != torch.uint8:
        raise TypeError(f"blocks: expected dtype uint8, found {blocks.dtype}")
    lut = _byte_lut(blocks.device, math_dtype)
    vals = lut.index_select(0, blocks.reshape(-1).to(torch.int32))  # [bytes, 2]
    vals = vals.view(*scales.shape, BLOCK)  # [..., n, 32]
    vals = vals * e8m0_to_float(scales, math_dtype).unsqueeze(-1)
    return vals.flatten(-2).to(dtype)


_BYTE_LUTS: dict = {}


def _byte_lut(device, dtype) -> torch.Tensor:
    key = (str(device), dtype)
    if key not in _BYTE_LUTS:
        codes = torch.arange(256, dtype=torch.int64)
        lut = e2m1_lut(None, dtype)
        _BYTE_LUTS[key] = torch.stack((lut[codes & 0x0F], lut[codes >> 4]), dim=-1).to(device)
    return _BYTE_LUTS[key]


# Magnitude code = how many midpoints between neighbouring E2M1 magnitudes lie below |x|. A value
# exactly on a midpoint goes to the even code (round-half-to-even, as the OCP spec rounds): that is
# down at 0.25, 1.25, 2.5 and 5 (to codes 0, 2, 4, 6) and up at 0.75, 1.75 and 3.5 (to codes 2, 4, 6).
# Anything above 5 saturates to 6.0 (code 7). Seven compares per element, no [..., 8] temporaries.
_MIDPOINTS_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)
_MIDPOINTS_TIE_UP = (0.75, 1.75, 3.5)


def _round_to_e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """float32 values already divided by the block scale -> E2M1 codes, round-half-to-even, saturating."""
    a = x.abs()
    code = torch.zeros(a.shape, dtype=torch.uint8, device=x.device)
    for t in _MIDPOINTS_TIE_DOWN:
        code += a > t
    for t in _MIDPOINTS_TIE_UP:
        code += a >= t
    sign = ((x < 0) & (code != 0)).to(torch.uint8) << 3
    return code | sign


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] float -> (blocks [..., K/32, 16] uint8, scales [..., K/32] uint8).

    The scale follows the OCP MX spec: 2 ** (floor(log2(amax)) - 2), so the largest element of a
    block lands in [4, 8) before saturating to 6. All-zero blocks get the smallest scale (code 0).
    """
    _check_k("x", x.shape[-1])
    xf = x.detach().to(torch.float32).unflatten(-1, (x.shape[-1] // BLOCK, BLOCK))
    amax = xf.abs().amax(dim=-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - E2M1_EMAX, torch.full_like(amax, -E8M0_BIAS))
    exp = exp.clamp(-E8M0_BIAS, 127)
    scales = (exp + E8M0_BIAS).to(torch.uint8)
    scaled = xf / torch.ldexp(torch.ones_like(exp), exp.to(torch.int32)).unsqueeze(-1)
    codes = _round_to_e2m1_codes(scaled)
    return pack_codes(codes), scales
