"""Model-level check of the fused Triton MoE on a GPU machine (torch + triton + transformers, no vLLM).

A tiny MXFP4 gpt-oss checkpoint (real layout, written by gptoss_dev.checkpoint_writer) runs through
Hugging Face transformers' GptOssForCausalLM twice on the GPU:
  reference: transformers' own experts (MXFP4 dequantized by transformers), float32;
  kernels:   every layer's MoE replaced by gptoss_kernels.route + fused_moe on the checkpoint's
             MXFP4 blocks (prepare_moe_weights), same attention/norms from transformers.
It reports greedy-token agreement (float32 activations) and teacher-forced log-probability distance
(float32 and bf16 activations) and exits non-zero past the bounds.

    PYTHONPATH=kernels:. python tests/gpu/model_check.py --out model_check.json
(Not collected by pytest: the CPU suite has no GPU.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch
from safetensors.torch import load_file

import gptoss_kernels as gk
from gptoss_dev.checkpoint_writer import gpt_oss_config, random_state_dict, save_checkpoint

CFG = dict(num_hidden_layers=4, num_local_experts=6, num_experts_per_tok=2, hidden_size=160,
           intermediate_size=224, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=2048,
           sliding_window=16, original_max_position_embeddings=64, yarn_factor=8.0)
NEW_TOKENS = 48
DEV = "cuda"


def patch_moe(model, ckpt: dict, act_dtype: torch.dtype):
    """Replace each GptOssMLP.forward by route + fused_moe over the checkpoint's MXFP4 tensors."""
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}.mlp.experts."
        prepared = gk.prepare_moe_weights(
            ckpt[p + "gate_up_proj_blocks"].to(DEV), ckpt[p + "gate_up_proj_scales"].to(DEV),
            ckpt[p + "gate_up_proj_bias"].to(DEV), ckpt[p + "down_proj_blocks"].to(DEV),
            ckpt[p + "down_proj_scales"].to(DEV), ckpt[p + "down_proj_bias"].to(DEV))
        mlp = layer.mlp

        def forward(hidden, mlp=mlp, prepared=prepared):
            b, s, h = hidden.shape
            x = hidden.reshape(-1, h)
            logits = torch.nn.functional.linear(x.float(), mlp.router.weight.float(), mlp.router.bias.float())
            w, ids = gk.route(logits, mlp.router.top_k)
            out = gk.fused_moe(x.to(act_dtype), w, ids, prepared)
            return out.to(hidden.dtype).reshape(b, s, h), w

        mlp.forward = forward


@torch.no_grad()
def greedy(model, prompts):
    outs = []
    for p in prompts:
        ids = list(p)
        for _ in range(NEW_TOKENS):
            ids.append(int(model(torch.tensor([ids], device=DEV)).logits[0, -1].argmax()))
        outs.append(ids[len(p):])
    return outs


@torch.no_grad()
def prompt_logprobs(model, prompts):
    res = []
    for p in prompts:
        logp = torch.log_softmax(model(torch.tensor([p], device=DEV)).logits[0].float(), -1)
        res.append(logp[torch.arange(len(p) - 1), torch.tensor(p[1:], device=DEV)])
    return torch.cat(res)


def main() -> int:
    global DEV, NEW_TOKENS
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="model_check.json")
    ap.add_argument("--device", default="cuda", help="cpu only with TRITON_INTERPRET=1 (a dry run)")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ns = ap.parse_args()
    DEV, NEW_TOKENS = ns.device, ns.new_tokens
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, CFG["vocab_size"], (40 + 13 * i,), generator=g).tolist() for i in range(4)]
    with tempfile.TemporaryDirectory() as d:
        cfg = gpt_oss_config(**CFG)
        save_checkpoint(d, cfg, random_state_dict(cfg, seed=11))
        ckpt = load_file(f"{d}/model.safetensors")
        load = lambda: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).float().to(DEV).eval()  # noqa: E731
        ref = load()
        ref_tokens, ref_lp = greedy(ref, prompts), prompt_logprobs(ref, prompts)
        results = {}
        for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            m = load()
            patch_moe(m, ckpt, dt)
            lp = prompt_logprobs(m, prompts)
            diff = (lp - ref_lp).abs()
            r = {"logprob_max_abs_diff": diff.max().item(), "logprob_mean_abs_diff": diff.mean().item()}
            if dt == torch.float32:
                toks = greedy(m, prompts)
                r["greedy_identical_prompts"] = sum(a == b for a, b in zip(toks, ref_tokens))
            results[name] = r
    bounds = {"float32": (0.01, 0.001), "bfloat16": (0.5, 0.08)}
    ok = all(results[k]["logprob_max_abs_diff"] <= mx and results[k]["logprob_mean_abs_diff"] <= mean
             for k, (mx, mean) in bounds.items()) and results["float32"]["greedy_identical_prompts"] == len(prompts)
    results["bounds"] = bounds
    results["pass"] = ok
    json.dump(results, open(ns.out, "w"), indent=2)
    print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
