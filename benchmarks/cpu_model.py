"""Whole-model CPU benchmark: a random gpt-oss-shaped MXFP4 checkpoint served by vLLM-CPU with the plugin.

    # 1. write a checkpoint (20b: ~13 GB on disk, ~2.5 GB of RAM while writing, one layer at a time)
    .venv/bin/python benchmarks/cpu_model.py write --shape 20b --out /data/gptoss20b-random
    # 2. measure prefill and decode tokens/s and peak RSS (JSON for benchmarks/results/)
    .venv/bin/python benchmarks/cpu_model.py run --model /data/gptoss20b-random --out cpu_model_20b.json
    # the same on the tiny shape, as a check of the script itself (seconds)
    .venv/bin/python benchmarks/cpu_model.py write --shape tiny --out /tmp/tiny && \
    .venv/bin/python benchmarks/cpu_model.py run --model /tmp/tiny --prompt-tokens 64 --decode-tokens 16 --out /tmp/t.json

At 20b shape vLLM needs about 19 GB of RAM with the plugin (measured earlier with the torch path):
run it on a machine with >= 32 GB that nothing else is using.

What `run` does, per variant, in a fresh subprocess (so each variant's peak RSS is its own):
vLLM's `LLM` in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), bf16, prefix caching off, its OpenMP
threads bound to cores 0..threads-1 (VLLM_CPU_OMP_THREADS_BIND; vLLM-CPU otherwise keeps one core for
itself). One warm-up request, then
  prefill: a random prompt of --prompt-tokens tokens with max_tokens=1: prefill tok/s = P / time;
  decode:  another random prompt of the same length with max_tokens = 1 + --decode-tokens (ignore_eos):
           decode tok/s = D / (last token - first token), from the engine's timestamps of that
           request (RequestOutput.metrics; log stats on). The older estimate, D / (time - prefill
           time), is kept as decode_tokens_per_s_by_difference: it carries a second prefill's noise,
           which dominates when the prefill takes longer than the decode (AVX2 machines).
           llama.cpp's decode is timed around its D eval calls alone.
  --sequences S (vLLM variants): every request above is S such prompts submitted together (batched
           decode, as a server with S users); prefill tok/s = S P / time, decode tok/s = S D / (the
           last sequence's last token - the last sequence's first token), the span in which all S decode.
Peak RSS: getrusage(RUSAGE_SELF).ru_maxrss of that process (weights, KV cache, everything); for vLLM
variants also by phase (imports, load, requests): peak and final anonymous and file-backed RSS
(`memory_gib_by_phase`, from /proc/self/status every 0.1 s), which says where the peak comes from.
`--repeat N` runs the variant list N times in turn and summarizes medians and, per cycle, each vLLM
variant's speed over llama.cpp's in the same cycle (minutes apart, so in much the same host state).
Bandwidth: benchmarks/cpu_moe.py's probe (best of 5 torch sums over 1 GiB, the run's threads) right
before each variant, as `bandwidth_gbs_before`: on a VM whose bandwidth drifts, read each variant's
speed beside it.
Variants: `native` (the plugin with its native CPU MoE kernel, the default), `torch` (the plugin with
VLLM_GPTOSS_CPU_NATIVE=0: its torch path; very slow at 20b), `stock` (VLLM_GPTOSS_DISABLE=1: vLLM's
own class and MXFP4 method, which runs only on CPUs with AMX), `llamacpp` (llama-cpp-python on a GGUF
of the same checkpoint: `cpu_model.py llamacpp --model CKPT --venv VENV` builds llama-cpp-python from
its PyPI sdist in its own venv and converts with that release's convert_hf_to_gguf.py; then
`run --variants llamacpp --gguf GGUF --llamacpp-venv VENV`; `llamacpp --cmake-args ARGS` builds it for
another CPU's ISA, e.g. AVX2 only, beside our kernels built for that ISA:
    .venv/bin/python benchmarks/cpu_model.py llamacpp --model CKPT --venv /data/llvenv-avx2 --cmake-args \
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF"
    VLLM_GPTOSS_CPU_MARCH=x86-64-v3 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python \
        benchmarks/cpu_model.py run ... --variants native llamacpp --llamacpp-venv /data/llvenv-avx2
), and `native-*`: the native variant with one
setting changed (NATIVE_VARIANT_ENV). `--baseline V` (default llamacpp): the variant each cycle's others
are divided by. `--profile N` adds where N decode steps' time goes, by op (use with --enforce-eager).
The machine's load average is recorded before and after each variant; the environment variables that
change what is measured (RECORDED_ENV_PREFIXES) and the llama.cpp venv's CMake flags, with the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    # gpt-oss-20b: 24 layers, 32 experts top-4, hidden 2880, expert width 2880, 64 q / 8 kv heads of 64
    "20b": dict(num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4, hidden_size=2880,
                intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                vocab_size=201088, sliding_window=128),
    # the tests' tiny gpt-oss (tests/model/conftest.py TINY), for checking this script
    "tiny": dict(num_hidden_layers=4, num_local_experts=5, num_experts_per_tok=2, hidden_size=128,
                 intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024,
                 sliding_window=8, original_max_position_embeddings=32, yarn_factor=8.0),
}


# ---------------------------------------------------------------------------------------- write
def write_checkpoint(shape: str, out: Path, seed: int = 0) -> Path:
    """A random MXFP4 checkpoint in the released layout, one safetensors shard per layer (+ one for
    embedding, final norm and lm_head), so that at most one layer is in memory at a time. Expert
    codes are uniform random bytes (every E2M1 code), E8M0 scales 2^-8..2^-6 (weight std ~0.02-0.05,
    about a trained model's), biases N(0, 0.1^2), other matrices N(0, 1/fan_in) in bf16."""
    import torch
    from safetensors.torch import save_file

    from gptoss_dev.checkpoint_writer import gpt_oss_config

    cfg = gpt_oss_config(**SHAPES[shape], mxfp4=True)
    H, I, E = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    nq, nkv, d, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    bf = torch.bfloat16

    def rnd(*shape, s):
        return (torch.randn(*shape, generator=g) * s).to(bf)

    out.mkdir(parents=True, exist_ok=True)
    L = cfg["num_hidden_layers"]
    weight_map, total = {}, 0
    shards = L + 1
    for i in range(L + 1):
        if i < L:
            p = f"model.layers.{i}."
            t = {
                p + "input_layernorm.weight": (1 + torch.randn(H, generator=g) * 0.1).to(bf),
                p + "post_attention_layernorm.weight": (1 + torch.randn(H, generator=g) * 0.1).to(bf),
                p + "self_attn.q_proj.weight": rnd(nq * d, H, s=H ** -0.5), p + "self_attn.q_proj.bias": rnd(nq * d, s=0.02),
                p + "self_attn.k_proj.weight": rnd(nkv * d, H, s=H ** -0.5), p + "self_attn.k_proj.bias": rnd(nkv * d, s=0.02),
                p + "self_attn.v_proj.weight": rnd(nkv * d, H, s=H ** -0.5), p + "self_attn.v_proj.bias": rnd(nkv * d, s=0.02),
                p + "self_attn.o_proj.weight": rnd(H, nq * d, s=(nq * d) ** -0.5), p + "self_attn.o_proj.bias": rnd(H, s=0.02),
                p + "self_attn.sinks": rnd(nq, s=1.0).float(),
                p + "mlp.router.weight": rnd(E, H, s=H ** -0.5), p + "mlp.router.bias": rnd(E, s=0.1),
                p + "mlp.experts.gate_up_proj_blocks": torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=g),
                p + "mlp.experts.gate_up_proj_scales": torch.randint(119, 122, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g),
                p + "mlp.experts.gate_up_proj_bias": rnd(E, 2 * I, s=0.1),
                p + "mlp.experts.down_proj_blocks": torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=g),
                p + "mlp.experts.down_proj_scales": torch.randint(119, 122, (E, H, I // 32), dtype=torch.uint8, generator=g),
                p + "mlp.experts.down_proj_bias": rnd(E, H, s=0.1),
            }
        else:
            t = {"model.embed_tokens.weight": rnd(V, H, s=1.0), "lm_head.weight": rnd(V, H, s=H ** -0.5),
                 "model.norm.weight": (1 + torch.randn(H, generator=g) * 0.1).to(bf)}
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(t, str(out / name), metadata={"format": "pt"})
        for k, v in t.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        print(f"  wrote {name} ({sum(v.numel() * v.element_size() for v in t.values()) / 2**20:.0f} MiB)", flush=True)
        del t
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}, indent=2) + "\n")
    # the released checkpoint ships its tokenizer; llama.cpp's converter reads it (vLLM here does not)
    from gptoss_dev.fixture.tokenizer import write_tokenizer

    write_tokenizer(out)
    print(f"checkpoint {out}: {total / 2**30:.2f} GiB", flush=True)
    return out


# ------------------------------------------------------------------------------------- llama.cpp
LLAMA_CPP_PYTHON = "0.3.36"  # the release measured in ../shared/research; its vendored llama.cpp converts


LLAMACPP_CMAKE_ARGS_FILE = "vllm_gptoss_cmake_args.txt"  # in the llama.cpp venv: the flags it was built with


def prepare_llamacpp(model: Path, venv: Path, version: str, gguf: Path | None, cmake_args: str = "") -> Path:
    """Build llama-cpp-python `version` from its PyPI sdist into its own venv (never beside vLLM:
    it pins its own numpy), then convert `model` with the `convert_hf_to_gguf.py` vendored in that
    same sdist, experts kept MXFP4 (the converter's gpt-oss path repacks them, it does not
    requantize) and every other tensor bf16, the bytes vLLM reads. Returns the GGUF path.
    The converter runs under this venv's Python (it needs torch and transformers, which we have)."""
    import tarfile

    venv_py = venv / "bin" / "python"
    src = venv / "src" / f"llama_cpp_python-{version}"
    if not venv_py.exists():
        _logged([sys.executable, "-m", "venv", str(venv)], "create the llama.cpp venv")
    probe = subprocess.run([str(venv_py), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True)
    flags_file = venv / LLAMACPP_CMAKE_ARGS_FILE
    built_with = flags_file.read_text() if flags_file.exists() else ""
    if probe.returncode != 0 or probe.stdout.strip() != version or built_with != cmake_args:
        # --no-binary: compiled here, for this CPU (llama.cpp's default GGML_NATIVE build) unless
        # cmake_args say otherwise; pip's wheel cache bypassed, since it would hand back a build with
        # other flags
        env = dict(os.environ, CMAKE_ARGS=cmake_args, PIP_NO_CACHE_DIR="1") if cmake_args else None
        _logged([str(venv_py), "-m", "pip", "install", "--force-reinstall", "--no-deps", "--no-binary",
                 "llama-cpp-python", f"llama-cpp-python=={version}"],
                f"build llama-cpp-python {version} from source (~7 min on 2 cores){' with ' + cmake_args if cmake_args else ''}",
                env=env)
        if probe.returncode != 0:  # a fresh venv: its dependencies too
            _logged([str(venv_py), "-m", "pip", "install", f"llama-cpp-python=={version}"], "its dependencies")
        flags_file.write_text(cmake_args)
    if not src.exists():
        dl = venv / "src"
        _logged([str(venv_py), "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(dl),
                 f"llama-cpp-python=={version}"], "fetch the sdist for its convert_hf_to_gguf.py")
        with tarfile.open(next(dl.glob(f"llama_cpp_python-{version}.tar.gz"))) as tar:
            tar.extractall(dl, filter="data")
    gguf = gguf or model.parent / f"{model.name}-mxfp4-bf16.gguf"
    if not gguf.exists():
        llama = src / "vendor" / "llama.cpp"
        env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), NO_LOCAL_GGUF="")
        _logged([sys.executable, str(llama / "convert_hf_to_gguf.py"), str(model), "--outtype", "bf16",
                 "--outfile", str(gguf)], f"convert {model} to {gguf}", env=env)
    return gguf


# Environment variables that change what a run measures (another CPU's code paths, thread binding,
# the plugin's switches), recorded in the results
RECORDED_ENV_PREFIXES = ("VLLM_GPTOSS_", "VLLM_CPU_", "ONEDNN_", "DNNL_", "ATEN_CPU_CAPABILITY", "OMP_", "CMAKE_ARGS")


def run_environment() -> dict:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_ENV_PREFIXES)}


def _logged(cmd: list[str], what: str, env=None) -> None:
    print(f"  {what}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit status {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"    done in {time.perf_counter() - t:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ run
class MemoryTrace:
    """Where the peak RSS comes from: samples this process's /proc/self/status every 0.1 s in a
    thread and keeps, per phase (`mark(name)` starts the next), the largest RssAnon (heap: weights,
    KV cache, runtime buffers), RssFile (mapped file pages: the safetensors shards while loading,
    which the kernel may drop under memory pressure) and VmRSS (their sum, what ru_maxrss peaks at),
    and each at the phase's end. GiB."""

    FIELDS = ("RssAnon", "RssFile", "VmRSS")

    def __init__(self, period_s: float = 0.1):
        import threading

        self.phases: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new_phase("imports")
        self._thread = threading.Thread(target=self._loop, args=(period_s,), daemon=True)
        self._thread.start()

    @staticmethod
    def read() -> dict[str, float]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in MemoryTrace.FIELDS:
                out[key] = int(rest.split()[0]) * 1024 / 2**30  # kB
        return out

    def _new_phase(self, name: str) -> None:
        now = self.read()
        self.phases[name] = {"peak": dict(now), "end": dict(now)}
        self._phase = name

    def _sample(self) -> None:
        now = self.read()
        with self._lock:
            ph = self.phases[self._phase]
            ph["end"] = now
            for k, v in now.items():
                ph["peak"][k] = max(ph["peak"].get(k, 0.0), v)

    def _loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self._sample()

    def mark(self, name: str) -> None:
        """The phase so far ends now; `name` begins."""
        self._sample()
        with self._lock:
            self._new_phase(name)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {name: {kind: {k: round(v, 3) for k, v in vals.items()} for kind, vals in ph.items()}
                for name, ph in self.phases.items()}


def _vllm_worker(spec: dict) -> dict:
    trace = MemoryTrace()
    import torch  # noqa: F401

    from vllm import LLM, SamplingParams

    trace.mark("load")

    cfg = json.loads((Path(spec["model"]) / "config.json").read_text())
    V = cfg["vocab_size"]
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=spec["enforce_eager"],
              max_model_len=spec["prompt_tokens"] + spec["decode_tokens"] + 16, enable_prefix_caching=False,
              seed=0, disable_log_stats=False,  # stats on: the request's token timestamps (below)
              **{k: spec[k] for k in ("max_num_seqs", "max_num_batched_tokens") if spec.get(k)})
    load_s = time.perf_counter() - t0
    trace.mark("requests")
    import random

    rng = random.Random(0)

    def prompt():
        return {"prompt_token_ids": [rng.randrange(V) for _ in range(spec["prompt_tokens"])]}

    S = spec["sequences"]

    def timed(max_tokens):
        ps = [prompt() for _ in range(S)]
        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        t = time.perf_counter()
        res = llm.generate(ps, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        assert all(len(r.outputs[0].token_ids) == max_tokens for r in res)
        ms = [r.metrics for r in res]
        # the last sequence to start decoding: from its first token to its last, all S decode
        timed.metrics = None if None in ms else max(ms, key=lambda m: m.first_token_ts)
        return dt

    timed(2)  # warm-up
    t_prefill = timed(1)
    t_total = timed(1 + spec["decode_tokens"])
    # decode from the engine's own timestamps of the same request (first to last token): a second
    # 256-token prefill's noise does not enter it, as it does t_total - t_prefill
    m = timed.metrics
    decode_s = (m.last_token_ts - m.first_token_ts) if m is not None and m.last_token_ts > m.first_token_ts else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory = trace.stop()
    profile = _profile_decode(timed, spec["profile"]) if spec["profile"] else None
    from vllm_gptoss import moe_ops  # the engine runs in this process: its kernel state is ours to read

    native = moe_ops._native
    huge = [ln for ln in Path("/proc/self/smaps_rollup").read_text().splitlines() if ln.startswith("AnonHugePages:")]
    return {"native_kernel": None if native is None else {"isa": native.isa, "features": native.features,
                                                          "path": str(native.path), "prefetch": native.prefetch,
                                                          "amx": native.amx},
            "anon_huge_pages_gib": int(huge[0].split()[1]) * 1024 / 2**30 if huge else None,
            "load_s": load_s, "prefill_s": t_prefill, "prefill_plus_decode_s": t_total,
            "prefill_tokens_per_s": S * spec["prompt_tokens"] / t_prefill,
            "decode_s": decode_s,
            "decode_tokens_per_s": S * spec["decode_tokens"] / (decode_s if decode_s else max(t_total - t_prefill, 1e-9)),
            "decode_tokens_per_s_by_difference": S * spec["decode_tokens"] / max(t_total - t_prefill, 1e-9),
            "peak_rss_bytes": rss, "memory_gib_by_phase": memory, "profile": profile}


def _profile_decode(timed, steps: int) -> dict:
    """Where a decode step's time goes: torch.profiler over a prefill and `steps` decode steps,
    minus a prefill alone, by op (self CPU time; run eager for per-op names, compiled code shows up
    as one graph call), in ms per decode step."""
    from torch.profiler import ProfilerActivity, profile

    def ops(n):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = timed(n)
        return wall, {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    w1, one = ops(1)
    wn, many = ops(1 + steps)
    per_step = {k: (v - one.get(k, 0.0)) / steps for k, v in many.items()}
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:30]
    return {"steps": steps, "wall_ms_per_step": (wn - w1) * 1e3 / steps,
            "self_cpu_ms_per_step": dict((k, round(v, 3)) for k, v in top)}


def _llamacpp_worker(spec: dict) -> dict:
    import random

    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=spec["gguf"], n_ctx=spec["prompt_tokens"] + spec["decode_tokens"] + 16,
                n_threads=spec["threads"], n_batch=512, verbose=False)
    load_s = time.perf_counter() - t0
    rng = random.Random(0)
    V = llm.n_vocab()

    def timed(n):
        toks = [rng.randrange(V) for _ in range(spec["prompt_tokens"])]
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        tp = time.perf_counter() - t
        for _ in range(n):  # random weights: which token is fed back does not change the work
            llm.eval([rng.randrange(V)])
        return tp, time.perf_counter() - t

    timed(1)
    tp, tt = timed(spec["decode_tokens"])
    return {"load_s": load_s, "prefill_s": tp, "prefill_plus_decode_s": tt,
            "prefill_tokens_per_s": spec["prompt_tokens"] / tp,
            "decode_tokens_per_s": spec["decode_tokens"] / max(tt - tp, 1e-9),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class MemoryCgroup:
    """A memory cgroup that caps one variant's process at `limit` bytes, as a machine with that much
    RAM and no swap would: the kernel reclaims the page cache (the mapped checkpoint shards) before it
    OOM-kills, so a run that finishes inside it fits such a machine. cgroup v1 (memory controller) or
    v2; needs write access to /sys/fs/cgroup (root, or a delegated subtree)."""

    def __init__(self, limit: int, name: str):
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():  # v2
            self.dir, self.files = root / name, dict(limit="memory.max", procs="cgroup.procs",
                                                     peak="memory.peak", events="memory.events")
        elif (root / "memory").is_dir():
            self.dir, self.files = root / "memory" / name, dict(
                limit="memory.limit_in_bytes", procs="cgroup.procs", peak="memory.max_usage_in_bytes",
                events="memory.oom_control")
        else:
            raise SystemExit("--memory-limit: no cgroup memory controller under /sys/fs/cgroup")
        try:
            self.dir.mkdir(exist_ok=True)
            (self.dir / self.files["limit"]).write_text(str(limit))
        except OSError as e:
            raise SystemExit(f"--memory-limit: cannot create a memory cgroup at {self.dir}: {e}") from e

    def enter(self) -> None:
        """In the child, before exec: move this process into the cgroup."""
        (self.dir / self.files["procs"]).write_text(str(os.getpid()))

    def close(self) -> dict:
        peak = int((self.dir / self.files["peak"]).read_text())
        events = dict(ln.split() for ln in (self.dir / self.files["events"]).read_text().splitlines() if ln.strip())
        self.dir.rmdir()
        return {"peak_bytes": peak, "oom_kills": int(events.get("oom_kill", 0))}


# the native variant with one setting changed, for A/B runs of the whole model
NATIVE_VARIANT_ENV = {
    "native-4k": {"VLLM_GPTOSS_CPU_HUGE_PAGES": "0"},  # weights left on 4 KiB pages
    "native-l1": {"VLLM_GPTOSS_CPU_PREFETCH": "l1"},  # decode loops prefetch into L1
    "native-l2": {"VLLM_GPTOSS_CPU_PREFETCH": "l2"},  # ... into L2
    "native-onednn": {"VLLM_GPTOSS_CPU_DENSE_GEMV": "0"},  # attention projections, lm_head: vLLM's oneDNN GEMM
}


def _run_variant(variant: str, args) -> dict:
    spec = {"model": str(args.model), "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
            "threads": args.threads, "enforce_eager": args.enforce_eager, "gguf": args.gguf, "variant": variant,
            "profile": args.profile, "max_num_seqs": args.max_num_seqs, "sequences": args.sequences,
            "max_num_batched_tokens": args.max_num_batched_tokens}
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_OMP_THREADS_BIND=f"0-{args.threads - 1}" if args.threads > 1 else "0",
               VLLM_CPU_KVCACHE_SPACE=str(args.kv_cache_gib), OMP_NUM_THREADS=str(args.threads))
    if variant == "torch":
        env["VLLM_GPTOSS_CPU_NATIVE"] = "0"
    env.update(NATIVE_VARIANT_ENV.get(variant, {}))
    if variant == "stock":  # vLLM's own gpt-oss class and MXFP4 method (needs AMX on the CPU)
        env["VLLM_GPTOSS_DISABLE"] = "1"
    python = str(args.llamacpp_venv / "bin" / "python") if variant == "llamacpp" else sys.executable
    from cpu_moe import measure_bandwidth  # beside this file

    # the host's bandwidth drifts (BENCHMARKS.md: 48-81 GB/s within minutes on one VM): probed right
    # before each variant, so that a ratio between variants can be read against it
    bandwidth = measure_bandwidth(args.threads)
    load_before = os.getloadavg()[0]
    cgroup = MemoryCgroup(args.memory_limit, f"vllm-gptoss-bench-{os.getpid()}") if args.memory_limit else None
    try:
        proc = subprocess.run([python, os.path.abspath(__file__), "_worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=args.timeout,
                              preexec_fn=cgroup.enter if cgroup else None)
    finally:
        cgroup_result = cgroup.close() if cgroup else None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        oom = (f"; inside --memory-limit {args.memory_limit} bytes: {cgroup_result}" if cgroup_result else "")
        raise SystemExit(f"variant {variant} failed (exit status {proc.returncode}{oom}):\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    if cgroup_result:
        r["memory_limit"] = {"limit_bytes": args.memory_limit, **cgroup_result}
    r.update(variant=variant, load_avg_1min_before=load_before, load_avg_1min_after=os.getloadavg()[0],
             bandwidth_gbs_before=bandwidth)
    native = variant == "native" or variant in NATIVE_VARIANT_ENV
    if variant != "llamacpp" and (r["native_kernel"] is not None) != native:
        raise SystemExit(f"variant {variant}: the native kernel was {'not ' if native else ''}"
                         f"loaded in the engine; stderr:\n{proc.stderr[-4000:]}")
    return r


def summarize(results: list[dict], baseline: str = "llamacpp") -> dict:
    """Medians per variant and, per cycle, each other variant's speed over the baseline's of that cycle."""
    import statistics

    by_variant: dict[str, list[dict]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    out: dict = {"medians": {v: {"runs": len(rs), **{k: statistics.median(r[k] for r in rs)
                                                   for k in ("decode_tokens_per_s", "prefill_tokens_per_s")}}
                             for v, rs in by_variant.items()}}
    lc = {r["cycle"]: r for r in by_variant.get(baseline, [])}
    ratios = {}
    for v, rs in by_variant.items():
        pairs = [(r, lc[r["cycle"]]) for r in rs if v != baseline and r["cycle"] in lc]
        if not pairs:
            continue
        dec = [a["decode_tokens_per_s"] / b["decode_tokens_per_s"] for a, b in pairs]
        pre = [a["prefill_tokens_per_s"] / b["prefill_tokens_per_s"] for a, b in pairs]
        ratios[v] = {"cycles": len(pairs),
                     "decode": {"median": statistics.median(dec), "min": min(dec), "max": max(dec),
                                "cycles_ahead": sum(d >= 1 for d in dec), "each": dec},
                     "prefill": {"median": statistics.median(pre), "min": min(pre), "max": max(pre), "each": pre}}
    if ratios:
        out["baseline"] = baseline
        out[f"ratio_to_{baseline}"] = ratios
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        spec = json.loads(sys.argv[2])
        r = _llamacpp_worker(spec) if spec["variant"] == "llamacpp" else _vllm_worker(spec)
        print("RESULT " + json.dumps(r), flush=True)
        os._exit(0)  # vLLM's in-process engine can hang in interpreter shutdown
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a random MXFP4 checkpoint")
    w.add_argument("--shape", choices=sorted(SHAPES), required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--seed", type=int, default=0)
    lc = sub.add_parser("llamacpp", help="build llama-cpp-python from source in its own venv and convert a checkpoint to GGUF")
    lc.add_argument("--model", type=Path, required=True)
    lc.add_argument("--venv", type=Path, required=True, help="where to create the llama.cpp venv")
    lc.add_argument("--version", default=LLAMA_CPP_PYTHON)
    lc.add_argument("--gguf", type=Path, help="output GGUF (default: beside the checkpoint)")
    lc.add_argument("--cmake-args", default="", help="CMake flags for llama.cpp's build (another CPU's ISA; "
                    "default: llama.cpp's own, GGML_NATIVE)")
    r = sub.add_parser("run", help="serve a checkpoint through vLLM-CPU and measure")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--out", required=True, help="JSON results file")
    r.add_argument("--variants", nargs="+", choices=("native", *NATIVE_VARIANT_ENV, "torch", "stock", "llamacpp"),
                   default=["native"], help="native-4k / native-l1 / native-l2: native with one setting changed "
                   "(NATIVE_VARIANT_ENV); default %(default)s")
    r.add_argument("--gguf", help="GGUF of the same checkpoint for the llamacpp variant (made by `llamacpp`)")
    r.add_argument("--llamacpp-venv", type=Path, help="the venv `llamacpp` built (for the llamacpp variant)")
    r.add_argument("--prompt-tokens", type=int, default=256)
    r.add_argument("--sequences", type=int, default=1,
                   help="prompts submitted together per request (vLLM variants; batched decode, tokens/s over all)")
    r.add_argument("--baseline", default="llamacpp", help="the variant each cycle's others are divided by")
    r.add_argument("--decode-tokens", type=int, default=32)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--kv-cache-gib", type=int, default=1)
    r.add_argument("--max-num-seqs", type=int, help="vLLM's max_num_seqs (default: the LLM class's on the CPU, 256; "
                   "`vllm serve` uses 128 there). Its compile warm-up samples that many rows of 201,088 logits: "
                   "~1.1 GiB of transient RSS at 256")
    r.add_argument("--max-num-batched-tokens", type=int,
                   help="vLLM's max_num_batched_tokens (default: the LLM class's on the CPU, 4096; `vllm serve`: 2048)")
    r.add_argument("--enforce-eager", action="store_true", help="no torch.compile (vLLM-CPU compiles by default)")
    r.add_argument("--repeat", type=int, default=1,
                   help="run the variant list this many times in turn (A B A B ...): the summary gives "
                        "medians per variant and each cycle's ratios to llama.cpp, for hosts whose "
                        "bandwidth drifts")
    r.add_argument("--memory-limit", type=float, default=0, metavar="BYTES",
                   help="run each variant in a memory cgroup of this many bytes (16e9: a 16 GB machine "
                        "without swap; the page cache counts and is reclaimed first): it passes if it finishes")
    r.add_argument("--timeout", type=float, default=7200)
    r.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS decode steps by op (torch.profiler; with --enforce-eager for op names)")
    args = p.parse_args()
    if args.cmd == "write":
        write_checkpoint(args.shape, args.out, args.seed)
        return 0
    if args.cmd == "llamacpp":
        print(prepare_llamacpp(args.model, args.venv, args.version, args.gguf, args.cmake_args))
        return 0
    args.memory_limit = int(args.memory_limit)
    if not (args.model / "config.json").exists():
        p.error(f"--model: no config.json in {args.model}")
    results = []
    for cycle in range(args.repeat):
        for variant in args.variants:
            if variant == "llamacpp" and not (args.gguf and args.llamacpp_venv):
                p.error("--variants llamacpp needs --gguf and --llamacpp-venv (both made by the `llamacpp` command)")
            if variant == "llamacpp" and args.sequences != 1:
                p.error(f"--sequences {args.sequences}: the llamacpp variant decodes one sequence only")
            res = _run_variant(variant, args)
            res["cycle"] = cycle
            results.append(res)
            bandwidth = res["bandwidth_gbs_before"]
            print(f"  {variant:<8} prefill {res['prefill_tokens_per_s']:8.2f} tok/s   decode "
                  f"{res['decode_tokens_per_s']:8.2f} tok/s   peak RSS {res['peak_rss_bytes'] / 2**30:6.2f} GiB "
                  f"({res.get('anon_huge_pages_gib') or 0:.2f} on huge pages)   "
                  f"(bandwidth before {bandwidth:.1f} GB/s, load avg {res['load_avg_1min_before']:.1f} -> "
                  f"{res['load_avg_1min_after']:.1f})", flush=True)
            for phase, mem in (res.get("memory_gib_by_phase") or {}).items():
                print(f"    {phase:<9} peak: anon {mem['peak']['RssAnon']:6.2f} file {mem['peak']['RssFile']:6.2f} "
                      f"total {mem['peak']['VmRSS']:6.2f} GiB;  at its end: anon {mem['end']['RssAnon']:6.2f} "
                      f"file {mem['end']['RssFile']:6.2f} GiB")
            if res.get("memory_limit"):
                ml = res["memory_limit"]
                print(f"    inside a {ml['limit_bytes'] / 1e9:.2f} GB memory cgroup: finished, cgroup peak "
                      f"{ml['peak_bytes'] / 1e9:.2f} GB (page cache included), OOM kills {ml['oom_kills']}")
            if res.get("profile"):
                prof = res["profile"]
                print(f"    decode step {prof['wall_ms_per_step']:.1f} ms wall; self CPU ms per step by op:")
                for k, v in list(prof["self_cpu_ms_per_step"].items())[:20]:
                    print(f"      {v:9.2f}  {k}")
    summary = summarize(results, args.baseline) if args.repeat > 1 or len(args.variants) > 1 else None
    flags_file = args.llamacpp_venv / LLAMACPP_CMAKE_ARGS_FILE if args.llamacpp_venv else None
    llamacpp_cmake_args = flags_file.read_text() if flags_file and flags_file.exists() else None
    if summary:
        for variant, v in summary["medians"].items():
            print(f"  median over {v['runs']} runs: {variant:<8} prefill {v['prefill_tokens_per_s']:8.2f} tok/s   "
                  f"decode {v['decode_tokens_per_s']:8.2f} tok/s")
        for variant, v in summary.get(f"ratio_to_{args.baseline}", {}).items():
            print(f"  {variant} / {args.baseline}, same cycle: decode median {v['decode']['median']:.2f}x "
                  f"(min {v['decode']['min']:.2f}, max {v['decode']['max']:.2f}, ahead in {v['decode']['cycles_ahead']} "
                  f"of {v['cycles']}), prefill median {v['prefill']['median']:.2f}x")
    doc = {"benchmark": "cpu_model", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.relpath(sys.executable)] + sys.argv), "machine": machine_info(),
           "model_config": json.loads((args.model / "config.json").read_text()),
           "config": {k: getattr(args, k) for k in ("variants", "repeat", "prompt_tokens", "decode_tokens",
                                                    "threads", "kv_cache_gib", "enforce_eager", "memory_limit",
                                                    "max_num_seqs", "max_num_batched_tokens", "sequences",
                                                    "baseline")},
           "environment": run_environment(), "llamacpp_cmake_args": llamacpp_cmake_args,
           "results": results, "summary": summary}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
