"""The capability rule (gptoss_kernels.capability) and that `pick_config` follows it, so that the
config it returns is exactly what `fused_moe` launches on that GPU."""

import pytest
import torch

from gptoss_kernels import capability as cap
from gptoss_kernels import moe as moe_mod

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize("cc,dtype,supported,dequant", [
    ((7, 0), FP16, False, None),                 # Volta: no tl.dot path we build for
    ((7, 5), FP16, True, cap.DEQUANT_PLAIN),     # T4: fp16 tensor cores
    ((7, 5), FP32, True, cap.DEQUANT_PLAIN),
    ((7, 5), BF16, False, None),                 # no bf16 on Turing
    ((8, 0), BF16, True, cap.DEQUANT_PTX_FMA),   # A100: no mul.bf16x2 before sm_90
    ((8, 6), BF16, True, cap.DEQUANT_PTX_FMA),   # A10, RTX 30xx
    ((8, 9), BF16, True, cap.DEQUANT_PTX_FMA),   # L4, RTX 40xx
    ((8, 9), FP16, True, cap.DEQUANT_PLAIN),
    ((9, 0), BF16, True, cap.DEQUANT_PTX_MUL),   # H100 / H200
    ((10, 0), BF16, True, cap.DEQUANT_PTX_MUL),  # B200
    ((12, 0), BF16, True, cap.DEQUANT_PTX_MUL),  # RTX 50xx
    ((12, 0), FP16, True, cap.DEQUANT_PLAIN),
    (None, BF16, True, cap.DEQUANT_PLAIN),       # Triton's interpreter cannot run inline PTX
])
def test_kernel_variant(cc, dtype, supported, dequant, monkeypatch):
    monkeypatch.delenv(cap.FAST_DEQUANT_ENV, raising=False)
    v = cap.kernel_variant(cc, dtype)
    assert v.supported is supported, v
    if supported:
        assert v.dequant == dequant, v
    else:
        assert f"sm_{cc[0]}{cc[1]}" in v.reason


def test_unsupported_reasons_name_the_way_out():
    assert "--dtype float16" in cap.kernel_variant((7, 5), BF16).reason
    assert "sm_75" in cap.kernel_variant((6, 1), FP16).reason
    assert not cap.kernel_variant((9, 0), torch.int8).supported


def test_fast_dequant_switch(monkeypatch):
    monkeypatch.setenv(cap.FAST_DEQUANT_ENV, "0")
    assert cap.kernel_variant((9, 0), BF16).dequant == cap.DEQUANT_PLAIN
    monkeypatch.setenv(cap.FAST_DEQUANT_ENV, "fma")  # the sm_80 sequence, checkable on a Hopper GPU
    assert cap.kernel_variant((9, 0), BF16).dequant == cap.DEQUANT_PTX_FMA
    assert cap.kernel_variant((9, 0), FP16).dequant == cap.DEQUANT_PLAIN


@pytest.mark.parametrize("cc", cap.BUILD_TARGETS)
@pytest.mark.parametrize("dtype", [BF16, FP16, FP32])
def test_pick_config_follows_the_rule(cc, dtype, monkeypatch):
    """Outside the interpreter, pick_config's dequantization is the rule's, for every tile regime;
    an unsupported GPU/dtype raises with the rule's reason."""
    monkeypatch.setattr(moe_mod, "_interpreting", lambda: False)
    monkeypatch.delenv(cap.FAST_DEQUANT_ENV, raising=False)
    v = cap.kernel_variant(cc, dtype)
    for T in (1, 8, 256, 2048):
        if not v.supported:
            with pytest.raises(RuntimeError, match="--dtype float16"):
                moe_mod.pick_config(T, 4, 32, dtype, cc)
            continue
        assert moe_mod.pick_config(T, 4, 32, dtype, cc).dequant == v.dequant


def test_pick_config_in_the_interpreter_is_plain():
    # tests/conftest.py sets TRITON_INTERPRET=1: whatever GPU is named, the interpreter runs no PTX
    assert moe_mod._interpreting()
    assert moe_mod.pick_config(1, 4, 32, BF16, (9, 0)).dequant == cap.DEQUANT_PLAIN


def test_method_minimum_capability(monkeypatch):
    from vllm_gptoss import moe_ops
    from vllm_gptoss.mxfp4_method import GptOssMxfp4Config

    monkeypatch.delenv(moe_ops.USE_TRITON_ENV, raising=False)
    assert GptOssMxfp4Config.get_min_capability() == 75
    monkeypatch.setenv(moe_ops.USE_TRITON_ENV, "0")  # the torch path: any GPU vLLM runs on
    assert GptOssMxfp4Config.get_min_capability() == 70


def test_method_refuses_bf16_on_turing_naming_the_gpu(monkeypatch):
    from vllm_gptoss import moe_ops

    monkeypatch.setattr("gptoss_kernels.capability.device_capability", lambda device: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError) as e:
        moe_ops.check_triton_supported(torch.device("cuda", 0), BF16)
    msg = str(e.value)
    assert "Tesla T4" in msg and "--dtype float16" in msg and "VLLM_GPTOSS_TRITON_MOE=0" in msg
    moe_ops.check_triton_supported(torch.device("cuda", 0), FP16)  # fp16 on a T4: fine
