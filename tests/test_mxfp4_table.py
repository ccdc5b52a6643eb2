"""MXFP4 encode/decode against hand-written tables (OCP MX spec v1.0, E2M1 and E8M0)."""

import math

import pytest
import torch

from gptoss_kernels.mxfp4 import dequantize, e8m0_to_float, pack_codes, quantize, unpack_codes

# All 16 E2M1 codes: sign bit 3, exponent bits 2-1, mantissa bit 0. Written out by hand.
E2M1_TABLE = {
    0b0000: 0.0, 0b0001: 0.5, 0b0010: 1.0, 0b0011: 1.5,
    0b0100: 2.0, 0b0101: 3.0, 0b0110: 4.0, 0b0111: 6.0,
    0b1000: -0.0, 0b1001: -0.5, 0b1010: -1.0, 0b1011: -1.5,
    0b1100: -2.0, 0b1101: -3.0, 0b1110: -4.0, 0b1111: -6.0,
}
# E8M0 scale bytes: value 2^(s-127); 255 is NaN.
E8M0_TABLE = {0: 2.0 ** -127, 1: 2.0 ** -126, 100: 2.0 ** -27, 126: 0.5, 127: 1.0, 128: 2.0, 130: 8.0,
              200: 2.0 ** 73, 254: 2.0 ** 127}


def _block_bytes(codes):
    """32 codes -> 16 bytes, even element in the low nibble (the checkpoint's order)."""
    return [codes[2 * i] | (codes[2 * i + 1] << 4) for i in range(16)]


@pytest.mark.parametrize("scale_byte", sorted(E8M0_TABLE))
def test_decode_every_code_at_each_scale(scale_byte):
    codes = list(range(16)) * 2  # every code twice, at even and odd positions
    blocks = torch.tensor([_block_bytes(codes)], dtype=torch.uint8)
    scales = torch.tensor([scale_byte], dtype=torch.uint8)
    got = dequantize(blocks, scales, torch.float64).tolist()  # 6 * 2^127 does not fit float32
    want = [E2M1_TABLE[c] * E8M0_TABLE[scale_byte] for c in codes]
    assert got == want
    # the sign of zero survives too
    assert math.copysign(1.0, got[8]) == -1.0


def test_e8m0_nan_and_extremes():
    s = torch.tensor([0, 127, 254, 255], dtype=torch.uint8)
    v = e8m0_to_float(s)
    assert v[0].item() == 2.0 ** -127 and v[1].item() == 1.0 and v[2].item() == 2.0 ** 127
    assert math.isnan(v[3].item())


def test_nibble_order_low_first():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x71  # element 0 -> code 1 (0.5), element 1 -> code 7 (6.0)
    vals = dequantize(blocks, torch.tensor([127], dtype=torch.uint8))
    assert vals[0].item() == 0.5 and vals[1].item() == 6.0 and vals[2:].abs().sum().item() == 0
    assert pack_codes(unpack_codes(blocks)).equal(blocks)


def test_flat_vllm_layout_decodes_the_same():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (3, 5, 4), dtype=torch.uint8, generator=g)
    assert dequantize(blocks.flatten(-2), scales).equal(dequantize(blocks, scales))


@pytest.mark.parametrize("scale_exp", [-127, -100, -3, 0, 5, 100, 125])  # 6 * 2^125 is float32's top
def test_encode_exact_values_round_trip(scale_exp):
    """Every representable value (each code times a shared power of two) encodes to itself."""
    mags = torch.tensor([E2M1_TABLE[c] for c in range(16)] * 2, dtype=torch.float64)
    x = (mags * 2.0 ** scale_exp).unsqueeze(0)
    blocks, scales = quantize(x.float())
    assert scales.item() == scale_exp + 127 if scale_exp > -127 else scales.item() == 0
    back = dequantize(blocks, scales, torch.float64)
    assert back.equal(x)


def test_encode_scale_rule_and_rounding():
    # amax 5.0 -> scale 2^(floor(log2 5) - 2) = 1: values round to the nearest E2M1, ties to even codes
    x = torch.tensor([[5.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] + [0.0] * 24])
    blocks, scales = quantize(x)
    assert scales.item() == 127
    got = dequantize(blocks, scales)[0, :8].tolist()
    # 0.25 -> 0 (tie 0/0.5 -> even code 0); 0.75 -> 1.0 (tie 0.5/1.0 -> code 2); 1.25 -> 1.0 (code 2);
    # 1.75 -> 2.0 (code 4); 2.5 -> 2.0 (code 4); 3.5 -> 4.0 (code 6); 5.0 -> 4.0 (tie 4/6 -> code 6)
    assert got == [4.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_encode_saturates_and_errors():
    x = torch.tensor([[7.9] + [0.0] * 31])  # amax 7.9 -> scale 1, 7.9 saturates to 6
    blocks, scales = quantize(x)
    assert dequantize(blocks, scales)[0, 0].item() == 6.0
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.ones(1, 48))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(1, 16, dtype=torch.int32), torch.zeros(1, dtype=torch.uint8))
