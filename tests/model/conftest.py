"""Tiny gpt-oss checkpoints in the real Hugging Face layout, vLLM runs in subprocesses, and the
transformers oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptoss_dev.checkpoint_writer import gpt_oss_config, random_state_dict, save_checkpoint

RUNNER = Path(__file__).with_name("vllm_runner.py")

# 4 layers (2 sliding, 2 full), 5 experts (not a power of two), top-2, window 8 tokens,
# YaRN original context 32 (the test sequences run past it), head_dim 64 (the CPU attention's size).
TINY = dict(num_hidden_layers=4, num_local_experts=5, num_experts_per_tok=2, hidden_size=128,
            intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024,
            sliding_window=8, original_max_position_embeddings=32, yarn_factor=8.0)


def tiny_prompts(n: int = 4, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TINY["vocab_size"], (20 + 9 * i,), generator=g).tolist() for i in range(n)]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Same random weights written twice: MXFP4 experts and bf16 experts ("bf16 twin")."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for kind in ("mxfp4", "bf16"):
        cfg = gpt_oss_config(**TINY, mxfp4=(kind == "mxfp4"))
        out[kind] = save_checkpoint(root / kind, cfg, random_state_dict(cfg, seed=7))
    return out


def _run_runner(tmp_path: Path, spec: dict) -> tuple[subprocess.CompletedProcess, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_file, out_file = tmp_path / "spec.json", tmp_path / "out.json"
    spec_file.write_text(json.dumps({**spec, "model": str(spec["model"])}))
    proc = subprocess.run([sys.executable, str(RUNNER), str(spec_file), str(out_file)],
                          capture_output=True, text=True, timeout=900)
    return proc, out_file


def run_vllm(tmp_path: Path, **spec) -> dict:
    proc, out_file = _run_runner(tmp_path, spec)
    if proc.returncode != 0:
        raise AssertionError(f"vLLM run failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(out_file.read_text())


def run_vllm_expect_failure(tmp_path: Path, **spec) -> str:
    proc, _ = _run_runner(tmp_path, spec)
    assert proc.returncode != 0, "vLLM loaded a checkpoint that should have been refused"
    return proc.stdout + proc.stderr


def hf_model(path: Path):
    import transformers

    # transformers dequantizes MXFP4 experts into bf16 tensors (exactly: every MXFP4 value is a
    # bf16 value); .float() makes its whole forward float32, the precision the exact-token tests use.
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).float().eval()


@torch.no_grad()
def hf_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Plain argmax loop (no EOS handling, like vLLM's ignore_eos=True)."""
    outs = []
    for p in prompts:
        ids = list(p)
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        outs.append(ids[len(p):])
    return outs


@torch.no_grad()
def hf_prompt_logprobs(model, prompts: list[list[int]]) -> list[list[float]]:
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        outs.append([logp[i, p[i + 1]].item() for i in range(len(p) - 1)])
    return outs


def save_eagle3_draft(out_dir: Path, target_cfg: dict, aux_layers: list[int], seed: int = 11) -> Path:
    """A random EAGLE-3 draft head in the layout of the published ones (LlamaForCausalLMEagle3: one
    decoder layer `midlayer.*` whose attention reads [embedding, hidden] (2H wide), `fc` folding the
    target's aux hidden states 3H -> H, own norm, embedding and lm_head over the target's vocabulary).
    Random weights draft poor tokens: the target's verification must still decide every token."""
    from safetensors.torch import save_file

    H, V, I = target_cfg["hidden_size"], target_cfg["vocab_size"], 256
    nq, nkv, d = 2, 1, 64  # head_dim 64: the size the CPU attention backend runs
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: (torch.randn(*s, generator=g) * 0.05)  # noqa: E731
    sd = {
        "embed_tokens.weight": rnd(V, H), "lm_head.weight": rnd(V, H), "norm.weight": 1 + rnd(H),
        "fc.weight": rnd(H, len(aux_layers) * H),
        "midlayer.input_layernorm.weight": 1 + rnd(H), "midlayer.hidden_norm.weight": 1 + rnd(H),
        "midlayer.post_attention_layernorm.weight": 1 + rnd(H),
        "midlayer.self_attn.q_proj.weight": rnd(nq * d, 2 * H), "midlayer.self_attn.k_proj.weight": rnd(nkv * d, 2 * H),
        "midlayer.self_attn.v_proj.weight": rnd(nkv * d, 2 * H), "midlayer.self_attn.o_proj.weight": rnd(H, nq * d),
        "midlayer.mlp.gate_proj.weight": rnd(I, H), "midlayer.mlp.up_proj.weight": rnd(I, H),
        "midlayer.mlp.down_proj.weight": rnd(H, I),
    }
    out_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_dir / "model.safetensors"))
    cfg = dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama", hidden_size=H, intermediate_size=I,
               num_attention_heads=nq, num_key_value_heads=nkv, head_dim=d, num_hidden_layers=1, vocab_size=V,
               draft_vocab_size=V, rms_norm_eps=1e-5, max_position_embeddings=target_cfg["max_position_embeddings"],
               rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False, torch_dtype="float32",
               eagle_aux_hidden_state_layer_ids=aux_layers)
    (out_dir / "config.json").write_text(json.dumps(cfg))
    return out_dir
