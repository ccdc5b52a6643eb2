"""Same-process A/B of native CPU MoE kernel builds, with oneDNN's bf16 GEMV as the yardstick.

    .venv/bin/python benchmarks/cpu_moe_ab.py --revs 24a2df4 HEAD --tokens 1 --out ab.json
    .venv/bin/python benchmarks/cpu_moe_ab.py --revs 24a2df4 WORKTREE --hot      # one expert in L3
    .venv/bin/python benchmarks/cpu_moe_ab.py --revs HEAD@skylake-avx512 WORKTREE@skylake-avx512 \
        WORKTREE@cascadelake WORKTREE          # other CPUs' code paths, built for their -march

Why this exists: on a VM whose memory bandwidth moves by 1.5x within minutes, two kernels timed in
different minutes (or processes) cannot be compared. Here every build of `moe_cpu.cpp` named by
--revs (git revisions of this repository, or WORKTREE for the files as they are) is compiled with
the package's own build command, loaded into this one process, and called in turn on the same
weights: each round visits the variants in a fresh random order, each variant makes one call per
layer (--layers layers of --experts random MXFP4 experts, cycled, so that the weights come from
DRAM; --hot instead routes every call to one expert of one layer, L3-resident: the kernel's compute
ceiling), and a round's median GB/s (bytes of the touched experts / time) is paired with the first
variant's in the same round. `onednn` (unless --no-onednn) is vLLM-CPU's bf16 GEMM (`onednn_mm`, the
one behind the attention projections and the lm_head) on a bf16 weight of the same bytes as four
experts, rotated over --layers copies: what this machine streams at that moment for a dense layer.
A spec `REV+amx` runs that build with the MoE's AMX path on (CPUs with AMX: `--revs HEAD HEAD+amx`
times the AVX512_BF16 and AMX paths of one build against each other). `--torch-bf16` adds
`torch_bf16`: a MoE of stock vLLM-CPU's kind where vLLM is absent (the GPU machine's host): the same
experts dequantized to bf16 (3.8x the bytes, held for every layer) and multiplied by torch's bf16
linear (oneDNN; on AMX tiles where the CPU has them), one expert at a time; its GB/s counts the
MXFP4 bytes of the experts it touched, as the builds', so that its ratio is a speed ratio.
A revision may name its own -march after an `@` (REV@MARCH; else --march): the code path another
CPU's build takes (x86-64-v3: AVX2; skylake-avx512: AVX-512 without AVX512_BF16; cascadelake: that
with AVX512_VNNI), run on this CPU (which must have those instructions). Every build gets the
prefetch setting the plugin would pick here (--prefetch), or its own after a `:` (REV@MARCH:l2).
Outputs of every build are checked against the first before timing (relative L2 < 1e-2, the unit
tests' bound for bf16 activations: builds of different code paths round differently).
Builds from before the row-group layout (no `gptoss_cpu_group_rows` in the library) get the experts
in the checkpoint order, later ones packed by their own `pack_experts`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "kernels"))
from gptoss_kernels import cpu as native_cpu  # noqa: E402
from gptoss_kernels.mxfp4 import dequantize  # noqa: E402
from gptoss_kernels.reference import SWIGLU_ALPHA, SWIGLU_LIMIT, swiglu_reference  # noqa: E402

SOURCES = tuple(f.name for f in (*native_cpu.SOURCES, *native_cpu.HEADERS))  # an older revision may lack some
SRC_DIR = "kernels/gptoss_kernels/cpu"


class _CDLL(ctypes.CDLL):
    """Libraries built before the row-group layout lack its two queries: answer 'checkpoint order'."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("gptoss_cpu_group_rows", "gptoss_cpu_chunk_bytes"):
                return lambda: 0
            raise


def build(spec: str, work: Path, march: str, prefetch: str) -> native_cpu.NativeKernels:
    """REV[@MARCH][:PREFETCH][+amx] built in `work`; march and prefetch where the spec names none;
    +amx: with the MoE's AMX path switched on (AMX CPUs; each spec loads its own copy of the library,
    so the switch is the variant's own)."""
    spec, amx, _ = spec.partition("+amx")
    spec_build, _, own_prefetch = spec.partition(":")
    rev, _, own_march = spec_build.partition("@")
    march, prefetch = own_march or march, own_prefetch or prefetch
    d = work / (spec.replace("/", "_").replace(":", "_") + ("_amx" if amx else ""))
    d.mkdir(parents=True, exist_ok=True)
    for f in SOURCES:
        if rev == "WORKTREE":
            text = (ROOT / SRC_DIR / f).read_text()
        else:
            proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{SRC_DIR}/{f}"], capture_output=True,
                                  text=True)
            if proc.returncode != 0 and f.endswith(".h"):
                continue  # a header of later revisions (the compiler says so if this one needed it)
            proc.check_returncode()
            text = proc.stdout
        (d / f).write_text(text)
    lib = d / "moe.so"
    cmd = native_cpu.build_command([d / f for f in SOURCES if f.endswith(".cpp")], lib, march, prefetch)
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    saved = native_cpu.ctypes.CDLL
    native_cpu.ctypes.CDLL = _CDLL
    try:
        kernels = native_cpu.NativeKernels(lib)
    finally:
        native_cpu.ctypes.CDLL = saved
    if amx:
        kernels.enable_amx()  # raises, saying why, where the build or the OS has no AMX tiles
    return kernels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--revs", nargs="+", required=True, help="git revisions (or WORKTREE); the first is the baseline")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--layers", type=int, default=6, help="layers of experts cycled (DRAM-resident in all)")
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=2880)
    ap.add_argument("--intermediate", type=int, default=2880)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--march", default="native", help="-march of every build without its own @MARCH (x86-64-v3: the AVX2 path)")
    ap.add_argument("--prefetch", default="auto", choices=["auto", *native_cpu.PREFETCH_HINTS],
                    help="prefetch setting of every build (auto: the plugin's default on this CPU)")
    ap.add_argument("--hot", action="store_true", help="every call on one expert of layer 0 (L3-resident)")
    ap.add_argument("--no-onednn", action="store_true")
    ap.add_argument("--torch-bf16", action="store_true",
                    help="also time torch's bf16 linear on the experts dequantized to bf16 (stock's kind of MoE, no vLLM)")
    ap.add_argument("--out", help="JSON results")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    E, H, I, K, T, L = a.experts, a.hidden, a.intermediate, a.top_k, a.tokens, a.layers
    with tempfile.TemporaryDirectory() as tmp:
        prefetch = native_cpu.default_prefetch() if a.prefetch == "auto" else a.prefetch
        libs = {rev: build(rev, Path(tmp), a.march, prefetch) for rev in a.revs}
        g = torch.Generator().manual_seed(0)
        layers = [dict(w13=torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g),
                       s13=torch.randint(119, 123, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g),
                       w2=torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g),
                       s2=torch.randint(119, 123, (E, H, I // 32), dtype=torch.uint8, generator=g),
                       b13=torch.randn(E, 2 * I, generator=g) * 0.01, b2=torch.randn(E, H, generator=g) * 0.01)
                  for _ in range(L)]
        packed = {}  # group_rows -> per layer (w13, w2) in that build's layout
        for rev, lib in libs.items():
            if lib.group_rows and lib.group_rows not in packed:
                packed[lib.group_rows] = [(lib.pack_experts(d["w13"]), lib.pack_experts(d["w2"])) for d in layers]
        x = torch.randn(T, H, generator=g).to(torch.bfloat16)
        per_expert = 3 * H * I // 2 + 3 * H * I // 32 + 4 * (2 * I + H)

        def call(rev, li, ids):
            lib, d = libs[rev], layers[li]
            w13, w2 = packed[lib.group_rows][li] if lib.group_rows else (d["w13"], d["w2"])
            return lib.moe(x, torch.full((T, K), 1.0 / K), ids, w13, d["s13"], d["b13"], w2, d["s2"], d["b2"],
                           SWIGLU_ALPHA, SWIGLU_LIMIT)

        # --torch-bf16: every layer's experts in bf16, [layer][expert] = (w13 [2I, H], w2 [H, I])
        bf16 = [[(dequantize(d["w13"][e], d["s13"][e], torch.bfloat16), dequantize(d["w2"][e], d["s2"][e], torch.bfloat16))
                 for e in range(E)] for d in layers] if a.torch_bf16 else None

        def torch_bf16_moe(li, ids):
            d, out, idl = layers[li], torch.zeros(T, H), ids.long()
            for e in torch.unique(idl).tolist():
                if e < 0:
                    continue
                tok, _ = (idl == e).nonzero(as_tuple=True)
                w13, w2 = bf16[li][e]
                h = torch.nn.functional.linear(x[tok], w13, d["b13"][e].to(torch.bfloat16))
                act = swiglu_reference(h.float()).to(torch.bfloat16)
                y = torch.nn.functional.linear(act, w2, d["b2"][e].to(torch.bfloat16))
                out.index_add_(0, tok, y.float() * (1.0 / K))
            return out.to(torch.bfloat16)

        def routing():
            if a.hot:
                return torch.tensor([[0] + [-1] * (K - 1)] * T, dtype=torch.int32)
            return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(torch.int32)

        ids0 = routing()
        ref = None
        for rev in a.revs:
            y = call(rev, 0, ids0).float()
            ref = y if ref is None else ref
            err = ((y - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                raise SystemExit(f"{rev}: output differs from {a.revs[0]}'s by {err:.2e} (relative L2)")
        names = list(a.revs)
        if bf16 is not None:
            err = ((torch_bf16_moe(0, ids0).float() - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                raise SystemExit(f"torch_bf16: output differs from {a.revs[0]}'s by {err:.2e} (relative L2)")
            names.append("torch_bf16")
        dnn = None
        if not a.no_onednn:
            from vllm import _custom_ops as ops

            rows = 4 * per_expert // (2 * H)  # a bf16 weight of four experts' bytes
            dnn = (ops, [ops.create_onednn_mm(torch.randn(rows, H, generator=g).to(torch.bfloat16).t(), 32)
                         for _ in range(L)], rows * H * 2)
            names.append("onednn")
        gbs = {n: [] for n in names}
        t_start = time.time()
        for rnd in range(a.rounds + 1):
            order = names[:]
            random.shuffle(order)
            for n in order:
                ts = []
                for li in range(L):
                    if n == "onednn":
                        ops, hs, nbytes = dnn
                        t0 = time.perf_counter()
                        ops.onednn_mm(hs[li], x, None)
                        ts.append(nbytes / (time.perf_counter() - t0))
                        continue
                    ids = routing()
                    used = len(set(ids.view(-1).tolist()) - {-1})
                    t0 = time.perf_counter()
                    if n == "torch_bf16":
                        torch_bf16_moe(0 if a.hot else li, ids)
                    else:
                        call(n, 0 if a.hot else li, ids)
                    ts.append(used * per_expert / (time.perf_counter() - t0))
                if rnd > 0:  # round 0 warms up
                    gbs[n].append(statistics.median(ts) / 1e9)
        base = names[0]
        res = {"machine": platform.processor() or platform.machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "argv": sys.argv, "load_avg_1min": os.getloadavg()[0], "wall_s": time.time() - t_start, "prefetch": prefetch,
               "paths": {n: {"isa": lib.isa, "features": lib.features, "act_mode": lib.act_mode(x.dtype)} for n, lib in libs.items()},
               "variants": {}}
        print(f"T={T} {'one expert, L3-resident' if a.hot else f'{L} layers x {E} experts, from DRAM'}, "
              f"{a.threads} threads, {a.rounds} rounds, prefetch {prefetch}; paths: "
              + ", ".join(f"{n} {lib.isa} mode {lib.act_mode(x.dtype)}" for n, lib in libs.items()))
        print(f"{'variant':>12} {'median GB/s':>11} {'min':>6} {'max':>6} {'vs ' + base[:9]:>12} {'range':>11}")
        for n in names:
            ratios = [v / b for v, b in zip(gbs[n], gbs[base])]
            res["variants"][n] = {"gb_per_s": gbs[n], "median_gb_per_s": statistics.median(gbs[n]),
                                  "paired_ratio_median": statistics.median(ratios),
                                  "paired_ratio_min": min(ratios), "paired_ratio_max": max(ratios)}
            print(f"{n:>12} {statistics.median(gbs[n]):11.1f} {min(gbs[n]):6.1f} {max(gbs[n]):6.1f} "
                  f"{statistics.median(ratios):12.3f} {min(ratios):5.2f}-{max(ratios):.2f}")
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
