"""Check and benchmark the fused MXFP4 MoE at gpt-oss's real layer shapes, in one run.

    PYTHONPATH=kernels python benchmarks/gpu_moe.py --out /tmp/moe.json
    TRITON_INTERPRET=1 PYTHONPATH=kernels python benchmarks/gpu_moe.py --quick   # CPU dry run

Stages, in this order (each prints as it goes; the summary table is printed last):
  1. ceilings measured on this device: copy bandwidth (a large device-to-device copy, bytes read +
     written) and the bf16 matmul rate (8192^3 torch.matmul on random data);
  2. correctness at the 20b and 120b layer shapes and odd T: fused_moe (bf16, fp16, fp32, -1 ids)
     against moe_reference (float32 torch), route against torch.topk + softmax;
  3. CUDA graph: fused_moe captured once, replayed on new inputs copied into the captured buffers,
     compared with an eager run;
  4. optional tile-config variants (--variants) at a few T;
  5. the sweep over T: median of per-replay CUDA events over CUDA-graph replays, rotating input
     sets (different routings) and flushing L2 before each replay; GB/s over the bytes of the
     experts the routing touches (E2M1 + scales + biases), TFLOP/s over the routed slots, the ratio
     against a torch bf16 path on pre-dequantized weights (run eagerly, with the routing plan
     read on the host before timing), the "bf16 floor" (the touched experts' bf16 bytes at the
     measured copy bandwidth: no bf16 path can be faster), and percentages of the ceilings.
Env: GPTOSS_KERNELS_FAST_DEQUANT=0 turns off the inline-PTX dequantization of the default configs
(=fma: the sm_80 fma.rn.bf16x2 sequence on any sm_80+ GPU; capability.py).
Exit status 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch

from gptoss_kernels import moe as moe_mod
from gptoss_kernels.capability import device_capability
from gptoss_kernels.moe import TileConfig, fused_moe, prepare_moe_weights, route
from gptoss_kernels.mxfp4 import dequantize
from gptoss_kernels.reference import SWIGLU_ALPHA, SWIGLU_LIMIT, moe_reference

SHAPES = {  # name: (E, H, I, top_k)
    "120b": (128, 2880, 2880, 4),
    "20b": (32, 2880, 2880, 4),
    "tiny": (8, 64, 96, 4),  # --quick (CPU interpreter dry run)
}
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
BOUND = {torch.bfloat16: 1.5e-2, torch.float16: 5e-3, torch.float32: 5e-3}  # rel. L2 error vs float32 ref

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------- timing
def _flush_buffer():
    if not CUDA:
        return None
    return torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=DEV)


def time_calls(fns, reps: int, flush=None) -> float:
    """Median microseconds of one call, cycling through `fns` (one per input set)."""
    times = []
    if CUDA:
        for f in fns:  # warm-up
            f()
        torch.cuda.synchronize()
        evs = []
        for _ in range(reps):
            for f in fns:
                if flush is not None:
                    flush.zero_()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                f()
                e.record()
                evs.append((s, e))
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) * 1e3 for s, e in evs]
    else:
        for _ in range(max(1, reps // 4)):
            for f in fns:
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def graphed(fn):
    """Capture fn() in a CUDA graph (after one eager warm-up) and return its replay; eager on CPU."""
    if not CUDA:
        return fn
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def measure_ceilings(quick: bool) -> dict:
    n = (1 << 20) if quick or not CUDA else (1 << 30)  # 1 GiB each way on the GPU
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    t_copy = time_calls([lambda: dst.copy_(src)], reps=20)
    bw = 2 * n / (t_copy * 1e-6) / 1e9
    m = 512 if quick or not CUDA else 8192
    a = torch.randn(m, m, device=DEV, dtype=torch.bfloat16 if CUDA else torch.float32)
    b = torch.randn(m, m, device=DEV, dtype=a.dtype)
    t_mm = time_calls([lambda: a @ b], reps=10)
    tflops = 2 * m ** 3 / (t_mm * 1e-6) / 1e12
    del src, dst, a, b
    res = {"copy_bytes_each_way": n, "copy_us": t_copy, "bandwidth_GBps": bw,
           "matmul_size": m, "matmul_us": t_mm, "bf16_matmul_TFLOPs": tflops}
    log(f"ceilings: copy {bw:.0f} GB/s (read+write), bf16 matmul {tflops:.0f} TFLOP/s ({m}^3)")
    return res


# ------------------------------------------------------------------------------------------ problem
def random_experts(E, H, I, seed):
    """Random MXFP4 experts at gpt-oss-like magnitudes: any E2M1 code, scales 2**-9 .. 2**-4."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    b13 = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, device=DEV, generator=g)
    s13 = torch.randint(118, 124, (E, 2 * I, H // 32), dtype=torch.uint8, device=DEV, generator=g)
    b2 = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, device=DEV, generator=g)
    s2 = torch.randint(118, 124, (E, H, I // 32), dtype=torch.uint8, device=DEV, generator=g)
    bias13 = (torch.randn(E, 2 * I, device=DEV, generator=g) * 0.1).to(torch.bfloat16)
    bias2 = (torch.randn(E, H, device=DEV, generator=g) * 0.1).to(torch.bfloat16)
    return b13, s13, bias13, b2, s2, bias2


def random_inputs(T, E, H, k, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(T, H, device=DEV, generator=g).to(dtype)
    logits = torch.randn(T, E, device=DEV, generator=g)
    tw, ti = route(logits, k)
    return x, tw, ti


def rel_err(out, ref) -> float:
    if torch.isnan(out).any():
        return float("nan")
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


class TorchBf16MoE:
    """The plain-torch bf16 path the fused kernels are compared with: experts dequantized to bf16
    once, then per active expert: gather rows, addmm, SwiGLU, addmm, weighted index_add. The
    routing plan is read on the host before timing, so the timed region has no sync."""

    def __init__(self, experts, alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT):
        b13, s13, bias13, b2, s2, bias2 = experts
        E = b13.shape[0]
        self.w13 = torch.stack([dequantize(b13[e], s13[e], torch.bfloat16) for e in range(E)])
        self.w2 = torch.stack([dequantize(b2[e], s2[e], torch.bfloat16) for e in range(E)])
        self.b13, self.b2 = bias13.to(torch.bfloat16), bias2.to(torch.bfloat16)
        self.alpha, self.limit = alpha, limit

    @staticmethod
    def plan(topk_ids):
        ids = topk_ids.long().cpu()
        out = []
        for e in torch.unique(ids).tolist():
            if e < 0:
                continue
            tok, slot = (ids == e).nonzero(as_tuple=True)
            out.append((e, tok.to(DEV), (tok * ids.shape[1] + slot).to(DEV)))
        return out

    def __call__(self, x, tw, plan):
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        tw_flat = tw.reshape(-1)
        for e, tok, flat in plan:
            h = torch.addmm(self.b13[e], x.index_select(0, tok), self.w13[e].t()).float()
            g = h[:, 0::2].clamp(max=self.limit)
            u = h[:, 1::2].clamp(-self.limit, self.limit)
            a = (g * torch.sigmoid(self.alpha * g) * (u + 1)).to(torch.bfloat16)
            y = torch.addmm(self.b2[e], a, self.w2[e].t()).float()
            out.index_add_(0, tok, y * tw_flat.index_select(0, flat).unsqueeze(-1))
        return out.to(x.dtype)


# ------------------------------------------------------------------------------------ correctness
def check_correctness(shapes, quick, results) -> bool:
    ok = True
    rows = []
    for name in shapes:
        E, H, I, k = SHAPES[name]
        experts = random_experts(E, H, I, seed=11)
        prepared = prepare_moe_weights(*experts)
        cases = [(1, torch.bfloat16), (7, torch.bfloat16), (33, torch.bfloat16), (257, torch.bfloat16),
                 (5, torch.float16), (5, torch.float32), (1000, torch.bfloat16)]
        if quick:
            cases = [(1, torch.bfloat16), (3, torch.float16), (17, torch.float32)]
        for i, (T, dtype) in enumerate(cases):
            x, tw, ti = random_inputs(T, E, H, k, dtype, seed=100 + i)
            if i == 2:  # expert parallelism: some slots on no expert of this rank
                ti = torch.where(torch.rand(ti.shape, device=DEV) < 0.3, -1, ti)
            out = torch.full((T, H), float("nan"), dtype=dtype, device=DEV)
            fused_moe(x, tw, ti, prepared, out=out)
            ref = moe_reference(x.float(), tw, ti, *experts)
            err = rel_err(out, ref)
            good = err <= BOUND[dtype]
            ok &= good
            rows.append({"shape": name, "T": T, "dtype": str(dtype).split(".")[-1], "rel_err": err,
                         "bound": BOUND[dtype], "minus_one_ids": i == 2, "ok": good})
            log(f"check fused_moe {name} T={T} {rows[-1]['dtype']}{' -1 ids' if i == 2 else ''}: "
                f"rel err {err:.2e} (bound {BOUND[dtype]:.0e}) {'ok' if good else 'FAIL'}")
        # route vs torch.topk + softmax (continuous logits: no ties)
        for T in ([1, 33, 1000] if not quick else [1, 5]):
            logits = torch.randn(T, E, device=DEV)
            w, ids = route(logits, k)
            tv, tid = torch.topk(logits, k)
            good = torch.equal(ids.long(), tid) and torch.allclose(w, torch.softmax(tv, -1), atol=1e-6)
            ok &= good
            rows.append({"shape": name, "T": T, "route": True, "ok": good})
            log(f"check route {name} T={T}: {'ok' if good else 'FAIL'}")
        # ties: lowest index first; report whether this device's torch.topk agrees (informational)
        logits = torch.randint(-2, 3, (64, E), device=DEV).float()
        w, ids = route(logits, k)
        stable = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
        good = torch.equal(ids.long(), stable)
        ok &= good
        topk_same = torch.equal(ids.long(), torch.topk(logits, k).indices)
        rows.append({"shape": name, "route_ties_lowest_index": good, "torch_topk_same_tie_order": topk_same})
        log(f"check route ties {name}: lowest-index {'ok' if good else 'FAIL'}; "
            f"torch.topk on {DEV} orders ties the same: {topk_same}")
        del experts, prepared
    results["correctness"] = rows
    return ok


def check_graph(shape, results) -> bool:
    E, H, I, k = SHAPES[shape]
    experts = random_experts(E, H, I, seed=21)
    prepared = prepare_moe_weights(*experts)
    T = 9
    x, tw, ti = random_inputs(T, E, H, k, torch.bfloat16, seed=1)
    if not CUDA:
        log("graph check skipped (no CUDA)")
        results["graph"] = {"skipped": True}
        return True
    static_out = fused_moe(x, tw, ti, prepared)  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = fused_moe(x, tw, ti, prepared)
    ok = True
    rows = []
    for trial in range(3):
        x2, tw2, ti2 = random_inputs(T, E, H, k, torch.bfloat16, seed=50 + trial)
        if trial == 2:
            ti2[0, 1] = -1
        x.copy_(x2), tw.copy_(tw2), ti.copy_(ti2)
        g.replay()
        eager = fused_moe(x2, tw2, ti2, prepared)
        ref = moe_reference(x2.float(), tw2, ti2, *experts)
        e_eager, e_ref = rel_err(static_out, eager), rel_err(static_out, ref)
        good = e_eager <= 1e-2 and e_ref <= BOUND[torch.bfloat16]
        ok &= good
        rows.append({"trial": trial, "rel_err_vs_eager": e_eager, "rel_err_vs_ref": e_ref, "ok": good})
        log(f"check graph replay {shape} T={T} trial {trial}: vs eager {e_eager:.1e}, vs ref {e_ref:.1e} "
            f"{'ok' if good else 'FAIL'}")
    results["graph"] = rows
    return ok


# ---------------------------------------------------------------------------------------- benchmark
def validate_point(name, T, experts, cfg, data, fns) -> list:
    """Replay each captured graph once more and compare its output with the float32 reference;
    check the on-device alignment of each routing."""
    E, H, I, k = SHAPES[name]
    errs = []
    for (x, tw, ti, out), f in zip(data, fns):
        out.fill_(float("nan"))
        f()
        ref = moe_reference(x.float(), tw, ti, *experts)
        errs.append(rel_err(out, ref))
        sorted_ids, block_expert = moe_mod.align_tokens(ti, E, cfg.block_m)
        s_cpu, b_cpu, flat = sorted_ids.cpu(), block_expert.cpu(), ti.view(-1).cpu()
        M = flat.numel()
        real = s_cpu[(s_cpu >= 0) & (s_cpu < M)]
        perm_ok = torch.equal(torch.sort(real.long()).values, torch.arange(M))
        holes = int(((s_cpu < 0) | (s_cpu > M)).sum())
        if not perm_ok or holes:
            log(f"  ALIGN BAD {name} T={T}: permutation {perm_ok}, holes {holes}, used blocks "
                f"{int((b_cpu >= 0).sum())}")
    log(f"  validate {name} T={T}: rel err of graph replays vs reference: max {max(errs):.2e}")
    return errs


def bench_point(name, T, experts, prepared, baseline, ceil, reps, flush, config=None, sets=None, validate=False):
    E, H, I, k = SHAPES[name]
    nsets = sets or (8 if T <= 64 else 3)
    fused_fns, base_fns, uniq, data = [], [], [], []
    for s in range(nsets):
        x, tw, ti = random_inputs(T, E, H, k, torch.bfloat16, seed=1000 * T + s)
        uniq.append(len(set(ti.view(-1).tolist()) - {-1}))
        out = torch.empty(T, H, dtype=torch.bfloat16, device=DEV)
        data.append((x, tw, ti, out))
        fused_fns.append(graphed(lambda x=x, tw=tw, ti=ti, out=out: fused_moe(x, tw, ti, prepared, out=out,
                                                                                  config=config)))
        if baseline is not None:
            plan = baseline.plan(ti)
            base_fns.append(graphed(lambda x=x, tw=tw, plan=plan: baseline(x, tw, plan)))
    t_fused = time_calls(fused_fns, reps, flush)
    t_base = time_calls(base_fns, max(3, reps // 2), flush) if base_fns else float("nan")
    wbytes = statistics.mean(uniq) * prepared.expert_bytes()
    flops = 2 * T * k * (2 * I * H + H * I)
    gbps = wbytes / (t_fused * 1e-6) / 1e9
    tflops = flops / (t_fused * 1e-6) / 1e12
    row = {"shape": name, "T": T, "us": t_fused, "torch_bf16_us": t_base, "experts_touched": statistics.mean(uniq),
           "weight_bytes": wbytes, "GBps": gbps, "TFLOPs": tflops, "speedup_vs_torch": t_base / t_fused,
           "pct_bandwidth": 100 * gbps / ceil["bandwidth_GBps"],
           "pct_matmul": 100 * tflops / ceil["bf16_matmul_TFLOPs"],
           "config": (config or moe_mod.pick_config(T, k, E, torch.bfloat16, device_capability(torch.device(DEV)))).__dict__}
    if validate:
        errs = validate_point(name, T, experts, config or moe_mod.pick_config(T, k, E, torch.bfloat16, device_capability(torch.device(DEV))), data, fused_fns)
        row["validate_max_rel_err"] = max(errs)
    del fused_fns, base_fns
    return row


def time_baseline(name, T, baseline, reps, flush):
    E, H, I, k = SHAPES[name]
    fns = []
    for s in range(8 if T <= 64 else 3):
        x, tw, ti = random_inputs(T, E, H, k, torch.bfloat16, seed=1000 * T + s)
        plan = baseline.plan(ti)
        # eager, not graph-replayed: replaying this path's CUDA graph hit a device-side index assert
        # on the H200 (runs 1 and 3 in BENCHMARKS.md, not yet understood), so its launch gaps count
        fns.append(lambda x=x, tw=tw, plan=plan: baseline(x, tw, plan))
    return time_calls(fns, max(3, reps // 2), flush)


VARIANTS = {  # T: candidate configs (block_m, block_n, block_k, warps, stages, group_m, swap_ab, split_k, fast)
    1: [(16, 32, 256, 4, 3, 8, False, 4, True), (16, 64, 256, 4, 3, 8, False, 4, True),
        (16, 32, 256, 4, 3, 8, False, 8, True), (16, 32, 512, 4, 2, 8, False, 4, True),
        (16, 32, 256, 8, 3, 8, False, 4, True), (16, 64, 256, 4, 4, 8, True, 4, True),
        (16, 32, 128, 4, 6, 8, False, 4, True)],
    16: [(16, 32, 256, 4, 3, 8, False, 4, True), (16, 64, 256, 4, 3, 8, False, 2, True),
         (16, 64, 256, 4, 4, 8, True, 2, True), (16, 128, 128, 4, 4, 8, True, 1, True)],
    4096: [(64, 128, 64, 4, 4, 8, False, 1, True), (128, 128, 64, 8, 4, 8, False, 1, True),
           (128, 128, 64, 8, 3, 8, True, 1, True), (128, 256, 64, 8, 3, 8, False, 1, True),
           (64, 256, 64, 8, 3, 8, False, 1, True), (128, 128, 128, 8, 3, 8, False, 1, True)],
}


def run_breakdown(reps, ceil, flush, results, quick, validate=False):
    """Time cumulative prefixes of fused_moe (align; +gemm1; +gemm2; +cast) at the default configs."""
    name = "tiny" if quick else "120b"
    E, H, I, k = SHAPES[name]
    experts = random_experts(E, H, I, seed=33)
    prepared = prepare_moe_weights(*experts)
    rows = []
    for T in ([1, 17] if quick else [1, 16, 256, 4096]):
        sets = [random_inputs(T, E, H, k, torch.bfloat16, seed=7000 + s) for s in range(8 if T <= 64 else 3)]
        times = []
        for stages in (1, 2, 3, 4):
            fns = [graphed(lambda x=x, tw=tw, ti=ti, st=stages: fused_moe(x, tw, ti, prepared, _stages=st))
                   for x, tw, ti in sets]
            times.append(time_calls(fns, reps, flush))
        rows.append({"T": T, "align_us": times[0], "gemm1_us": times[1] - times[0], "gemm2_us": times[2] - times[1],
                     "cast_us": times[3] - times[2], "total_us": times[3]})
        log(f"breakdown {name} T={T}: align {times[0]:.1f} us, gemm1 {times[1] - times[0]:.1f}, "
            f"gemm2 {times[2] - times[1]:.1f}, cast {times[3] - times[2]:.1f}, total {times[3]:.1f}")
    results["breakdown"] = rows


def run_variants(reps, ceil, flush, results, quick, validate=False):
    name = "tiny" if quick else "120b"
    E, H, I, k = SHAPES[name]
    experts = random_experts(E, H, I, seed=31)
    prepared = prepare_moe_weights(*experts)
    rows = []
    for T, cfgs in VARIANTS.items():
        if quick:
            T, cfgs = min(T, 17), cfgs[:2]
        for c in cfgs:
            cfg = TileConfig(*c)
            if quick:
                cfg = TileConfig(16, 32, 32, 4, 1, 4, c[6], min(c[7], 2), c[8])
            try:
                r = bench_point(name, T, experts, prepared, None, ceil, reps, flush, config=cfg, validate=validate)
            except Exception as exc:  # a config can fail to compile (shared memory); note it and go on
                log(f"variant {name} T={T} {c}: failed: {type(exc).__name__}: {str(exc)[:200]}")
                rows.append({"T": T, "config": c, "error": str(exc)[:500]})
                continue
            rows.append(r)
            log(f"variant {name} T={T} {c}: {r['us']:.1f} us, {r['GBps']:.0f} GB/s, {r['TFLOPs']:.1f} TFLOP/s")
    results["variants"] = rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_moe.py", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="120b,20b", help="comma list of %s" % ",".join(SHAPES))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts T to sweep")
    ap.add_argument("--reps", type=int, default=10, help="timed rounds over the input sets per point")
    ap.add_argument("--out", default=None, help="write all results as JSON to this path")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few T: a dry run (CPU interpreter)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the torch bf16 comparison")
    ap.add_argument("--variants", action="store_true", help="also time alternative tile configs (120b)")
    ap.add_argument("--skip-checks", action="store_true", help="skip correctness and graph checks")
    ap.add_argument("--validate", action="store_true",
                    help="after timing each point, check its graph replays against the reference")
    ap.add_argument("--no-ceilings", action="store_true", help="skip measuring bandwidth/matmul (debug runs)")
    args = ap.parse_args(argv)
    shapes = ["tiny"] if args.quick else [s for s in args.shapes.split(",") if s]
    tokens = [1, 3, 17] if args.quick else [int(t) for t in args.tokens.split(",") if t]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r}; known: {', '.join(SHAPES)}")
    t_start = time.time()
    results = {"device": torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
               "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "argv": sys.argv, "interpret": os.environ.get("TRITON_INTERPRET") == "1"}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        pass
    log(f"device: {results['device']}  torch {results['torch']}  triton {results.get('triton')}")

    def dump():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1, default=str)

    ok = True
    if not args.skip_checks:
        for stage in (lambda: check_correctness(shapes, args.quick, results),
                      lambda: check_graph(shapes[0], results)):
            try:
                ok &= stage()
            except Exception:  # keep going: the benchmark still tells something
                traceback.print_exc()
                ok = False
        results["checks_ok"] = ok
        log(f"checks: {'all ok' if ok else 'FAILED'} ({time.time() - t_start:.0f} s)")
        dump()
    ceil = ({"bandwidth_GBps": float("nan"), "bf16_matmul_TFLOPs": float("nan")} if args.no_ceilings
            else measure_ceilings(args.quick))
    results["ceilings"] = ceil
    flush = _flush_buffer()
    if args.variants:
        for stage in (run_breakdown, run_variants):
            try:
                stage(args.reps, ceil, flush, results, args.quick, args.validate)
            except Exception:
                traceback.print_exc()
            dump()
    sweep = []
    results["sweep"] = sweep
    for with_baseline in ([False] if args.no_baseline else [False, True]):
        for name in shapes:
            E, H, I, k = SHAPES[name]
            experts = random_experts(E, H, I, seed=41)
            prepared = prepare_moe_weights(*experts)
            baseline = TorchBf16MoE(experts) if with_baseline else None
            for T in tokens:
                if not with_baseline:
                    r = bench_point(name, T, experts, prepared, None, ceil, args.reps, flush, validate=args.validate)
                    sweep.append(r)
                else:
                    r = next(r for r in sweep if r["shape"] == name and r["T"] == T)
                    r["torch_bf16_us"] = time_baseline(name, T, baseline, args.reps, flush)
                    r["speedup_vs_torch"] = r["torch_bf16_us"] / r["us"]
                    # the least time any bf16 path needs: its touched experts' bf16 bytes at copy bandwidth
                    bf16_bytes = r["experts_touched"] * 2 * 3 * I * H
                    r["bf16_floor_us"] = bf16_bytes / (ceil["bandwidth_GBps"] * 1e3)
                    r["speedup_vs_bf16_floor"] = r["bf16_floor_us"] / r["us"]
                log(f"bench {name} T={T}: {r['us']:.1f} us (torch bf16 {r['torch_bf16_us']:.1f} us), "
                    f"{r['GBps']:.0f} GB/s, {r['TFLOPs']:.1f} TFLOP/s  [{time.time() - t_start:.0f} s]")
                dump()
            del experts, prepared, baseline
            if CUDA:
                torch.cuda.empty_cache()
    results["targets"] = assess_targets(sweep)
    results["wall_s"] = time.time() - t_start
    dump()
    print_table(results)
    return 0 if ok else 1


def assess_targets(sweep) -> dict:
    """The issue's targets on the 120b layer (E=128, top-4)."""
    big = [r for r in sweep if r["shape"] == "120b"]
    small = [r for r in big if r["T"] <= 16]
    large = [r for r in big if r["T"] >= 4096]
    out = {}
    if small:
        out["bw_70pct_T<=16"] = {"min_pct": min(r["pct_bandwidth"] for r in small),
                                 "met": all(r["pct_bandwidth"] >= 70 for r in small)}
        sp = [r["speedup_vs_torch"] for r in small if not math.isnan(r["speedup_vs_torch"])]
        if sp:
            out["3x_torch_T<=16"] = {"min_speedup": min(sp), "met": min(sp) >= 3}
    if large:
        out["matmul_50pct_T>=4096"] = {"min_pct": min(r["pct_matmul"] for r in large),
                                       "met": all(r["pct_matmul"] >= 50 for r in large)}
    return out


def print_table(results):
    c = results["ceilings"]
    log("")
    log(f"{results['device']}: copy {c['bandwidth_GBps']:.0f} GB/s, bf16 matmul {c['bf16_matmul_TFLOPs']:.0f} TFLOP/s;"
        f" checks {'ok' if results.get('checks_ok', True) else 'FAILED'}")
    log(f"{'shape':>5} {'T':>5} {'us':>9} {'torch':>9} {'x':>5} {'floor':>7} {'GB/s':>6} {'%bw':>4} {'TF/s':>6} {'%mm':>4} "
        f"{'cfg':>16}")
    for r in results["sweep"]:
        cfg = r["config"]
        log(f"{r['shape']:>5} {r['T']:>5} {r['us']:>9.1f} {r['torch_bf16_us']:>9.1f} {r['speedup_vs_torch']:>5.1f} "
            f"{r.get('bf16_floor_us', float('nan')):>7.1f} "
            f"{r['GBps']:>6.0f} {r['pct_bandwidth']:>4.0f} {r['TFLOPs']:>6.1f} {r['pct_matmul']:>4.0f} "
            f"{cfg['block_m']:>3}x{cfg['block_n']}x{cfg['block_k']}w{cfg['num_warps']}s{cfg['num_stages']}"
            f"{'S' if cfg['swap_ab'] else ''}{'k%d' % cfg['split_k'] if cfg['split_k'] > 1 else ''}"
            f"{'F%d' % cfg['dequant'] if cfg.get('dequant') else ''}")
    for r in results.get("breakdown", []):
        log(f"breakdown T={r['T']}: align {r['align_us']:.1f} gemm1 {r['gemm1_us']:.1f} gemm2 {r['gemm2_us']:.1f} "
            f"cast {r['cast_us']:.1f} total {r['total_us']:.1f} us")
    for r in results.get("variants", []):
        if "us" in r:
            c = r["config"]
            log(f"variant {r['shape']} T={r['T']} {c['block_m']}x{c['block_n']}x{c['block_k']}w{c['num_warps']}"
                f"s{c['num_stages']}{' swap' if c['swap_ab'] else ''} sk{c['split_k']}: {r['us']:.1f} us "
                f"{r['pct_bandwidth']:.0f}%bw {r['pct_matmul']:.0f}%mm")
    for k, v in results.get("targets", {}).items():
        log(f"target {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
