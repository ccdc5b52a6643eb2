"""MXFP4 quantize / dequantize: layout and round-trip properties (plain torch)."""

import pytest
import torch

from gptoss_kernels.mxfp4 import E2M1_VALUES, dequantize, e8m0_to_float, quantize


def test_layout_low_nibble_is_even_element():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x21  # element 0: code 1 (0.5), element 1: code 2 (1.0)
    blocks[0, 1] = 0xF9  # element 2: code 9 (-0.5), element 3: code 15 (-6.0)
    scales = torch.tensor([128], dtype=torch.uint8)  # 2 ** 1
    v = dequantize(blocks, scales)
    assert v[:4].tolist() == [1.0, 2.0, -1.0, -12.0]
    assert v[4:].abs().sum() == 0


def test_every_code_and_scale():
    codes = torch.arange(16, dtype=torch.uint8)
    blocks = (codes[0::2] | (codes[1::2] << 4)).repeat(2).view(1, 16)
    for s in (100, 127, 140):
        v = dequantize(blocks, torch.tensor([s], dtype=torch.uint8))
        expect = torch.tensor(E2M1_VALUES * 2) * 2.0 ** (s - 127)
        assert torch.equal(v, expect)


def test_round_trip_is_exact_on_representable_values():
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(110, 140, (3, 5, 4), dtype=torch.uint8, generator=g)
    v = dequantize(blocks, scales)
    b2, s2 = quantize(v)
    assert torch.equal(dequantize(b2, s2), v)


def test_quantize_error_is_within_half_a_step():
    x = torch.randn(64, 256) * torch.logspace(-3, 2, 64).unsqueeze(1)
    blocks, scales = quantize(x)
    err = (dequantize(blocks, scales) - x).abs().unflatten(-1, (8, 32))
    scale = e8m0_to_float(scales).unsqueeze(-1)
    # the widest E2M1 step is 2 (between 4 and 6); saturation of [6, 8) costs at most 2 as well
    assert (err <= 2 * scale).all()
    amax = x.abs().unflatten(-1, (8, 32)).amax(-1, keepdim=True)
    assert ((err / amax) <= 0.5).all()


def test_flat_vllm_view_equals_block_view():
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 256, (2, 3, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(120, 130, (2, 3, 4), dtype=torch.uint8, generator=g)
    assert torch.equal(dequantize(blocks.flatten(-2), scales), dequantize(blocks, scales))


def test_bad_shapes_name_the_tensor():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.randn(4, 48))
    with pytest.raises(ValueError, match="blocks"):
        dequantize(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))


def test_package_imports_without_triton():
    """`import gptoss_kernels` must work where triton is missing (the kernels import it lazily)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['triton'] = None; import gptoss_kernels as g; "
            "assert callable(g.fused_moe) and callable(g.prepare_moe_weights); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
