"""What vLLM's torch.compile of our model changes on the CPU: eager (`--enforce-eager`) vs compiled
(vLLM's default), same checkpoint, same machine, same run.

A small gpt-oss (random weights in the released layout; by default 4 layers, hidden 512, 8 experts,
top-4, head_dim 64, vocabulary 8192) is written once; then each mode runs in a fresh process
(vLLM's offline `LLM`, bf16, 2 threads): engine start-up time, then greedy decode of one sequence
(`--decode-tokens` new tokens after a 32-token prompt, timed `--repeats` times, median) and prefill
of one `--prefill-tokens`-token prompt. Modes alternate (eager, compiled, eager, compiled, ...) so
drifting machine load hits both. Prints a table and writes JSON.

    .venv/bin/python benchmarks/compile_cpu.py --out benchmarks/results/compile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec: dict) -> dict:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    from vllm import LLM, SamplingParams

    from vllm_gptoss.introspect import compile_state

    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=spec["eager"],
              gpu_memory_utilization=0.2, max_model_len=1024, seed=0, disable_log_stats=True)
    startup = time.perf_counter() - t0
    prompt = list(range(100, 132))
    decode = []
    for r in range(spec["repeats"] + 1):  # the first one warms up
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}],
                     SamplingParams(max_tokens=spec["decode_tokens"], temperature=0.0, ignore_eos=True, detokenize=False),
                     use_tqdm=False)
        if r:
            decode.append(time.perf_counter() - t)
    long_prompt = [(7 * i) % 8000 + 10 for i in range(spec["prefill_tokens"])]
    prefill = []
    for r in range(spec["repeats"]):
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": long_prompt}], SamplingParams(max_tokens=1, detokenize=False),
                     use_tqdm=False)
        prefill.append(time.perf_counter() - t)
    state = llm.apply_model(compile_state)[0]
    llm.llm_engine.engine_core.shutdown()  # else the engine process outlives us, holding our pipes
    return {"startup_s": startup, "decode_s": decode, "prefill_s": prefill, "compile": state}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON file")
    p.add_argument("--rounds", type=int, default=2, help="eager/compiled pairs (fresh processes)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--experts", choices=["mxfp4", "bf16"], default="mxfp4")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        spec = json.loads(Path(a.child).read_text())
        res = child(spec)
        Path(spec["out"]).write_text(json.dumps(res))
        sys.stdout.flush()
        os._exit(0)  # vLLM-CPU's teardown can abort after the results are written (tests/llm_exit.py)

    sys.path.insert(0, str(ROOT))
    from gptoss_dev.checkpoint_writer import gpt_oss_config, random_state_dict, save_checkpoint

    work = Path(tempfile.mkdtemp(prefix="compile-bench-"))
    shape = dict(num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=4, hidden_size=512,
                 intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=8192,
                 sliding_window=128, original_max_position_embeddings=4096, yarn_factor=32.0)
    cfg = gpt_oss_config(**shape, mxfp4=a.experts == "mxfp4")
    model = save_checkpoint(work / "model", cfg, random_state_dict(cfg, seed=3))
    load = os.getloadavg()
    runs = []
    for rnd in range(a.rounds):
        for eager in (True, False):
            spec = {"model": str(model), "eager": eager, "repeats": a.repeats, "decode_tokens": a.decode_tokens,
                    "prefill_tokens": a.prefill_tokens, "out": str(work / f"r{rnd}-{eager}.json")}
            (work / "spec.json").write_text(json.dumps(spec))
            proc = subprocess.run([sys.executable, __file__, "--child", str(work / "spec.json")],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not Path(spec["out"]).exists():
                print(proc.stderr[-4000:], file=sys.stderr)
                return 1
            res = json.loads(Path(spec["out"]).read_text())
            res.update(mode="eager" if eager else "compiled", round=rnd, loadavg=os.getloadavg())
            runs.append(res)
            print(f"round {rnd} {res['mode']}: startup {res['startup_s']:.1f}s, decode "
                  f"{statistics.median(res['decode_s']):.3f}s / {a.decode_tokens} tokens", file=sys.stderr)
    rows = []
    for mode in ("eager", "compiled"):
        rs = [r for r in runs if r["mode"] == mode]
        dec = statistics.median([d for r in rs for d in r["decode_s"]])
        pre = statistics.median([d for r in rs for d in r["prefill_s"]])
        rows.append({"mode": mode, "startup_s": statistics.median([r["startup_s"] for r in rs]),
                     "decode_tokens_per_s": a.decode_tokens / dec, "ms_per_token": 1000 * dec / a.decode_tokens,
                     "prefill_tokens_per_s": a.prefill_tokens / pre,
                     "compiled": all(m["compiled"] for r in rs for m in r["compile"]["modules"].values())})
    base = rows[0]
    print(f"{'mode':>9} {'startup s':>9} {'decode tok/s':>12} {'ms/token':>8} {'prefill tok/s':>13} {'x eager':>7} compiled")
    for r in rows:
        print(f"{r['mode']:>9} {r['startup_s']:>9.1f} {r['decode_tokens_per_s']:>12.1f} {r['ms_per_token']:>8.1f} "
              f"{r['prefill_tokens_per_s']:>13.0f} {r['decode_tokens_per_s'] / base['decode_tokens_per_s']:>7.2f} "
              f"{r['compiled']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"shape": shape, "experts": a.experts, "loadavg_before": load,
                                           "rows": rows, "runs": runs, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                           "command": " ".join([Path(sys.executable).name] + sys.argv)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
