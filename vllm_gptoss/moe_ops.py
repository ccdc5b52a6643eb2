"""The two ways our MXFP4 method runs the experts, behind one small interface.

- `torch_moe`: `gptoss_kernels.moe_reference` (one expert dequantized at a time, float32 math),
  registered as a torch custom op so that vLLM's torch.compile on the CPU treats it as one opaque
  call instead of tracing its data-dependent loop over experts.
- `triton_moe`: `gptoss_kernels.fused_moe` on weights repacked once by `prepare_moe_weights`.
"""

from __future__ import annotations

import logging
import os

import torch

from gptoss_kernels.reference import moe_reference

logger = logging.getLogger(__name__)

USE_TRITON_ENV = "VLLM_GPTOSS_TRITON_MOE"  # "0" forces the torch path on CUDA


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


def maybe_prepare_triton(layer):
    """Repack the layer's MXFP4 experts for the Triton kernels, or None for the torch path."""
    if not _triton_wanted(layer.w13_weight.device):
        return None
    import gptoss_kernels

    prepared = gptoss_kernels.prepare_moe_weights(
        layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
        layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    logger.info("vllm-gptoss: MoE layer %s uses the fused Triton MXFP4 kernels", getattr(layer, "layer_name", ""))
    return prepared


def triton_moe(x, topk_weights, topk_ids, prepared, alpha: float, limit: float) -> torch.Tensor:
    import gptoss_kernels

    return gptoss_kernels.fused_moe(x, topk_weights, topk_ids, prepared, alpha=alpha, limit=limit)
