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
  2b. the comparator (OpenAI's triton_kernels as vLLM 0.32's TRITON MXFP4 backend calls it,
     benchmarks/triton_kernels_moe.py; extracted by benchmarks/fetch_triton_kernels.sh and found
     automatically, or --compare-triton-kernels PATH) against the same moe_reference, same experts,
     same routing ids/weights; its routing from logits against `route`;
  4. optional tile-config variants (--variants) at a few T, each in both weight layouts;
  5. the sweep over T, ours in each --layouts weight layout (checkpoint: the plugin's default;
     k16: `prepare_moe_weights(layout="k16")`) and the comparator (routing from the same ids +
     its two matmul_ogs calls, CUDA-graph replayed like ours; and from logits: ours route +
     fused_moe vs its routing() + matmul_ogs): median of per-replay CUDA events over CUDA-graph replays, rotating input
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triton_kernels_moe  # noqa: E402  (benchmarks/, imports triton_kernels only when asked)

SHAPES = {  # name: (E, H, I, top_k)
    "120b": (128, 2880, 2880, 4),
    "20b": (32, 2880, 2880, 4),
    "tiny": (8, 64, 96, 4),  # --quick (CPU interpreter dry run)
}
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
BOUND = {torch.bfloat16: 1.5e-2, torch.float16: 5e-3, torch.float32: 5e-3}  # rel. L2 error vs float32 ref

CUDA = torch.cuda.is_available()
_DEADLINE = None  # time.time() after which no new variant / sweep point starts (--deadline-s)


def past_deadline(what: str) -> bool:
    if _DEADLINE is not None and time.time() > _DEADLINE:
        log(f"deadline reached: skipping {what}")
        return True
    return False
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


def make_comparator(experts, tk_path):
    return triton_kernels_moe.TritonKernelsMoE(*experts, tk_path=tk_path)


def check_comparator(shapes, quick, results, tk_path) -> bool:
    """triton_kernels (vLLM 0.32's way) vs moe_reference, like for like: the experts of
    check_correctness, the routing ids/weights of `route`, alpha 1.702, limit 7.0, (up + 1)."""
    rows, ok = [], True
    info = results["triton_kernels"] = {"rows": rows}
    for name in shapes:
        E, H, I, k = SHAPES[name]
        experts = random_experts(E, H, I, seed=11)
        tkm = make_comparator(experts, tk_path)
        info.setdefault("describe", {})[name] = tkm.describe()
        cases = [(1, False), (7, False), (33, True), (257, False), (1000, False)]
        if quick:
            cases = [(1, False), (5, True), (17, False)]
        for i, (T, drop) in enumerate(cases):
            x, tw, ti = random_inputs(T, E, H, k, torch.bfloat16, seed=100 + i)
            if drop:
                ti = torch.where(torch.rand(ti.shape, device=DEV) < 0.3, -1, ti)
            out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEV)
            tkm(x, tw, ti, out=out)
            err = rel_err(out, moe_reference(x.float(), tw, ti, *experts))
            good = err <= BOUND[torch.bfloat16]
            ok &= good
            rows.append({"shape": name, "T": T, "minus_one_ids": drop, "rel_err": err, "bound": BOUND[torch.bfloat16],
                         "ok": good})
            log(f"check triton_kernels {name} T={T}{' -1 ids' if drop else ''}: rel err {err:.2e} "
                f"{'ok' if good else 'FAIL'}")
        # its routing from logits (the serving path) picks the same experts as ours
        for T in ([1, 33, 1000] if not quick else [1, 5]):
            logits = torch.randn(T, E, device=DEV)
            _, ids = route(logits, k)
            rd, gather, _ = tkm.routing_from_logits(logits, k)
            x = torch.randn(T, H, device=DEV).to(torch.bfloat16)
            tw_ref, ti_ref = route(logits, k)
            out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEV)
            tkm.experts(x, (rd, gather, _), out=out)
            err = rel_err(out, moe_reference(x.float(), tw_ref, ti_ref, *experts))
            good = err <= BOUND[torch.bfloat16]
            ok &= good
            rows.append({"shape": name, "T": T, "from_logits": True, "rel_err": err, "ok": good})
            log(f"check triton_kernels routing() from logits {name} T={T}: rel err vs ours-routed reference "
                f"{err:.2e} {'ok' if good else 'FAIL'}")
        del experts, tkm
    info["ok"] = ok
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


def _capture(fn):
    """graphed(fn), or fn itself (eager) when capture fails; returns (callable, graphed?)."""
    try:
        return graphed(fn), CUDA
    except Exception as exc:  # noqa: BLE001 - a comparator that cannot be captured is timed eagerly
        log(f"  CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]}); timing eagerly")
        if CUDA:
            torch.cuda.synchronize()
        return fn, False


def bench_point(name, T, experts, prepared, baseline, ceil, reps, flush, config=None, sets=None, validate=False,
                others=None, tk=None, logits_path=False):
    """Time fused_moe (graph replays) on `prepared`; `others`: {label: MoEWeights} timed the same
    way (other weight layouts); `tk`: the triton_kernels comparator, timed on the same inputs."""
    E, H, I, k = SHAPES[name]
    nsets = sets or (8 if T <= 64 else 3)
    fused_fns, base_fns, uniq, data = [], [], [], []
    other_fns = {label: [] for label in (others or {})}
    other_data = {label: [] for label in (others or {})}
    tk_fns, tk_graphed, tk_data = [], True, []
    for s in range(nsets):
        x, tw, ti = random_inputs(T, E, H, k, torch.bfloat16, seed=1000 * T + s)
        uniq.append(len(set(ti.view(-1).tolist()) - {-1}))
        out = torch.empty(T, H, dtype=torch.bfloat16, device=DEV)
        data.append((x, tw, ti, out))
        fused_fns.append(graphed(lambda x=x, tw=tw, ti=ti, out=out: fused_moe(x, tw, ti, prepared, out=out,
                                                                                  config=config)))
        for label, p in (others or {}).items():
            o2 = torch.empty(T, H, dtype=torch.bfloat16, device=DEV)
            other_data[label].append((x, tw, ti, o2))
            other_fns[label].append(graphed(lambda x=x, tw=tw, ti=ti, o2=o2, p=p: fused_moe(x, tw, ti, p, out=o2,
                                                                                             config=config)))
        if tk is not None:
            o3 = torch.empty(T, H, dtype=torch.bfloat16, device=DEV)
            f, g = _capture(lambda x=x, tw=tw, ti=ti, o3=o3: tk(x, tw, ti, out=o3))
            tk_graphed &= g
            tk_fns.append(f)
            tk_data.append((x, tw, ti, o3))
        if baseline is not None:
            plan = baseline.plan(ti)
            base_fns.append(graphed(lambda x=x, tw=tw, plan=plan: baseline(x, tw, plan)))
    t_fused = time_calls(fused_fns, reps, flush)
    t_base = time_calls(base_fns, max(3, reps // 2), flush) if base_fns else float("nan")
    wbytes = statistics.mean(uniq) * prepared.expert_bytes()
    flops = 2 * T * k * (2 * I * H + H * I)
    gbps = wbytes / (t_fused * 1e-6) / 1e9
    tflops = flops / (t_fused * 1e-6) / 1e12
    cfg_used = config or moe_mod.pick_config(T, k, E, torch.bfloat16, device_capability(torch.device(DEV)))
    row = {"shape": name, "T": T, "layout": prepared.layout, "us": t_fused, "torch_bf16_us": t_base,
           "experts_touched": statistics.mean(uniq),
           "weight_bytes": wbytes, "GBps": gbps, "TFLOPs": tflops, "speedup_vs_torch": t_base / t_fused,
           "pct_bandwidth": 100 * gbps / ceil["bandwidth_GBps"],
           "pct_matmul": 100 * tflops / ceil["bf16_matmul_TFLOPs"],
           "config": cfg_used.__dict__}
    for label, fns in other_fns.items():
        t = time_calls(fns, reps, flush)
        row[f"us_{label}"] = t
        row[f"pct_bandwidth_{label}"] = 100 * wbytes / (t * 1e-6) / 1e9 / ceil["bandwidth_GBps"]
    if tk is not None:
        t_tk = time_calls(tk_fns, reps, flush)
        row.update({"tk_us": t_tk, "tk_graphed": tk_graphed, "ours_speedup_vs_tk": t_tk / t_fused,
                    "tk_pct_bandwidth": 100 * wbytes / (t_tk * 1e-6) / 1e9 / ceil["bandwidth_GBps"]})
        for label in other_fns:
            row[f"{label}_speedup_vs_tk"] = t_tk / row[f"us_{label}"]
        if logits_path:  # the serving path of both: router logits -> output
            ours_l, tk_l = [], []
            for s in range(nsets):
                logits = torch.randn(T, E, device=DEV, generator=torch.Generator(device=DEV).manual_seed(77 + s))
                x = data[s][0]
                o4, o5 = torch.empty_like(x), torch.empty_like(x)
                ours_l.append(graphed(lambda x=x, lg=logits, o4=o4: fused_moe(x, *route(lg, k), prepared, out=o4,
                                                                              config=config)))
                f, g = _capture(lambda x=x, lg=logits, o5=o5: tk.experts(x, tk.routing_from_logits(lg, k), out=o5))
                tk_l.append(f)
                row["tk_logits_graphed"] = g
            row["ours_logits_us"] = time_calls(ours_l, reps, flush)
            row["tk_logits_us"] = time_calls(tk_l, reps, flush)
    if validate:
        errs = validate_point(name, T, experts, cfg_used, data, fused_fns)
        row["validate_max_rel_err"] = max(errs)
        for label in other_fns:
            row[f"validate_max_rel_err_{label}"] = max(validate_point(name, T, experts, cfg_used, other_data[label],
                                                                      other_fns[label]))
        if tk is not None:
            tk_errs = []
            for (x, tw, ti, o3), f in zip(tk_data, tk_fns):
                o3.fill_(float("nan"))
                f()
                tk_errs.append(rel_err(o3, moe_reference(x.float(), tw, ti, *experts)))
            row["tk_validate_max_rel_err"] = max(tk_errs)
            log(f"  validate triton_kernels {name} T={T}: max rel err {max(tk_errs):.2e}")
    del fused_fns, base_fns, other_fns, tk_fns
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


_C = TileConfig
VARIANTS = {  # T: candidate configs, each timed in every --layouts layout (dequant: the device's)
    1: [_C(16, 64, 256, 4, 3, split_k=4, evict_w=True), _C(16, 64, 256, 4, 3, split_k=4),
        _C(16, 64, 256, 4, 3, swap_ab=True, split_k=4, evict_w=True),
        _C(16, 128, 128, 4, 4, swap_ab=True, split_k=4, evict_w=True)],
    16: [_C(16, 64, 256, 4, 3, split_k=2, evict_w=True), _C(16, 64, 256, 4, 3, swap_ab=True, split_k=2, evict_w=True),
         _C(16, 128, 128, 4, 4, swap_ab=True, split_k=2, evict_w=True)],
    # prefill: pick_config's tile, then the persistent grid (issue 14 part 3) with it (2 programs per
    # SM: 3 no longer fit the registers of the looping GEMM2, aot_decode.py) and with 128-row blocks
    4096: [_C(64, 128, 64, 4, 4), _C(64, 128, 64, 4, 4, persistent=2), _C(128, 128, 64, 8, 3, persistent=1),
           _C(128, 256, 64, 8, 3, persistent=1), _C(128, 128, 64, 8, 4)],
}


def _cfg_str(cfg) -> str:
    return (f"{cfg['block_m']}x{cfg['block_n']}x{cfg['block_k']}w{cfg['num_warps']}s{cfg['num_stages']}"
            f"{'S' if cfg['swap_ab'] else ''}{'k%d' % cfg['split_k'] if cfg['split_k'] > 1 else ''}"
            f"{'F%d' % cfg['dequant'] if cfg.get('dequant') else ''}{'E' if cfg.get('evict_w') else ''}"
            f"{'P%d' % cfg['persistent'] if cfg.get('persistent') else ''}")


def run_breakdown(reps, ceil, flush, results, quick, validate=False, layouts=None):
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


def run_variants(reps, ceil, flush, results, quick, validate=False, layouts=("checkpoint",)):
    import dataclasses

    name = "tiny" if quick else "120b"
    E, H, I, k = SHAPES[name]
    experts = random_experts(E, H, I, seed=31)
    prepared = {lay: prepare_moe_weights(*experts, layout=lay) for lay in layouts}
    dq = moe_mod.pick_config(1, k, E, torch.bfloat16, device_capability(torch.device(DEV))).dequant
    rows = []
    for T, cfgs in VARIANTS.items():
        if quick:
            T, cfgs = min(T, 17), cfgs[:2]
        for c in cfgs:
            cfg = dataclasses.replace(c, dequant=dq)
            if quick:
                cfg = dataclasses.replace(cfg, block_n=32, block_k=32, num_stages=1, split_k=min(c.split_k, 2))
            for lay, p in prepared.items():
                if past_deadline(f"variant T={T} {lay}"):
                    results["variants"] = rows
                    return
                try:
                    r = bench_point(name, T, experts, p, None, ceil, reps, flush, config=cfg, validate=validate)
                except Exception as exc:  # a config can fail to compile (shared memory); note it and go on
                    log(f"variant {name} T={T} {lay} {cfg}: failed: {type(exc).__name__}: {str(exc)[:200]}")
                    rows.append({"T": T, "layout": lay, "config": cfg.__dict__, "error": str(exc)[:500]})
                    continue
                rows.append(r)
                log(f"variant {name} T={T} {lay} {_cfg_str(cfg.__dict__)}: {r['us']:.1f} us, {r['GBps']:.0f} GB/s, "
                    f"{r['TFLOPs']:.1f} TFLOP/s")
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
    ap.add_argument("--layouts", default="checkpoint,k16",
                    help="weight layouts of ours to time (prepare_moe_weights layout=); the first is the main column")
    ap.add_argument("--compare-triton-kernels", metavar="PATH", default=None,
                    help="folder holding triton_kernels/ (default: $GPTOSS_TRITON_KERNELS or benchmarks/.third_party, "
                         "as benchmarks/fetch_triton_kernels.sh extracts it)")
    ap.add_argument("--no-triton-kernels", action="store_true", help="do not run the triton_kernels comparator")
    ap.add_argument("--variant-tokens", default=None, help="comma list: run --variants only at these T")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="stop starting new variants / sweep points after this many seconds (results so far kept)")
    ap.add_argument("--no-logits-path", action="store_true",
                    help="skip timing the from-logits path (ours route + fused_moe vs its routing() + matmul_ogs)")
    args = ap.parse_args(argv)
    layouts = [x for x in args.layouts.split(",") if x]
    if args.variant_tokens:
        keep = {int(t) for t in args.variant_tokens.split(",")}
        for t in list(VARIANTS):
            if t not in keep:
                del VARIANTS[t]
    global _DEADLINE
    _DEADLINE = None if args.deadline_s is None else time.time() + args.deadline_s
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

    tk_path = None
    if not args.no_triton_kernels:
        tk_path = triton_kernels_moe.find(args.compare_triton_kernels)
        if tk_path is None:
            log("triton_kernels comparator: not found (run benchmarks/fetch_triton_kernels.sh); skipped")
            results["triton_kernels"] = {"skipped": "not found"}
        else:
            try:
                tk_ns = triton_kernels_moe.load(tk_path)
                results["triton_kernels"] = {"root": str(tk_path), "api": tk_ns.api}
                log(f"triton_kernels comparator: {tk_path} (API {tk_ns.api})")
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                results["triton_kernels"] = {"error": f"{type(exc).__name__}: {exc}"}
                tk_path = None
    ok = True
    tk_ok = tk_path is not None
    if not args.skip_checks:
        if tk_path is not None:
            try:
                tk_ok = check_comparator(shapes, args.quick, results, tk_path)
            except Exception as exc:  # noqa: BLE001 - the comparator failing must not stop our checks
                traceback.print_exc()
                results["triton_kernels"]["error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
                tk_ok = False
            log(f"triton_kernels comparator check: {'ok' if tk_ok else 'FAILED (it is not timed)'}")
            dump()
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
    sweep = []
    results["sweep"] = sweep
    for with_baseline in ([False] if args.no_baseline else [False, True]):
        for name in shapes:
            E, H, I, k = SHAPES[name]
            experts = random_experts(E, H, I, seed=41)
            baseline = TorchBf16MoE(experts) if with_baseline else None
            if not with_baseline:
                prepared = prepare_moe_weights(*experts, layout=layouts[0])
                others = {lay: prepare_moe_weights(*experts, layout=lay) for lay in layouts[1:]}
                tk = None
                if tk_ok:
                    try:
                        tk = make_comparator(experts, tk_path)
                    except Exception:  # noqa: BLE001
                        traceback.print_exc()
            for T in tokens:
                if past_deadline(f"{'baseline' if with_baseline else 'sweep'} {name} T={T}"):
                    break
                if with_baseline and not any(r["shape"] == name and r["T"] == T for r in sweep):
                    continue
                if not with_baseline:
                    try:
                        r = bench_point(name, T, experts, prepared, None, ceil, args.reps, flush, validate=args.validate,
                                        others=others, tk=tk, logits_path=not args.no_logits_path)
                    except Exception:  # noqa: BLE001 - one point failing (the comparator, say) keeps the sweep
                        traceback.print_exc()
                        log(f"bench {name} T={T}: retrying without the comparator")
                        r = bench_point(name, T, experts, prepared, None, ceil, args.reps, flush, validate=args.validate,
                                        others=others)
                        r["tk_error"] = True
                    sweep.append(r)
                else:
                    r = next(r for r in sweep if r["shape"] == name and r["T"] == T)
                    r["torch_bf16_us"] = time_baseline(name, T, baseline, args.reps, flush)
                    r["speedup_vs_torch"] = r["torch_bf16_us"] / r["us"]
                    # the least time any bf16 path needs: its touched experts' bf16 bytes at copy bandwidth
                    bf16_bytes = r["experts_touched"] * 2 * 3 * I * H
                    r["bf16_floor_us"] = bf16_bytes / (ceil["bandwidth_GBps"] * 1e3)
                    r["speedup_vs_bf16_floor"] = r["bf16_floor_us"] / r["us"]
                extra = "".join(f", {lay} {r['us_' + lay]:.1f} us" for lay in layouts[1:] if "us_" + lay in r)
                if "tk_us" in r:
                    extra += f", triton_kernels {r['tk_us']:.1f} us (ours x{r['ours_speedup_vs_tk']:.2f})"
                log(f"bench {name} T={T}: {r['us']:.1f} us{extra} (torch bf16 {r['torch_bf16_us']:.1f} us), "
                    f"{r['GBps']:.0f} GB/s, {r['TFLOPs']:.1f} TFLOP/s  [{time.time() - t_start:.0f} s]")
                dump()
            del experts, baseline
            if with_baseline:
                prepared = others = tk = None
            if CUDA:
                torch.cuda.empty_cache()
    if args.variants and not past_deadline("breakdown and variants"):
        for stage in (run_breakdown, run_variants):
            try:
                stage(args.reps, ceil, flush, results, args.quick, args.validate, layouts=layouts)
            except Exception:
                traceback.print_exc()
            dump()
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
        if all("pct_bandwidth_k16" in r for r in small):
            out["bw_70pct_T<=16_k16"] = {"min_pct": min(r["pct_bandwidth_k16"] for r in small),
                                         "met": all(r["pct_bandwidth_k16"] >= 70 for r in small)}
    if large:
        out["matmul_50pct_T>=4096"] = {"min_pct": min(r["pct_matmul"] for r in large),
                                       "met": all(r["pct_matmul"] >= 50 for r in large)}
    vs = [r for r in sweep if "tk_us" in r]
    if vs:  # the comparison: ours vs triton_kernels in the same run, per shape
        for shape in sorted({r["shape"] for r in vs}):
            rs = [r for r in vs if r["shape"] == shape]
            best = [max(r["ours_speedup_vs_tk"], r.get("k16_speedup_vs_tk", 0.0)) for r in rs]
            out[f"vs_triton_kernels_{shape}"] = {"min_speedup_best_layout": min(best), "max": max(best),
                                                 "T_slower": [r["T"] for r, b in zip(rs, best) if b < 1.0]}
    return out


def print_table(results):
    c = results["ceilings"]
    log("")
    log(f"{results['device']}: copy {c['bandwidth_GBps']:.0f} GB/s, bf16 matmul {c['bf16_matmul_TFLOPs']:.0f} TFLOP/s;"
        f" checks {'ok' if results.get('checks_ok', True) else 'FAILED'}")
    nan = float("nan")
    log(f"{'shape':>5} {'T':>5} {'us':>9} {'k16 us':>9} {'tk us':>9} {'x tk':>5} {'xk16':>5} {'torch':>9} {'x':>5} "
        f"{'floor':>7} {'GB/s':>6} {'%bw':>4} {'%bwk':>4} {'%bwtk':>5} {'TF/s':>6} {'%mm':>4} {'cfg':>16}")
    for r in results["sweep"]:
        log(f"{r['shape']:>5} {r['T']:>5} {r['us']:>9.1f} {r.get('us_k16', nan):>9.1f} {r.get('tk_us', nan):>9.1f} "
            f"{r.get('ours_speedup_vs_tk', nan):>5.2f} {r.get('k16_speedup_vs_tk', nan):>5.2f} "
            f"{r['torch_bf16_us']:>9.1f} {r['speedup_vs_torch']:>5.1f} "
            f"{r.get('bf16_floor_us', nan):>7.1f} "
            f"{r['GBps']:>6.0f} {r['pct_bandwidth']:>4.0f} {r.get('pct_bandwidth_k16', nan):>4.0f} "
            f"{r.get('tk_pct_bandwidth', nan):>5.0f} {r['TFLOPs']:>6.1f} {r['pct_matmul']:>4.0f} "
            f"{_cfg_str(r['config']):>16}")
    if any("ours_logits_us" in r for r in results["sweep"]):
        log("from logits (ours route + fused_moe vs triton_kernels routing() + 2 matmul_ogs), us: " + ", ".join(
            f"{r['shape']} T={r['T']}: {r['ours_logits_us']:.1f} vs {r['tk_logits_us']:.1f}"
            for r in results["sweep"] if "ours_logits_us" in r))
    for r in results.get("breakdown", []):
        log(f"breakdown T={r['T']}: align {r['align_us']:.1f} gemm1 {r['gemm1_us']:.1f} gemm2 {r['gemm2_us']:.1f} "
            f"cast {r['cast_us']:.1f} total {r['total_us']:.1f} us")
    for r in results.get("variants", []):
        if "us" in r:
            c = r["config"]
            log(f"variant {r['shape']} T={r['T']} {r['layout']} {_cfg_str(c)}: {r['us']:.1f} us "
                f"{r['pct_bandwidth']:.0f}%bw {r['pct_matmul']:.0f}%mm")
    for k, v in results.get("targets", {}).items():
        log(f"target {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
