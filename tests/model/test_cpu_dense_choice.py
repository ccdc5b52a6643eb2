"""Which dense bf16 layers the plugin gives its native decode GEMV (cpu_dense.maybe_take_gemm), per
VLLM_GPTOSS_CPU_DENSE_GEMV and CPU: by default only on CPUs without AMX (on an AMX Xeon oneDNN's
packed GEMM was measured faster), never below 1 MiB unless `all`, never with `0`."""

from __future__ import annotations

import types

import pytest
import torch

from vllm_gptoss import cpu_dense


def _layer(rows: int, cols: int = 2880) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(rows, cols).to(torch.bfloat16), requires_grad=False)
    layer.bias = torch.nn.Parameter(torch.randn(rows).to(torch.bfloat16), requires_grad=False)
    return layer


@pytest.mark.parametrize("setting,amx,rows,taken", [
    (None, False, 512, True),     # default, no AMX, 2.8 MiB layer
    ("auto", False, 512, True),
    (None, True, 512, False),     # default on AMX: vLLM's oneDNN GEMM stays
    ("1", True, 512, True),       # forced on AMX
    ("0", False, 512, False),
    (None, False, 64, False),     # 360 KiB: below the 1 MiB floor
    ("all", True, 64, True),      # small layers too, AMX too
])
def test_gemv_choice(monkeypatch, setting, amx, rows, taken):
    fake = types.SimpleNamespace(gemv_max_tokens=8, has_amx=amx)
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel", lambda: fake)
    monkeypatch.delenv("VLLM_GPTOSS_CPU_NATIVE", raising=False)
    if setting is None:
        monkeypatch.delenv("VLLM_GPTOSS_CPU_DENSE_GEMV", raising=False)
    else:
        monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", setting)
    layer = _layer(rows)
    assert cpu_dense.maybe_take_gemm(layer) is taken
    assert hasattr(layer, "cpu_linear") is taken
    assert getattr(layer, cpu_dense.NATIVE_GEMM_ATTR, False) is taken


@pytest.mark.parametrize("value", ["yes", "2", "on"])
def test_unknown_setting_is_refused(monkeypatch, value):
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel", lambda: types.SimpleNamespace(gemv_max_tokens=8, has_amx=False))
    monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", value)
    with pytest.raises(ValueError, match=r"VLLM_GPTOSS_CPU_DENSE_GEMV='%s': expected one of 0, auto, 1, all" % value):
        cpu_dense.maybe_take_gemm(_layer(512))


def test_no_gemv_build_takes_nothing(monkeypatch):
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel", lambda: types.SimpleNamespace(gemv_max_tokens=0, has_amx=False))
    monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", "all")
    assert cpu_dense.maybe_take_gemm(_layer(512)) is False
