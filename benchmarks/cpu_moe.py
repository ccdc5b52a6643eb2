"""CPU benchmark: our MXFP4 MoE experts vs stock vLLM-CPU's unquantized MoE, at gpt-oss-20b layer shapes.

    .venv/bin/python benchmarks/cpu_moe.py --out results.json
    .venv/bin/python benchmarks/cpu_moe.py --out /tmp/small.json --hidden 256 --intermediate 256 --repeats 3

What runs (one MoE layer's experts, 20b shapes by default: hidden 2880, expert width 2880, 32 experts,
top-4; bf16 activations; torch threads 2):
  native `vllm_gptoss.moe_ops.cpu_native_moe`, the op `GptOssMxfp4MoEMethod.apply` calls on the CPU
         when the native kernel builds (gptoss_kernels/cpu: the whole MoE in one call, MXFP4 decoded in
         registers), on weights in vLLM's parameter layout (uint8 blocks [E, N, K/2] + E8M0 scales
         [E, N, K/32]) used in place, float32 biases.
  torch  (optional, --variants) `vllm_gptoss.moe_ops.torch_moe`, the torch path (no compiler, or
         VLLM_GPTOSS_CPU_NATIVE=0): it dequantizes one expert at a time, on every call.
  stock  `vllm._custom_ops.cpu_fused_moe` with activation "swigluoai": the op vLLM 0.32's
         `CPUUnquantizedExperts.apply` calls for an unquantized gpt-oss MoE on the CPU, on the same
         weights dequantized (exactly: E2M1 x 2^k is representable) to bf16 [E, 2I, H] / [E, H, I] and
         prepacked by `cpu_prepack_moe_weight` with the ISA the vLLM MoE oracle would pick on this CPU
         (the same steps as `CPUUnquantizedExperts.process_weights_after_loading`).
Routing (top-k of random logits, softmax over the k) is computed outside the timing: in vLLM both
paths share the same router.

No call is served from the caches: each variant holds --layers distinct layers of weights (default
3) and --routings distinct routings per token count (default 7), and call i uses layer i mod layers
and routing i mod routings, as consecutive layers of a forward pass would. The DRAM read bandwidth
is measured in the same run (a torch sum over a 1 GiB float32 array, same threads, best of 5,
before and after the variants); each path's GB/s = the bytes of the experts its call touched, in its
own layout (MXFP4 + scales + biases, or bf16), over the call's time, and % bw = that over the
measured bandwidth.

Each variant runs in a fresh subprocess, so that one variant's weights and allocator state never
count in the other's memory. In it: weights are built from fixed seeds (the stock variant from the
same MXFP4 tensors), the RSS growth they caused is read, then for each token count: warm-up calls,
then timed calls (--repeats at most, --budget-s seconds, at least 3). Before each timed call the
kernel's peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`); after it, VmHWM minus the RSS
before the call is that call's peak memory growth (reported: the max over the timed calls). Time:
median of the timed calls (time.perf_counter). The parent then compares each path's output with
stock's on the same inputs (layer 0, routing 0; relative L2 error) and exits 1 if they disagree by
more than --tolerance: the timings of a path that computes something else would mean nothing.

Weights are random but realistic in scale: uniformly random E2M1 codes, E8M0 scales 2^-8..2^-6
(weight std about 0.02-0.05, so hidden activations are O(1) and the SwiGLU clamp at 7 is sometimes
reached), biases N(0, 0.1^2), hidden states N(0, 1). Never zeros.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = ("native", "torch", "stock")
# gpt-oss's constants; stock vLLM-CPU's "swigluoai" hard-codes the same
from gptoss_kernels.reference import SWIGLU_ALPHA, SWIGLU_LIMIT  # noqa: E402
MiB = 1024 * 1024
MIN_TIMED = 3  # timed calls per case, at least (the median of 3 resists one outlier)


# ------------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS (ru_maxrss cannot be reset).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ------------------------------------------------------------------------------------ the worker
def build_mxfp4(E: int, H: int, I: int, seed: int):
    """Random MXFP4 experts in vLLM's parameter layout (what `GptOssMxfp4MoEMethod.create_weights` makes)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w = {
        "w13_weight": torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g),
        "w13_weight_scale": torch.randint(119, 122, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g),
        "w2_weight": torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g),
        "w2_weight_scale": torch.randint(119, 122, (E, H, I // 32), dtype=torch.uint8, generator=g),
        "w13_bias": (torch.randn(E, 2 * I, generator=g) * 0.1).to(torch.bfloat16),
        "w2_bias": (torch.randn(E, H, generator=g) * 0.1).to(torch.bfloat16),
    }
    return w


def build_inputs(T: int, E: int, H: int, top_k: int, seed: int):
    import torch
    from gptoss_kernels.reference import route_reference

    g = torch.Generator().manual_seed(seed + 1000 + T)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16)
    topk_weights, topk_ids = route_reference(torch.randn(T, E, generator=g), top_k)
    return x, topk_weights.contiguous(), topk_ids.contiguous()


def stock_isa() -> str:
    """The ISA vLLM's unquantized-MoE oracle would choose here (same class order as oracle/unquantized.py)."""
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import (
        ArmCPUUnquantizedExperts,
        CPUUnquantizedExperts,
        PowerCPUUnquantizedExperts,
        X86CPUUnquantizedExperts,
    )

    for cls in (X86CPUUnquantizedExperts, ArmCPUUnquantizedExperts, PowerCPUUnquantizedExperts,
                CPUUnquantizedExperts):
        if cls._supports_current_device():
            return cls.isa
    raise RuntimeError("no vLLM CPU unquantized MoE experts class supports this machine")


def make_stock(w: dict):
    """Dequantize expert by expert into bf16 [E, 2I, H] / [E, H, I] and prepack as vLLM does at load."""
    import torch
    from gptoss_kernels.mxfp4 import dequantize
    from vllm._custom_ops import cpu_fused_moe, cpu_prepack_moe_weight

    isa = stock_isa()
    if isa == "amx":  # the tile-data permission (arch_prctl) vLLM-CPU's worker holds; without it: SIGILL
        torch.cpu._init_amx()
    packed = {}
    for name in ("w13", "w2"):
        blocks, scales = w.pop(f"{name}_weight"), w.pop(f"{name}_weight_scale")
        E, N = blocks.shape[:2]
        dense = torch.empty(E, N, blocks.shape[2] * 2, dtype=torch.bfloat16)
        for e in range(E):
            dense[e] = dequantize(blocks[e], scales[e], torch.bfloat16)
        del blocks, scales
        packed[name] = cpu_prepack_moe_weight(dense, isa)
        del dense
    w13, w2, b13, b2 = packed["w13"], packed["w2"], w["w13_bias"], w["w2_bias"]

    def run(x, topk_weights, topk_ids, poison=False):
        # the checked (warm-up) call gets a NaN-filled output, so rows the kernel skips cannot pass
        out = torch.full_like(x, float("nan")) if poison else torch.empty_like(x)
        cpu_fused_moe(out, x, w13, w2, b13, b2, topk_weights, topk_ids, "swigluoai", isa, False)
        return out

    held = [w13, w2, b13, b2]
    return run, held, {"isa": isa}


def make_ours(w: dict):
    from vllm_gptoss import moe_ops

    def run(x, topk_weights, topk_ids, poison=False):  # the op allocates its own output
        return moe_ops.torch_moe(x, topk_weights, topk_ids, w["w13_weight"], w["w13_weight_scale"], w["w13_bias"],
                                 w["w2_weight"], w["w2_weight_scale"], w["w2_bias"], SWIGLU_ALPHA, SWIGLU_LIMIT)

    return run, list(w.values()), {}


def make_native(w: dict):
    """Our native kernel exactly as `GptOssMxfp4MoEMethod.apply` calls it on the CPU: the
    `vllm_gptoss::moe_cpu_native` op on the layer's MXFP4 parameters in place (the E2M1 codes
    rewritten into the kernel's row-group layout once, as at model load), float32 biases, on
    transparent huge pages as the plugin allocates them."""
    from types import SimpleNamespace

    from vllm_gptoss import huge_pages, moe_ops

    native = moe_ops.cpu_native_kernel()
    if native is None:
        raise SystemExit("the native CPU kernel is not available here (see the warning above)")
    # on transparent huge pages where the plugin's create_weights puts them (vllm_gptoss.huge_pages)
    w = {k: huge_pages.copy_on_huge_pages(v) for k, v in w.items()}
    prepared = moe_ops.CpuNativeWeights(SimpleNamespace(**w), native)  # packs w13 / w2 in place
    b13, b2 = prepared.w13_bias, prepared.w2_bias

    def run(x, topk_weights, topk_ids, poison=False):
        return moe_ops.cpu_native_moe(x, topk_weights, topk_ids, w["w13_weight"], w["w13_weight_scale"], b13,
                                      w["w2_weight"], w["w2_weight_scale"], b2, SWIGLU_ALPHA, SWIGLU_LIMIT)

    return run, [w["w13_weight"], w["w13_weight_scale"], w["w2_weight"], w["w2_weight_scale"], b13, b2], \
        {"isa": native.isa, "prefetch": native.prefetch, "amx": native.amx}


MAKERS = {"native": make_native, "torch": make_ours, "stock": make_stock}


def expert_bytes(variant: str, H: int, I: int) -> int:
    """Bytes one expert's weights take in the variant's layout (what a call streams per touched expert)."""
    if variant == "stock":
        return 3 * H * I * 2 + (2 * I + H) * 2  # bf16 weights + bf16 biases
    mx = 3 * H * I // 2 + 3 * H * I // 32       # E2M1 codes + E8M0 scales
    return mx + (2 * I + H) * (4 if variant == "native" else 2)


def measure_bandwidth(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """DRAM read bandwidth (GB/s): the best of `reps` torch sums over a float32 array far larger than
    the caches, with the benchmark's thread count."""
    import torch

    torch.set_num_threads(threads)
    a = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


def worker(args) -> None:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "bandwidth":
        print("RESULT " + json.dumps({"variant": "bandwidth", "gb_per_s": measure_bandwidth(args.threads),
                                      "load_avg_1min_after": os.getloadavg()[0]}), flush=True)
        return
    import vllm._custom_ops  # noqa: F401  (loads the CPU ops; import cost kept out of the baseline)
    import vllm_gptoss.moe_ops  # noqa: F401

    gc.collect()
    rss_start = rss_bytes()
    t0 = time.perf_counter()
    # --layers distinct layers' weights, cycled call by call (with --routings different routings):
    # consecutive calls never find their experts in the caches, as in a real forward pass.
    layers = []
    for layer in range(args.layers):
        w = build_mxfp4(args.experts, args.hidden, args.intermediate, args.seed + layer)
        layers.append(MAKERS[args.worker](w))
        del w
        gc.collect()
    setup_s = time.perf_counter() - t0
    rss_weights = rss_bytes()
    weight_bytes = sum(t.numel() * t.element_size() for t in layers[0][1])
    n_weights = 3 * args.experts * args.hidden * args.intermediate  # gate + up + down
    per_expert = expert_bytes(args.worker, args.hidden, args.intermediate)

    for T in args.tokens:
        inputs = [build_inputs(T, args.experts, args.hidden, args.top_k, args.seed + 7919 * r)
                  for r in range(args.routings)]
        touched = [int(torch.unique(ids).numel()) for _, _, ids in inputs]
        first = layers[0][0](*inputs[0], poison=True)  # layer 0, routing 0: the checked output
        for i in range(1, args.warmup):
            layers[i % args.layers][0](*inputs[i % args.routings])
        times, cpu_times, peaks, rates = [], [], [], []
        # the native kernel's AMX work items (experts x 32 rows that multiplied on tiles) in the timed calls
        native = vllm_gptoss.moe_ops._native if args.worker == "native" else None
        amx_items = native.amx_items() if native is not None else 0
        i = 0
        # at least MIN_TIMED calls; more, up to --repeats, while the timed calls stay within --budget-s
        while len(times) < args.repeats and (len(times) < MIN_TIMED or sum(times) < args.budget_s):
            i += 1
            run = layers[i % args.layers][0]
            x, tw, ids = inputs[i % args.routings]
            gc.collect()
            before = rss_bytes()
            reset_peak_rss()
            c = time.process_time()
            t = time.perf_counter()
            out = run(x, tw, ids)
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
            peaks.append(peak_rss_bytes() - before)
            rates.append(touched[i % args.routings] * per_expert / times[-1] / 1e9)
            del out
        torch.save(first, os.path.join(args.out_dir, f"{args.worker}_{T}.pt"))
        result = {
            "variant": args.worker,
            "tokens": T,
            "experts_touched_mean": statistics.mean(touched),
            "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "times_ms": [t * 1e3 for t in times],
            # CPU time of all the process's threads during the call: less sensitive than wall time to
            # other jobs on a shared machine (spin-waiting OpenMP threads count in it too)
            "cpu_median_ms": statistics.median(cpu_times) * 1e3,
            "gb_per_s_median": statistics.median(rates),
            "peak_call_rss_growth_bytes": max(peaks),
            "weight_bytes": weight_bytes,
            "bits_per_weight": 8 * weight_bytes / n_weights,
            "rss_after_weights_bytes": rss_weights,
            "rss_weights_growth_bytes": rss_weights - rss_start,
            "setup_s": setup_s,
            "load_avg_1min_after": os.getloadavg()[0],
            **layers[0][2],
        }
        if native is not None:
            result["amx_items_per_call"] = (native.amx_items() - amx_items) / len(times)
        print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ the parent
def machine_info() -> dict:
    import torch
    import vllm

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "vllm": vllm.__version__, "platform": platform.platform()}


def run_worker(variant: str, args, tmp: str) -> list[dict]:
    """One fresh subprocess per variant; it runs every token count and prints one RESULT line each."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--out-dir", tmp,
           "--tokens", *map(str, args.tokens)]
    for flag in ("experts", "hidden", "intermediate", "top_k", "repeats", "warmup", "budget_s", "threads", "seed",
                 "layers", "routings"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", OMP_NUM_THREADS=str(args.threads))
    results = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:  # stderr passes through
        for line in proc.stdout:
            if line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results.append(r)
                if variant == "bandwidth":
                    print(f"  DRAM read bandwidth {r['gb_per_s']:.1f} GB/s", flush=True)
                else:
                    print(f"  {variant:<6} T={r['tokens']:<4} median {r['median_ms']:10.2f} ms over "
                          f"{len(r['times_ms'])} calls, {r['gb_per_s_median']:.1f} GB/s", flush=True)
            elif line.strip():
                print(f"  [{variant}] {line.rstrip()}", flush=True)
    want = 1 if variant == "bandwidth" else len(args.tokens)
    if proc.returncode != 0 or len(results) != want:
        raise SystemExit(f"worker {variant} failed (exit status {proc.returncode})")
    return results


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="cpu_moe_results.json", help="JSON results file (default %(default)s)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["native", "stock"],
                   help="paths to time (default: native stock; `torch` is the old dequantize-per-call path)")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 512], help="token counts (default 1 8 64 512)")
    p.add_argument("--experts", type=int, default=32, help="experts in the layer (default %(default)s, 20b)")
    p.add_argument("--hidden", type=int, default=2880, help="hidden size H (default %(default)s)")
    p.add_argument("--intermediate", type=int, default=2880, help="expert width I; w13 has 2I rows (default %(default)s)")
    p.add_argument("--top-k", type=int, default=4, help="experts per token (default %(default)s)")
    p.add_argument("--layers", type=int, default=3,
                   help="distinct layers of weights per variant, cycled call by call so that no call finds its "
                        "experts in the caches (default %(default)s; stock holds 1.5 GB a layer at 20b shapes)")
    p.add_argument("--routings", type=int, default=7, help="distinct routings per token count, cycled (default %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per case, at most (median reported; see --budget-s; default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per case before timing (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=10.0,
                   help=f"stop timing a case once its timed calls add up to this many seconds, after at least "
                        f"{MIN_TIMED} calls (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=2e-2,
                   help="max relative L2 error between each path's output and stock's, bf16 activations (default %(default)s)")
    p.add_argument("--worker", choices=VARIANTS + ("bandwidth",), help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hidden % 32 or args.intermediate % 32:
        p.error(f"--hidden and --intermediate must be multiples of 32 (MXFP4 blocks), found "
                f"{args.hidden} and {args.intermediate}")
    if args.repeats < 1 or args.warmup < 1 or args.layers < 1 or args.routings < 1:
        p.error("--repeats, --warmup, --layers and --routings must be at least 1")
    if args.worker:
        worker(args)
        return 0
    if "stock" not in args.variants:
        p.error("--variants must include stock (the baseline every ratio and check is against)")

    import torch

    started = datetime.datetime.now(datetime.timezone.utc)
    variants = [v for v in VARIANTS if v in args.variants]
    print(f"CPU MoE benchmark: E={args.experts} H={args.hidden} I={args.intermediate} top-{args.top_k}, "
          f"bf16 activations, {args.threads} threads, {args.layers} layers x {args.routings} routings cycled, "
          f"{args.warmup} warm-up + up to {args.repeats} timed calls", flush=True)
    load_before = os.getloadavg()[0]
    results, checks, ok, bandwidth = [], [], True, []
    with tempfile.TemporaryDirectory() as tmp:
        bandwidth += run_worker("bandwidth", args, tmp)
        for variant in variants:
            t = time.perf_counter()
            results += run_worker(variant, args, tmp)
            print(f"  {variant}: {time.perf_counter() - t:.0f} s including start-up and weight set-up", flush=True)
        bandwidth += run_worker("bandwidth", args, tmp)
        for T in args.tokens:
            b = torch.load(os.path.join(tmp, f"stock_{T}.pt"))
            for variant in variants:
                if variant == "stock":
                    continue
                a = torch.load(os.path.join(tmp, f"{variant}_{T}.pt"))
                err = rel_err(a, b)
                good = bool(torch.isfinite(a).all() and torch.isfinite(b).all() and err <= args.tolerance
                            and b.float().std() > 0)
                ok &= good
                checks.append({"tokens": T, "variant": variant, "rel_l2_vs_stock": err,
                               "max_abs_diff": (a.float() - b.float()).abs().max().item(),
                               "output_std": b.float().std().item(), "ok": good})
                print(f"  T={T:<4} check: rel. L2 error {variant} vs stock {err:.2e} "
                      f"(output std {b.float().std().item():.3f}) {'ok' if good else 'FAILED'}", flush=True)

    bw = max(r["gb_per_s"] for r in bandwidth)
    by = {(r["tokens"], r["variant"]): r for r in results}
    hdr = (f"{'tokens':>6} {'experts':>7} {'variant':>7} {'median ms':>10} {'min ms':>9} {'cpu ms':>8} {'speedup':>8} "
           f"{'GB/s':>6} {'% bw':>5} {'call peak MiB':>13} {'weights MiB':>11} {'bits/w':>6}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for T in args.tokens:
        for variant in variants:
            r = by[(T, variant)]
            r["speedup_vs_stock"] = by[(T, "stock")]["median_ms"] / r["median_ms"]
            r["pct_of_bandwidth"] = 100 * r["gb_per_s_median"] / bw
            print(f"{T:>6} {r['experts_touched_mean']:>7.1f} {variant:>7} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} "
                  f"{r['cpu_median_ms']:>8.1f} "
                  f"{r['speedup_vs_stock']:>8.2f} {r['gb_per_s_median']:>6.1f} {r['pct_of_bandwidth']:>5.0f} "
                  f"{r['peak_call_rss_growth_bytes'] / MiB:>13.1f} {r['weight_bytes'] / MiB:>11.1f} "
                  f"{r['bits_per_weight']:>6.2f}")
    print(f"cpu ms = median CPU time of all threads per call; speedup = stock median / this median; GB/s = bytes of the touched experts in this path's layout / "
          f"time (median over calls); % bw = of the DRAM read bandwidth measured in this run ({bw:.1f} GB/s, "
          f"best of before/after: {', '.join('%.1f' % r['gb_per_s'] for r in bandwidth)})")

    doc = {
        "benchmark": "cpu_moe",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable)] + sys.argv),
        "machine": {**machine_info(), "load_avg_1min_before": load_before,
                    "load_avg_1min_after": os.getloadavg()[0]},
        "config": {k: getattr(args, k) for k in ("tokens", "variants", "experts", "hidden", "intermediate", "top_k",
                                                 "layers", "routings", "repeats", "warmup", "budget_s", "threads",
                                                 "seed", "tolerance")},
        "variants": {"native": "vllm_gptoss.moe_ops.cpu_native_moe (gptoss_kernels.cpu, MXFP4 in registers)",
                     "torch": "vllm_gptoss.moe_ops.torch_moe (MXFP4, one expert dequantized at a time)",
                     "stock": "vllm._custom_ops.cpu_fused_moe swigluoai on prepacked bf16 weights"},
        "dram_read_gb_per_s": [r["gb_per_s"] for r in bandwidth],
        "results": results,
        "checks": checks,
        "ok": ok,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")
    if not ok:
        print("FAILED: a path disagrees with stock; the timings above are not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
