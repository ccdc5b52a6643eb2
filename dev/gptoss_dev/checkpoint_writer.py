"""Write gpt-oss checkpoints in the Hugging Face layout of openai/gpt-oss-20b and -120b.

Used by the tests (tiny random checkpoints), the harmony fixture model and the demo. The state dict
passed in uses transformers' `GptOssForCausalLM` names and shapes:
  model.layers.N.mlp.experts.gate_up_proj      [E, H, 2I]  (columns interleave gate/up)
  model.layers.N.mlp.experts.gate_up_proj_bias [E, 2I]
  model.layers.N.mlp.experts.down_proj         [E, I, H]
  model.layers.N.mlp.experts.down_proj_bias    [E, H]
With mxfp4=True the expert weights are written as the released checkpoints store them:
  ..._blocks [E, rows, K/32, 16] uint8 and ..._scales [E, rows, K/32] uint8, with rows = 2I (gate_up,
  rows interleaved) or H (down), K the input width; everything else in bf16 (or `dtype`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gptoss_kernels.mxfp4 import quantize
from vllm_gptoss.config import expert_shapes

MXFP4_QUANTIZATION_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def gpt_oss_config(
    *,
    num_hidden_layers: int,
    num_local_experts: int,
    num_experts_per_tok: int = 4,
    hidden_size: int = 2880,
    intermediate_size: int = 2880,
    num_attention_heads: int = 64,
    num_key_value_heads: int = 8,
    head_dim: int = 64,
    vocab_size: int = 201088,
    sliding_window: int = 128,
    rope_theta: float = 150000.0,
    yarn_factor: float = 32.0,
    original_max_position_embeddings: int = 4096,
    max_position_embeddings: int | None = None,
    layer_types: list[str] | None = None,
    mxfp4: bool = True,
) -> dict:
    """config.json as the released gpt-oss checkpoints write it (defaults: the 120b/20b widths)."""
    if max_position_embeddings is None:  # YaRN's extended context, as released: 4096 * 32 = 131072
        max_position_embeddings = int(original_max_position_embeddings * yarn_factor)
    if layer_types is None:
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_hidden_layers)]
    cfg = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "attention_dropout": 0.0,
        # the real ids; tiny test vocabularies (< 200k) get the last id instead
        "eos_token_id": 200002 if vocab_size > 200002 else vocab_size - 1,
        "pad_token_id": 199999 if vocab_size > 199999 else vocab_size - 1,
        "experts_per_token": num_experts_per_tok,
        "num_experts_per_tok": num_experts_per_tok,
        "num_local_experts": num_local_experts,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "initial_context_length": original_max_position_embeddings,
        "initializer_range": 0.02,
        "layer_types": layer_types,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": yarn_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if mxfp4:
        cfg["quantization_config"] = dict(MXFP4_QUANTIZATION_CONFIG)
    return cfg


_EXPERT_WEIGHTS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


def to_checkpoint_tensors(state_dict: dict[str, torch.Tensor], mxfp4: bool,
                          dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """transformers-named state dict -> tensors as the released checkpoint stores them."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if mxfp4 and name.endswith(_EXPERT_WEIGHTS):
            # transformers stores [E, in, out]; the checkpoint quantizes rows of [E, out, in]
            blocks, scales = quantize(t.float().transpose(1, 2).contiguous())
            out[name + "_blocks"] = blocks
            out[name + "_scales"] = scales
        else:
            out[name] = t.to(dtype).contiguous()
    return out


def save_checkpoint(out_dir: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor],
                    mxfp4: bool | None = None, dtype: torch.dtype = torch.bfloat16,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors (+ extra text files, e.g. tokenizer files) into out_dir.

    mxfp4 defaults to whether `config` has a quantization_config.
    """
    from safetensors.torch import save_file

    if mxfp4 is None:
        mxfp4 = "quantization_config" in config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = to_checkpoint_tensors(state_dict, mxfp4=mxfp4, dtype=dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}, indent=2) + "\n")
    for fname, text in (extra_files or {}).items():
        (out / fname).write_text(text)
    return out


def random_state_dict(config: dict, seed: int = 0, std: float = 0.02,
                      norm_mean: float = 1.0, norm_std: float = 0.1) -> dict[str, torch.Tensor]:
    """Random float32 weights in transformers naming for `config`.

    RMSNorm gains are drawn near 1, as in trained models: gains near 0 flatten the logits into ties.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    H, I, E = config["hidden_size"], config["intermediate_size"], config["num_local_experts"]
    nq, nkv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    V = config["vocab_size"]
    experts = expert_shapes(E, H, I, mxfp4=False)  # float weights; save_checkpoint may quantize
    sd = {
        "model.embed_tokens.weight": rnd(V, H, s=1.0),
        "lm_head.weight": rnd(V, H, s=H ** -0.5),
        "model.norm.weight": norm_mean + rnd(H, s=norm_std),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": norm_mean + rnd(H, s=norm_std),
            p + "post_attention_layernorm.weight": norm_mean + rnd(H, s=norm_std),
            p + "self_attn.q_proj.weight": rnd(nq * d, H, s=H ** -0.5),
            p + "self_attn.q_proj.bias": rnd(nq * d),
            p + "self_attn.k_proj.weight": rnd(nkv * d, H, s=H ** -0.5),
            p + "self_attn.k_proj.bias": rnd(nkv * d),
            p + "self_attn.v_proj.weight": rnd(nkv * d, H, s=H ** -0.5),
            p + "self_attn.v_proj.bias": rnd(nkv * d),
            p + "self_attn.o_proj.weight": rnd(H, nq * d, s=(nq * d) ** -0.5),
            p + "self_attn.o_proj.bias": rnd(H),
            p + "self_attn.sinks": rnd(nq, s=1.0),
            p + "mlp.router.weight": rnd(E, H, s=H ** -0.5),
            p + "mlp.router.bias": rnd(E, s=0.1),
            p + "mlp.experts.gate_up_proj": rnd(*experts["gate_up_proj"], s=H ** -0.5),
            p + "mlp.experts.gate_up_proj_bias": rnd(*experts["gate_up_proj_bias"], s=0.1),
            p + "mlp.experts.down_proj": rnd(*experts["down_proj"], s=I ** -0.5),
            p + "mlp.experts.down_proj_bias": rnd(*experts["down_proj_bias"], s=0.1),
        })
    return sd
