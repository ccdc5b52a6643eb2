"""Which dense bf16 layers the plugin gives its native decode GEMV (cpu_dense.maybe_take_gemm), per
VLLM_GPTOSS_CPU_DENSE_GEMV and CPU: by default only on CPUs without AMX (on an AMX Xeon oneDNN's
packed GEMM was measured faster), never below 1 MiB unless `all`, never with `0`; on AVX-512 CPUs
without AVX512_BF16 the native GEMM for every call."""

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


def _use(monkeypatch, kernel, setting):
    """`kernel` as the plugin's native kernel, VLLM_GPTOSS_CPU_DENSE_GEMV = setting (None: unset)."""
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel", lambda: kernel)
    monkeypatch.delenv("VLLM_GPTOSS_CPU_NATIVE", raising=False)
    if setting is None:
        monkeypatch.delenv("VLLM_GPTOSS_CPU_DENSE_GEMV", raising=False)
    else:
        monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", setting)


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
    _use(monkeypatch, types.SimpleNamespace(gemv_max_tokens=8, has_amx=amx, isa="avx512_bf16"), setting)
    layer = _layer(rows)
    assert cpu_dense.maybe_take_gemm(layer) is taken
    assert hasattr(layer, "cpu_linear") is taken
    assert getattr(layer, cpu_dense.NATIVE_GEMM_ATTR, False) is taken


@pytest.mark.parametrize("value", ["yes", "2", "on"])
def test_unknown_setting_is_refused(monkeypatch, value):
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel",
                        lambda: types.SimpleNamespace(gemv_max_tokens=8, has_amx=False, isa="avx512_bf16"))
    monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", value)
    with pytest.raises(ValueError, match=r"VLLM_GPTOSS_CPU_DENSE_GEMV='%s': expected one of 0, auto, 1, all" % value):
        cpu_dense.maybe_take_gemm(_layer(512))


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_no_gemv_build_takes_nothing(monkeypatch, isa):
    """AVX2-only and scalar builds: vLLM's own dispatch runs (on AVX2 it falls back to torch's linear,
    which maybe_use_native_linear replaces afterwards)."""
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel",
                        lambda: types.SimpleNamespace(gemv_max_tokens=0, has_amx=False, isa=isa))
    monkeypatch.setenv("VLLM_GPTOSS_CPU_DENSE_GEMV", "all")
    assert cpu_dense.maybe_take_gemm(_layer(512)) is False


class _RecordingKernel:
    """A native kernel that records the token counts of its linear calls (and computes them)."""

    def __init__(self, isa, gemv_max_tokens):
        self.isa, self.gemv_max_tokens, self.has_amx = isa, gemv_max_tokens, False
        self.calls = []

    def linear(self, x, weight, bias):
        self.calls.append(x.shape[0])
        return torch.nn.functional.linear(x.float(), weight.float(), bias).to(x.dtype)


@pytest.mark.parametrize("setting,taken", [(None, True), ("auto", True), ("1", True), ("0", False)])
def test_avx512_without_bf16_takes_native_gemm_for_every_call(monkeypatch, setting, taken):
    """AVX-512 without AVX512_BF16 (no GEMV in the build): oneDNN's bf16 matmul is its slow
    gemm:jit:bf16 there, so the native GEMM takes calls of any size, prefill chunks above
    NATIVE_MAX_TOKENS included; an AVX512_BF16 build sends those to torch's linear instead."""
    fake = _RecordingKernel("avx512", 0)
    _use(monkeypatch, fake, setting)
    layer = _layer(512)
    assert cpu_dense.maybe_take_gemm(layer) is taken
    if not taken:
        return
    g = torch.Generator().manual_seed(3)
    for T in (1, 7, cpu_dense.NATIVE_MAX_TOKENS + 44):
        x = torch.randn(T, 2880, generator=g).to(torch.bfloat16)
        y = layer.cpu_linear(x, layer.weight, layer.bias)
        want = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
        assert ((y.float() - want).norm() / want.norm()).item() < 1e-2
    assert fake.calls == [1, 7, cpu_dense.NATIVE_MAX_TOKENS + 44]

    bf16 = _RecordingKernel("avx512_bf16", 2)
    monkeypatch.setattr(cpu_dense, "cpu_native_kernel", lambda: bf16)
    layer = _layer(512)
    assert cpu_dense.maybe_take_gemm(layer)
    layer.cpu_linear(torch.randn(cpu_dense.NATIVE_MAX_TOKENS + 44, 2880).to(torch.bfloat16), layer.weight, layer.bias)
    assert bf16.calls == []
