"""The three ways our MXFP4 method runs the experts, behind one small interface.

- `torch_moe`: `gptoss_kernels.moe_reference` (one expert dequantized at a time, float32 math),
  registered as a torch custom op so that vLLM's torch.compile on the CPU treats it as one opaque
  call instead of tracing its data-dependent loop over experts.
- `triton_moe`: `gptoss_kernels.fused_moe` on weights repacked once by `prepare_moe_weights`.
- `cpu_native_moe`: the native C++ kernel of `gptoss_kernels.cpu` (whole MoE in one call, MXFP4
  dequantized in registers), on the CPU when it builds; `VLLM_GPTOSS_CPU_NATIVE=0` switches it off.
  It is compiled once per machine into `$VLLM_GPTOSS_CACHE/native/<key>` (default
  ~/.cache/vllm-gptoss), under a file lock so concurrent workers never race. Without a compiler (or
  if the build fails) one warning names what is missing and the torch path runs, as before.
"""

from __future__ import annotations

import logging
import os

import torch

from gptoss_kernels.reference import moe_reference

from .envs import CPU_AMX as CPU_AMX_ENV  # "0" keeps the native MoE off AMX tiles
from .envs import CPU_MARCH as CPU_MARCH_ENV  # gcc -march of the native build (default native)
from .envs import CPU_NATIVE as CPU_NATIVE_ENV  # "0" forces the torch path on the CPU
from .envs import CPU_PREFETCH as CPU_PREFETCH_ENV  # l1 / l2: where the native decode loops prefetch
from .envs import TRITON_MOE as USE_TRITON_ENV  # "0" forces the torch path on CUDA
from .envs import cache_root

logger = logging.getLogger(__name__)


@torch.library.custom_op("vllm_gptoss::moe_torch", mutates_args=())
def torch_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              w13: torch.Tensor, w13_scale: torch.Tensor, w13_bias: torch.Tensor,
              w2: torch.Tensor, w2_scale: torch.Tensor, w2_bias: torch.Tensor,
              alpha: float, limit: float) -> torch.Tensor:
    return moe_reference(x, topk_weights, topk_ids, w13, w13_scale, w13_bias, w2, w2_scale, w2_bias,
                         alpha=alpha, limit=limit)


@torch_moe.register_fake
def _(x, topk_weights, topk_ids, w13, w13_scale, w13_bias, w2, w2_scale, w2_bias, alpha, limit):
    return torch.empty_like(x)


def _triton_wanted(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get(USE_TRITON_ENV, "1") == "0":
        return False
    try:
        import triton  # noqa: F401  (gptoss_kernels imports it lazily, on the first kernel launch)
    except ImportError:
        return False
    return True


def triton_min_capability() -> int:
    """The lowest compute capability (as vLLM writes it: 75 for sm_75) our MXFP4 method can serve
    on: the fused kernels' minimum (gptoss_kernels.capability), or vLLM's own floor (70) when
    VLLM_GPTOSS_TRITON_MOE=0 selects the torch path, which runs on any CUDA GPU."""
    if os.environ.get(USE_TRITON_ENV, "1") == "0":
        return 70
    from gptoss_kernels.capability import MIN_CAPABILITY

    return MIN_CAPABILITY[0] * 10 + MIN_CAPABILITY[1]


def check_triton_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Stop loading, naming the GPU and the ways out, where the fused kernels cannot run this
    dtype (gptoss_kernels.capability: the same rule `fused_moe` launches by)."""
    from gptoss_kernels.capability import device_capability, kernel_variant

    variant = kernel_variant(device_capability(device), dtype)
    if not variant.supported:
        raise ValueError(
            f"vllm-gptoss: {torch.cuda.get_device_name(device)}: {variant.reason}. Other ways out: "
            f"{USE_TRITON_ENV}=0 (our torch MXFP4 path, slow) or VLLM_GPTOSS_DISABLE=1 (vLLM's own gpt-oss).")


def maybe_prepare_triton(layer):
    """Repack the layer's MXFP4 experts for the Triton kernels, or None for the torch path."""
    if not _triton_wanted(layer.w13_weight.device):
        return None
    import gptoss_kernels

    check_triton_supported(layer.w13_weight.device, layer.moe_config.in_dtype)
    prepared = gptoss_kernels.prepare_moe_weights(
        layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
        layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    logger.info("vllm-gptoss: MoE layer %s uses the fused Triton MXFP4 kernels", getattr(layer, "layer_name", ""))
    return prepared


def triton_moe(x, topk_weights, topk_ids, prepared, alpha: float, limit: float) -> torch.Tensor:
    import gptoss_kernels

    return gptoss_kernels.fused_moe(x, topk_weights, topk_ids, prepared, alpha=alpha, limit=limit)


# ------------------------------------------------------------------------------ native CPU kernel
_native = None          # gptoss_kernels.cpu.NativeKernels once loaded in this process
_native_error = None    # why it is unavailable (warned once)


def native_cache_root() -> str:
    return str(cache_root() / "native")


def cpu_prefetch_setting() -> str | None:
    """VLLM_GPTOSS_CPU_PREFETCH as `gptoss_kernels.cpu.load` takes it: None for auto (its per-CPU
    default), else "l1" / "l2"; anything else is refused, naming the values."""
    from gptoss_kernels.cpu import PREFETCH_HINTS

    setting = os.environ.get(CPU_PREFETCH_ENV, "auto").strip().lower() or "auto"
    if setting == "auto":
        return None
    if setting not in PREFETCH_HINTS:
        raise ValueError(f"{CPU_PREFETCH_ENV}={os.environ[CPU_PREFETCH_ENV]!r}: expected one of "
                         f"{['auto', *sorted(PREFETCH_HINTS)]}")
    return setting


def cpu_march_setting() -> str:
    """VLLM_GPTOSS_CPU_MARCH: gcc's -march for the native build ("native" unless set); gcc judges the
    value (a bad one fails the build: one warning, then the torch path)."""
    return os.environ.get(CPU_MARCH_ENV, "").strip() or "native"


def cpu_amx_setting() -> str:
    """VLLM_GPTOSS_CPU_AMX: "auto" (unset: the AMX path where the build has it) or "0"; anything
    else is refused, naming the values."""
    setting = os.environ.get(CPU_AMX_ENV, "auto").strip().lower() or "auto"
    if setting not in ("auto", "0"):
        raise ValueError(f"{CPU_AMX_ENV}={os.environ[CPU_AMX_ENV]!r}: expected one of ['0', 'auto']")
    return setting


def cpu_native_kernel():
    """The native CPU MoE kernel (built on first use, once per machine), or None after one warning."""
    global _native, _native_error
    if _native is not None or _native_error is not None:
        return _native
    from gptoss_kernels import cpu as native_cpu

    prefetch = cpu_prefetch_setting()  # a bad value is the user's error, not a missing compiler
    amx = cpu_amx_setting()
    try:
        _native = native_cpu.load(native_cache_root(), march=cpu_march_setting(), prefetch=prefetch)
    except native_cpu.NativeUnavailable as e:
        _native_error = str(e)
        logger.warning("vllm-gptoss: the native CPU MoE kernel is not available: %s. The MXFP4 experts run "
                       "on the torch path instead (correct, much slower). %s=0 selects it without this "
                       "warning.", e, CPU_NATIVE_ENV)
        return None
    # AMX CPUs: experts with 8+ tokens of a call (prefill) multiply on tiles, where vLLM-CPU's own
    # bf16 MoE does too; enable_amx checks the path against the AVX-512 one first
    if amx == "auto" and _native.amx_built:
        try:
            _native.enable_amx()
        except native_cpu.NativeUnavailable as e:
            logger.warning("vllm-gptoss: the native MoE's AMX path is off: %s. Experts with many tokens run on "
                           "AVX512_BF16 dot products instead (correct, slower for prefill).", e)
    logger.info("vllm-gptoss: native CPU MoE kernel loaded (%s path%s, weights prefetched into %s, %s)",
                _native.isa, ", AMX tiles for 8+ tokens an expert" if _native.amx else "",
                _native.prefetch.upper(), _native.path)
    return _native


class CpuNativeWeights:
    """What the native kernel needs beyond the layer's MXFP4 parameters: float32 biases (a few MB).
    The experts' E2M1 codes are rewritten in place, once, into the row-group layout the kernel reads
    (`NativeKernels.pack_experts`, a few experts at a time: no second copy of the experts is held);
    the scales stay as loaded."""

    def __init__(self, layer, native):
        self.w13_bias = layer.w13_bias.detach().to(torch.float32).contiguous()
        self.w2_bias = layer.w2_bias.detach().to(torch.float32).contiguous()
        native.pack_experts(layer.w13_weight.data, inplace=True)
        native.pack_experts(layer.w2_weight.data, inplace=True)


def maybe_prepare_cpu_native(layer):
    """CpuNativeWeights when the layer's experts are on the CPU and the native kernel is usable, else None."""
    if layer.w13_weight.device.type != "cpu" or os.environ.get(CPU_NATIVE_ENV, "1") == "0":
        return None
    if cpu_native_kernel() is None:
        return None
    for name in ("w13_weight", "w13_weight_scale", "w2_weight", "w2_weight_scale"):
        if not getattr(layer, name).is_contiguous():
            raise ValueError(f"vllm-gptoss: MoE parameter {name} is not contiguous; the native CPU kernel reads it in place")
    return CpuNativeWeights(layer, cpu_native_kernel())


@torch.library.custom_op("vllm_gptoss::moe_cpu_native", mutates_args=())
def cpu_native_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                   w13: torch.Tensor, w13_scale: torch.Tensor, w13_bias: torch.Tensor,
                   w2: torch.Tensor, w2_scale: torch.Tensor, w2_bias: torch.Tensor,
                   alpha: float, limit: float) -> torch.Tensor:
    native = cpu_native_kernel()
    if native is None:
        raise RuntimeError(f"the native CPU MoE kernel is not available: {_native_error}")
    return native.moe(x, topk_weights, topk_ids, w13, w13_scale, w13_bias, w2, w2_scale, w2_bias, alpha, limit)


@cpu_native_moe.register_fake
def _(x, topk_weights, topk_ids, w13, w13_scale, w13_bias, w2, w2_scale, w2_bias, alpha, limit):
    return torch.empty_like(x)
