"""Our MXFP4 quantization method for gpt-oss experts.

Registered as `vllm_gptoss_mxfp4`. It claims checkpoints whose config has
`quantization_config.quant_method` "mxfp4" (or vLLM's rewritten "gpt_oss_mxfp4") and
`model_type` "gpt_oss": vLLM probes plugin-registered names before its built-ins, so ours wins.
Pass `--quantization gpt_oss_mxfp4` to get vLLM's built-in method instead. Passed explicitly
(`--quantization vllm_gptoss_mxfp4`) on a bf16 checkpoint, it quantizes the experts while they load
(weights.py).

Expert weights stay MXFP4 in memory (uint8 blocks [E, N, K/2] + uint8 E8M0 scales [E, N, K/32],
about 4.25 bits a weight) plus biases. The experts run
  - on CUDA with triton: the fused Triton kernels of `gptoss_kernels` (weights repacked once at
    load by `prepare_moe_weights`), on sm_75 and newer (bf16 on sm_80 and newer;
    gptoss_kernels/capability.py);
  - otherwise (CPU, or no triton): a torch path that dequantizes one expert at a time.
Attention, router, embeddings and lm_head stay unquantized, as in the released checkpoints.
"""

from __future__ import annotations

import logging

import torch

from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.utils import set_weight_attrs

from . import cpu_dense, huge_pages, moe_ops
from . import vllm_compat
from .config import MXFP4_BLOCK, SWIGLU_ALPHA, SWIGLU_LIMIT, expert_shapes

logger = logging.getLogger(__name__)

QUANT_NAME = "vllm_gptoss_mxfp4"
CLAIMED_METHODS = ("mxfp4", "gpt_oss_mxfp4", QUANT_NAME)


@register_quantization_config(QUANT_NAME)
class GptOssMxfp4Config(QuantizationConfig):
    # The checkpoint's `modules_to_not_convert` (attention, router, embeddings, lm_head) is not
    # read: in gpt-oss only the experts are MXFP4, and get_quant_method below quantizes nothing else.

    @classmethod
    def get_name(cls) -> str:
        return QUANT_NAME

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        # vLLM refuses GPUs below this before loading. The fused Triton kernels need sm_75
        # (bf16 needs sm_80: checked per dtype when the experts are prepared, with a message
        # naming the GPU); with VLLM_GPTOSS_TRITON_MOE=0 the torch path runs on any GPU vLLM runs on.
        return moe_ops.triton_min_capability()

    @classmethod
    def get_config_filenames(cls) -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict) -> "GptOssMxfp4Config":
        return cls()

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None) -> str | None:
        from . import plugin_disabled

        if plugin_disabled() or not isinstance(hf_quant_cfg, dict):
            return None
        if getattr(hf_config, "model_type", None) != "gpt_oss":
            return None
        if hf_quant_cfg.get("quant_method") not in CLAIMED_METHODS:
            return None
        if user_quant not in (None, "mxfp4", QUANT_NAME):
            return None  # e.g. --quantization gpt_oss_mxfp4 asks for vLLM's built-in method
        return QUANT_NAME

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, LinearBase):
            return DenseLinearMethod()
        if isinstance(layer, vllm_compat.routed_experts_class()):
            return GptOssMxfp4MoEMethod(layer.moe_config)
        return None


class DenseLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear method (attention projections, router), with the native bf16 GEMM
    on CPUs where vLLM-CPU has none fast or where the native decode GEMV is faster (cpu_dense says when)."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if cpu_dense.maybe_take_gemm(layer):  # instead of vLLM-CPU's packed oneDNN GEMM
            return
        super().process_weights_after_loading(layer)
        cpu_dense.maybe_use_native_linear(layer)


class GptOssMxfp4MoEMethod(FusedMoEMethodBase):
    """Experts in MXFP4; `apply` receives the runner's top-k weights and ids."""

    def __init__(self, moe):
        super().__init__(moe)
        self.prepared = None  # device layout for the Triton kernels, when they are used

    def maybe_roundup_sizes(self, hidden_size, intermediate_size_per_partition, act_dtype, moe_parallel_config):
        # No padding of the hidden size; the intermediate shard is rounded up to whole MXFP4 blocks
        # (2880 over 4 ranks = 22.5 blocks: ranks hold 23 blocks, the last one zero-padded).
        if hidden_size % MXFP4_BLOCK:
            raise ValueError(f"MXFP4 experts need hidden_size to be a multiple of {MXFP4_BLOCK}, found {hidden_size}")
        i = -(-intermediate_size_per_partition // MXFP4_BLOCK) * MXFP4_BLOCK
        return hidden_size, i

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype,
                       **extra_weight_attrs):
        E, H, I = num_experts, hidden_size, intermediate_size_per_partition
        bias_dtype = params_dtype

        def add(name, shape, dtype):
            t = torch.empty(*shape, dtype=dtype)
            huge_pages.advise(t)  # before the zeros below first write its pages (huge_pages says why)
            p = torch.nn.Parameter(t.zero_(), requires_grad=False)
            layer.register_parameter(name, p)
            set_weight_attrs(p, {"weight_loader": extra_weight_attrs.get("weight_loader")})

        # the checkpoint's shapes for this rank's slice, each expert row's blocks flattened
        # ([.., K/32, 16] -> [.., K/2]: the same bytes) so vLLM's loaders see 3-d tensors
        ckpt = expert_shapes(E, H, I, mxfp4=True)
        flat = lambda s: (*s[:-2], s[-2] * s[-1])  # noqa: E731
        add("w13_weight", flat(ckpt["gate_up_proj_blocks"]), torch.uint8)
        add("w13_weight_scale", ckpt["gate_up_proj_scales"], torch.uint8)
        add("w2_weight", flat(ckpt["down_proj_blocks"]), torch.uint8)
        add("w2_weight_scale", ckpt["down_proj_scales"], torch.uint8)
        add("w13_bias", ckpt["gate_up_proj_bias"], bias_dtype)
        add("w2_bias", ckpt["down_proj_bias"], bias_dtype)

    def get_fused_moe_quant_config(self, layer):
        return None

    def process_weights_after_loading(self, layer) -> None:
        self.prepared = moe_ops.maybe_prepare_triton(layer)
        # on the CPU: the native kernel when it builds (float32 biases; experts used in place)
        self.cpu_native = None if self.prepared is not None else moe_ops.maybe_prepare_cpu_native(layer)

    def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
        ids = topk_ids
        expert_map = vllm_compat.expert_map(layer)
        if expert_map is not None:  # global -> local expert ids, -1 for other ranks' experts
            ids = expert_map[topk_ids.long()]
        ids = ids.to(torch.int32)
        alpha = layer.swiglu_alpha if layer.swiglu_alpha is not None else SWIGLU_ALPHA
        limit = layer.swiglu_limit if layer.swiglu_limit is not None else SWIGLU_LIMIT
        if self.prepared is not None:
            return moe_ops.triton_moe(x, topk_weights, ids, self.prepared, alpha, limit)
        native = getattr(self, "cpu_native", None)  # absent when process_weights_after_loading never ran
        if native is not None:
            return moe_ops.cpu_native_moe(x, topk_weights, ids, layer.w13_weight, layer.w13_weight_scale,
                                          native.w13_bias, layer.w2_weight, layer.w2_weight_scale,
                                          native.w2_bias, alpha, limit)
        return moe_ops.torch_moe(x, topk_weights, ids, layer.w13_weight, layer.w13_weight_scale,
                                 layer.w13_bias, layer.w2_weight, layer.w2_weight_scale, layer.w2_bias,
                                 alpha, limit)
