"""Bad checkpoints stop loading with an error naming the tensor or field, expected and found."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss_dev.checkpoint_writer import gpt_oss_config
from vllm_gptoss.config import GptOssArgs, GptOssConfigError
from vllm_gptoss.weights import CheckpointError, check_all_present, check_tensor, expected_tensors

from .conftest import TINY, run_vllm_expect_failure, tiny_prompts


def args_for(**overrides):
    cfg = gpt_oss_config(**TINY)
    cfg.update(overrides)
    return GptOssArgs.from_hf_config(cfg)


# --- config.json --------------------------------------------------------------------------------

def test_unknown_layer_type():
    with pytest.raises(GptOssConfigError, match=r"layer_types\[1\] is 'chunked_attention', expected one of "
                                                r"\['sliding_attention', 'full_attention'\]"):
        args_for(layer_types=["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"])


def test_layer_types_length():
    with pytest.raises(GptOssConfigError, match=r"'layer_types' has 3 entries, expected 4"):
        args_for(layer_types=["sliding_attention", "full_attention", "sliding_attention"])


@pytest.mark.parametrize("field,value", [("hidden_size", 120), ("intermediate_size", 100)])
def test_mxfp4_sizes_must_be_multiples_of_32(field, value):
    with pytest.raises(GptOssConfigError, match=rf"'{field}' must be a multiple of 32 for MXFP4 experts, found {value}"):
        args_for(**{field: value})


def test_bf16_sizes_need_not_be_multiples_of_32():
    cfg = gpt_oss_config(**{**TINY, "hidden_size": 120}, mxfp4=False)
    assert GptOssArgs.from_hf_config(cfg).hidden_size == 120


def test_missing_field_and_bad_values():
    cfg = gpt_oss_config(**TINY)
    del cfg["num_local_experts"]
    with pytest.raises(GptOssConfigError, match="required field 'num_local_experts' is missing"):
        GptOssArgs.from_hf_config(cfg)
    with pytest.raises(GptOssConfigError, match=r"'num_experts_per_tok' \(9\) must not exceed 'num_local_experts' \(5\)"):
        args_for(num_experts_per_tok=9)
    with pytest.raises(GptOssConfigError, match="quant_method 'awq' is not supported"):
        args_for(quantization_config={"quant_method": "awq"})


def test_rope_parameters_and_rope_scaling_both_read():
    a = args_for()  # released files: rope_scaling + rope_theta
    cfg = gpt_oss_config(**TINY)
    cfg["rope_parameters"] = {**cfg.pop("rope_scaling"), "rope_theta": cfg.pop("rope_theta")}
    b = GptOssArgs.from_hf_config(cfg)  # transformers v5 form
    assert a.rope_parameters == b.rope_parameters
    assert a.rope_parameters["original_max_position_embeddings"] == 32 and a.rope_parameters["rope_type"] == "yarn"


# --- tensors ------------------------------------------------------------------------------------

def test_tensor_checks_name_expected_and_found():
    exp = expected_tensors(args_for())
    name = "model.layers.2.mlp.experts.down_proj_blocks"
    with pytest.raises(CheckpointError, match=rf"'{name}': expected shape \[5, 128, 3, 16\], found \[5, 128, 2, 16\]"):
        check_tensor(name, torch.zeros(5, 128, 2, 16, dtype=torch.uint8), exp)
    with pytest.raises(CheckpointError, match=rf"'{name}': expected dtype uint8 \(MXFP4\), found torch.bfloat16"):
        check_tensor(name, torch.zeros(5, 128, 3, 16, dtype=torch.bfloat16), exp)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.self_attn.sinks': expected a floating-point dtype"):
        check_tensor("model.layers.0.self_attn.sinks", torch.zeros(4, dtype=torch.int64), exp)
    with pytest.raises(CheckpointError, match=r"'model.layers.9.mlp.router.weight' is not part of a gpt-oss model"):
        check_tensor("model.layers.9.mlp.router.weight", torch.zeros(5, 128), exp)
    with pytest.raises(CheckpointError, match=r"unquantized expert weights, but config.json declares MXFP4"):
        check_tensor("model.layers.0.mlp.experts.gate_up_proj", torch.zeros(5, 128, 192), exp)
    seen = set(exp) - {"lm_head.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): 'lm_head.weight' \[1024, 128\]"):
        check_all_present(seen, exp)


# --- through vLLM ---------------------------------------------------------------------------------

def _corrupt(src, dst, tensors=None, config=None):
    dst.mkdir(parents=True)
    sd = load_file(str(src / "model.safetensors"))
    if tensors:
        tensors(sd)
    save_file(sd, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    if config:
        config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


CASES = {
    "missing": (lambda sd: sd.pop("model.layers.3.mlp.experts.gate_up_proj_scales"), None,
                r"missing 1 tensor\(s\): 'model.layers.3.mlp.experts.gate_up_proj_scales' \[5, 192, 4\]"),
    "extra": (lambda sd: sd.__setitem__("model.layers.1.mlp.shared_expert.weight", torch.zeros(4)), None,
              r"'model.layers.1.mlp.shared_expert.weight' is not part of a gpt-oss model"),
    "shape": (lambda sd: sd.__setitem__("model.layers.0.self_attn.sinks", torch.zeros(3, dtype=torch.bfloat16)),
              None, r"'model.layers.0.self_attn.sinks': expected shape \[4\], found \[3\]"),
    "layer_types": (None, lambda c: c.__setitem__("layer_types", ["sliding_attention", "chunked_attention",
                                                                  "sliding_attention", "full_attention"]),
                    r"layer_types\[1\] is 'chunked_attention'"),
}


REFUSAL_RUNNER = Path(__file__).with_name("vllm_refusal_runner.py")


@pytest.fixture(scope="module")
def refusals(tiny_checkpoints, tmp_path_factory) -> dict:
    """Every refusal below, run through vLLM in one process (vllm_refusal_runner.py: one import and
    engine set-up for all of them instead of ~30 s each): name -> {"refused", "error"}."""
    from gptoss_dev.checkpoint_writer import random_state_dict, save_checkpoint

    root = tmp_path_factory.mktemp("refusals")
    runs = {}
    for case, (tensors, config, _) in CASES.items():
        bad = _corrupt(tiny_checkpoints["mxfp4"], root / case, tensors, config)
        runs[case] = dict(model=str(bad), dtype="float32")
    # a bf16 checkpoint whose expert width (80) is not a multiple of 32, asked to quantize to MXFP4
    cfg = gpt_oss_config(**{**TINY, "intermediate_size": 80}, mxfp4=False)
    ckpt = save_checkpoint(root / "bf16-width-80", cfg, random_state_dict(cfg, seed=1))
    runs["quantize_width_80"] = dict(model=str(ckpt), dtype="float32", quantization="vllm_gptoss_mxfp4")
    runs["lora"] = dict(model=str(tiny_checkpoints["mxfp4"]), dtype="float32", enable_lora=True)
    spec, out = root / "spec.json", root / "out.json"
    spec.write_text(json.dumps({"runs": runs}))
    proc = subprocess.run([sys.executable, str(REFUSAL_RUNNER), str(spec), str(out)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and out.exists(), f"refusal runner failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    got = json.loads(out.read_text())
    assert set(got) == set(runs), (sorted(got), sorted(runs))
    return got


def _refusal_text(refusals: dict, name: str) -> str:
    r = refusals[name]
    assert r["refused"], f"vLLM loaded {name!r}, which it should have refused"
    return r["error"]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_vllm_refuses_bad_checkpoint(case, refusals):
    message = CASES[case][2]
    error = _refusal_text(refusals, case)
    assert re.search(message, error), error[-3000:]


@pytest.mark.slow
def test_pipeline_parallel_ranks_check_every_tensor(tiny_checkpoints, tmp_path):
    """Under PP=2 each rank loads only its own layers, but still checks every tensor it streams past:
    a misshapen tensor of the first stage's layer 0 is refused, not skipped by the stage without it.
    (Also the one refusal here seen as a user sees it: in the log of vLLM's multiprocess engine.)"""
    tensors, config, message = CASES["shape"]
    bad = _corrupt(tiny_checkpoints["mxfp4"], tmp_path / "ckpt", tensors, config)
    output = run_vllm_expect_failure(tmp_path / "run", model=bad, dtype="float32", prompts=tiny_prompts(1),
                                     max_tokens=4, pipeline_parallel_size=2, enforce_eager=False)
    hits = re.findall(r"Worker_PP(\d).*" + message, output)
    assert set(hits) == {"0", "1"}, output[-3000:]


@pytest.mark.slow
def test_quantizing_bf16_experts_needs_whole_mxfp4_blocks(refusals):
    """`--quantization vllm_gptoss_mxfp4` on a bf16 checkpoint whose expert width (80) is not a
    multiple of 32: refused, naming the field and its value, before anything is quantized wrongly."""
    error = _refusal_text(refusals, "quantize_width_80")
    assert "MXFP4 experts need intermediate_size to be a multiple of 32: config.json has 80" in error, error[-3000:]


@pytest.mark.slow
def test_lora_refused_with_a_way_out(refusals):
    """--enable-lora: our MoE method has no LoRA path, so the model refuses up front and names the
    switch to vLLM's built-in class, instead of vLLM's "Old-style modular kernel not supported"."""
    error = _refusal_text(refusals, "lora")
    assert "LoRA (--enable-lora) is not supported by this plugin's gpt-oss model" in error, error[-3000:]
    assert "VLLM_GPTOSS_DISABLE=1" in error
