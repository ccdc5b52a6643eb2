"""Triton kernels and torch references for gpt-oss's MXFP4 Mixture-of-Experts.

Imports only torch (and triton, lazily, for the fused kernels): no vLLM, so this package runs on a
GPU machine without vLLM. `import gptoss_kernels` works without triton; calling `route` or
`fused_moe` then raises a clear error.

Public API:
  route(router_logits, top_k) -> (weights f32 [T, k], ids i32 [T, k])   one Triton kernel
  prepare_moe_weights(w13_blocks, w13_scales, w13_bias, w2_blocks, w2_scales, w2_bias) -> MoEWeights
  fused_moe(x, topk_weights, topk_ids, prepared, alpha=1.702, limit=7.0) -> [T, H] in x's dtype
  quantize / dequantize (MXFP4, checkpoint layout), route_reference / swiglu_reference / moe_reference
  kernel_variant(capability, dtype) -> which GPUs and dtypes the fused kernels run, with which
    dequantization (capability.py: the one rule pick_config, the plugin and the build test read)
Benchmark and GPU check: python benchmarks/gpu_moe.py --help
Ahead-of-time build for every NVIDIA target, no GPU needed: python -m gptoss_kernels.aot --help
"""

from .capability import KernelVariant, kernel_variant  # noqa: F401
from .moe import MoEWeights, TileConfig, fused_moe, pick_config, prepare_moe_weights, route  # noqa: F401
from .mxfp4 import dequantize, quantize  # noqa: F401
from .reference import moe_reference, route_reference, swiglu_reference  # noqa: F401
