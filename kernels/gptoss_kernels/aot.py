"""Ahead-of-time builds of every fused-MoE kernel variant for any NVIDIA target, with no GPU.

How it stays honest: the package's own host code (`route`, `fused_moe` and its `pick_config`) runs
on CPU tensors with the kernel launches *recorded* instead of executed, as if on a GPU of the given
compute capability. Each recorded launch is then specialized the way Triton's JIT specializes it
(its own binder and `_pack_args`, for that target's backend) and compiled with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`, i.e. by the ptxas that ships in
the triton wheel. So what is built is what the package launches there: the tile config, split-K,
the dequantization capability.py picks for (target, dtype), and the shape-dependent constexprs.

Variants: gpt-oss-20b and -120b expert shapes at tensor parallel 1, 2 and 4 (expert width per rank
2880, 1440, 736), token counts that reach every branch of `pick_config` and both align paths, each
dtype the target supports (capability.kernel_variant), both weight layouts (moe.LAYOUTS: the
checkpoint byte order and the K16 order of the decode K loop). Launches that differ only in the alignment
of runtime integers are built once (their code differs only in vectorization hints).

CLI (TRITON_INTERPRET must be unset): python -m gptoss_kernels.aot [--cc 90 ...] [--json OUT]
prints one row per built kernel (registers per thread, spills, shared memory) and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator

import torch

from . import capability as cap
from . import moe as moe_mod

# (name, E, H, I per rank, top_k): the released models' experts, and tensor parallel 2 / 4 shards
# (I = 2880 / tp rounded up to whole 32-blocks, as the plugin pads them)
SHAPES = [(f"{m}-tp{tp}", e, 2880, -(-2880 // tp // 32) * 32, 4)
          for m, e in (("20b", 32), ("120b", 128)) for tp in (1, 2, 4)]
# decode (T*k <= 16 and > 16), middle, prefill rows per expert, and the torch align path (> 2048 slots)
TOKENS = (1, 8, 256, 1024, 2048)
# expert weight byte orders (moe.LAYOUTS): both are built for every launch
LAYOUTS = ("checkpoint", "k16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class _Launch:
    def __init__(self, kernel_name: str, args: tuple, kwargs: dict):
        self.kernel_name, self.args, self.kwargs = kernel_name, args, kwargs


class _RecordingKernel:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the launch."""

    def __init__(self, name: str, log: list[_Launch]):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(_Launch(self.name, args, kwargs))


class _RecordingModule:
    def __init__(self, real, log: list[_Launch]):
        self._real, self._log = real, log

    def __getattr__(self, item):
        value = getattr(self._real, item)
        if item.endswith("_kernel"):
            return _RecordingKernel(item, self._log)
        return value


@contextlib.contextmanager
def _as_if_on(capability: tuple[int, int]) -> Iterator[list[_Launch]]:
    """Run the host code as on a GPU of `capability`: launches recorded, CPU tensors accepted."""
    from . import fused_moe_triton

    log: list[_Launch] = []
    saved = (moe_mod._kernels, moe_mod._check_device, moe_mod.device_capability, moe_mod._interpreting)
    moe_mod._kernels = lambda: _RecordingModule(fused_moe_triton, log)
    moe_mod._check_device = lambda *tensors: None
    moe_mod.device_capability = lambda device: capability
    moe_mod._interpreting = lambda: False
    try:
        yield log
    finally:
        moe_mod._kernels, moe_mod._check_device, moe_mod.device_capability, moe_mod._interpreting = saved


def _experts(E: int, H: int, I: int) -> moe_mod.MoEWeights:
    """Random-free stand-ins: only shapes, dtypes and strides matter to the launches."""
    u8 = torch.uint8
    return moe_mod.prepare_moe_weights(
        torch.empty(E, 2 * I, H // 2, dtype=u8), torch.empty(E, 2 * I, H // 32, dtype=u8),
        torch.empty(E, 2 * I), torch.empty(E, H, I // 2, dtype=u8), torch.empty(E, H, I // 32, dtype=u8),
        torch.empty(E, H))


def record_launches(capability: tuple[int, int], dtype: torch.dtype, configs=None) -> list[tuple[str, _Launch]]:
    """Every launch `route` and `fused_moe` make for the package's shapes on this target and dtype.
    `configs` (optional): {T: [TileConfig, ...]} launched instead of pick_config's choice at those T
    (their dequantization is still the target's), for static comparisons of tile variants."""
    out = []
    with _as_if_on(capability) as log:
        for name, E, H, I, k in SHAPES:
            w0 = _experts(E, H, I)
            for layout in LAYOUTS:
                # only the layout flag reaches the launch: no need to permute the stand-in bytes
                w = dataclasses.replace(w0, layout=layout)
                for T in (configs or TOKENS):
                    g = torch.Generator().manual_seed(T)
                    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
                    x = torch.empty(T, H, dtype=dtype)
                    if configs is None:
                        moe_mod.route(torch.empty(T, E, dtype=dtype), k)
                        moe_mod.fused_moe(x, torch.rand(T, k), ids, w)
                        out += [(f"{name} {layout} T={T}", launch) for launch in log]
                        log.clear()
                        continue
                    dq = moe_mod.pick_config(T, k, E, dtype, capability).dequant
                    for c in configs[T]:
                        moe_mod.fused_moe(x, torch.rand(T, k), ids, w, config=dataclasses.replace(c, dequant=dq))
                        out += [(f"{name} {layout} T={T} {c}", launch) for launch in log if "gemm" in launch.kernel_name]
                        log.clear()
    return out


def _specialize(kernel, launch: _Launch, backend):
    """(signature, constexprs, attrs, options) exactly as Triton's JIT derives them for a launch."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    return kernel._pack_args(backend, launch.kwargs, bound_args, specialization, options)


def _variant_key(kernel, launch: _Launch, signature: dict, constexprs: dict) -> str:
    """What makes two launches different kernels for this check: the kernel's declared constexprs,
    the argument types and the launch options (not the JIT's value specializations of runtime
    integers, e.g. an M that happens to be 1: those change hints, not what must build)."""
    declared = {p.name for p in kernel.params if p.is_constexpr}
    consts = sorted((str(k), repr(v)) for k, v in constexprs.items() if kernel.arg_names[k[0]] in declared)
    types = {k: ("i32" if v == "constexpr" else v) for k, v in signature.items() if k not in declared}
    return json.dumps([launch.kernel_name, types, consts, launch.kwargs.get("num_warps"),
                       launch.kwargs.get("num_stages")])


def plan(capability: tuple[int, int], dtypes=None, log=print, configs=None) -> list[dict]:
    """The distinct kernels the package launches on this target: one entry per variant, with what
    `triton.compile` needs and a description naming the variant and a launch that uses it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    from . import fused_moe_triton

    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    backend = make_backend(target)
    todo, seen = [], set()
    for dname, dtype in (dtypes or DTYPES).items():
        variant = cap.kernel_variant(capability, dtype)
        if not variant.supported:
            log(f"sm_{capability[0]}{capability[1]} {dname}: not supported ({variant.reason}); nothing to build")
            continue
        for where, launch in record_launches(capability, dtype, configs):
            kernel = getattr(fused_moe_triton, launch.kernel_name)
            signature, constexprs, attrs = _specialize(kernel, launch, backend)[1:]
            key = _variant_key(kernel, launch, signature, constexprs)
            if key in seen:
                continue
            seen.add(key)
            consts = {kernel.arg_names[p[0]]: v for p, v in constexprs.items() if kernel.params[p[0]].is_constexpr}
            desc = (f"sm_{capability[0]}{capability[1]} {dname} {launch.kernel_name} "
                    f"{' '.join(f'{k}={v}' for k, v in consts.items())} "
                    f"w{launch.kwargs.get('num_warps', 4)}s{launch.kwargs.get('num_stages', 3)} ({where})")
            todo.append({"target": target, "capability": capability, "dtype": dname, "kernel": launch.kernel_name,
                         "signature": signature, "constexprs": constexprs, "attrs": attrs, "consts": consts,
                         "options": {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs},
                         "desc": desc, "where": where})
    return todo


def _compile_one(item: dict) -> dict:
    import triton
    from triton.compiler import ASTSource

    from . import fused_moe_triton

    kernel = getattr(fused_moe_triton, item["kernel"])
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(kernel, item["signature"], item["constexprs"], item["attrs"]),
                                  target=item["target"], options=item["options"])
    except Exception as exc:
        return {"error": f"gptoss_kernels.aot: {item['desc']} does not build: {type(exc).__name__}: {exc}"}
    md = compiled.metadata
    ptx = compiled.asm.get("ptx", "")
    usage = resource_usage(compiled.asm["cubin"])
    ttgir = compiled.asm.get("ttgir", "")
    sass = sass_summary(compiled.asm["cubin"])
    cc, consts = item["capability"], item["consts"]
    return {"target": f"sm_{cc[0]}{cc[1]}", "dtype": item["dtype"], "kernel": item["kernel"],
            "constexprs": {k: (v if isinstance(v, (int, float, bool, str)) else repr(v)) for k, v in consts.items()},
            "num_warps": md.num_warps, "num_stages": md.num_stages, "shared_bytes": md.shared,
            "registers": usage["registers"], "spill_bytes": usage["local_bytes"], "stack_bytes": usage["stack_bytes"],
            "dequant": cap.DEQUANT_NAMES.get(consts.get("DEQUANT", cap.DEQUANT_PLAIN)),
            "ptx_mma": "mma.sync" in ptx, "ptx_wgmma": "wgmma" in ptx, "ptx_cp_async": "cp.async" in ptx,
            "ptx_evict_first": "evict_first" in ptx,
            # layout conversions left in the Triton GPU IR (each one a trip through shared memory or
            # shuffles) and shared-memory buffers; SASS instruction counts (whole kernel, static)
            "ttgir_convert_layout": ttgir.count("ttg.convert_layout"), "ttgir_local_alloc": ttgir.count("ttg.local_alloc"),
            "sass": sass,
            "seconds": round(time.perf_counter() - t0, 2), "where": item["where"], "desc": item["desc"]}


_TODO: list[dict] = []  # the plan, inherited by forked compile workers


def _compile_index(i: int) -> dict:
    return _compile_one(_TODO[i])


def build(targets, dtypes=None, jobs: int | None = None, log=print, configs=None) -> list[dict]:
    """Compile every distinct launch for every target, `jobs` processes at a time (default: the
    CPUs). Raises, naming every variant that does not build."""
    import multiprocessing

    global _TODO
    _TODO = [item for cc in targets for item in plan(cc, dtypes, log, configs)]
    log(f"gptoss_kernels.aot: {len(_TODO)} kernel variants to build")
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1:  # fork: workers inherit the plan (it holds the jit functions, which do not pickle)
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            rows = pool.map(_compile_index, range(len(_TODO)), chunksize=1)
    else:
        rows = [_compile_one(item) for item in _TODO]
    failed = [r["error"] for r in rows if "error" in r]
    for r in rows:
        if "error" not in r:
            log(f"built {r['desc']}: {r['seconds']:.1f}s, {r['registers']} registers, {r['spill_bytes']} B spilled")
    if failed:
        raise RuntimeError("\n".join(failed))
    return rows


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread, spill stores/loads (local memory) and shared memory of a cubin, read by
    the cuobjdump that ships in the triton wheel (`n_regs` / `n_spills` of a compiled kernel are
    only filled in when the CUDA driver loads it, which needs a GPU)."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    return {"registers": usage.get("reg"), "stack_bytes": usage.get("stack"), "local_bytes": usage.get("local")}


_SASS_OPS = {  # name: regex on a SASS line
    "HGMMA": r"\bHGMMA\.", "HMMA": r"\bHMMA\.", "LDGSTS": r"\bLDGSTS\b", "LDG.128": r"\bLDG\.E[.A-Z0-9]*\.128\b",
    "LDG.EF": r"\bLDG\.E\.EF", "LDG": r"\bLDG\b", "LDS": r"\bLDS\b", "LDSM": r"\bLDSM\b", "STS": r"\bSTS\b",
    "BAR": r"\bBAR\.", "SHFL": r"\bSHFL\.", "PRMT": r"\bPRMT\b", "HMUL2.BF16": r"\bHMUL2\.BF16", "HFMA2.BF16": r"\bHFMA2\.BF16",
    "RED/ATOM": r"\b(RED|ATOM)\b",
}


def sass_summary(cubin: bytes) -> dict:
    """Static counts of a few SASS instructions in a cubin (the wheel's cuobjdump -sass): which MMA
    (HGMMA = wgmma, HMMA = mma.sync), global loads (128-bit, evict-first, cp.async = LDGSTS),
    shared-memory traffic (LDS/STS/LDSM: layout conversions and operand staging), barriers."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in text.splitlines() if "/*" in ln and ";" in ln]
    return {k: sum(1 for ln in lines if re.search(rx, ln)) for k, rx in _SASS_OPS.items()} | {"instructions": len(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cc", type=int, nargs="*", help="compute capabilities, e.g. 80 90 (default: all targets)")
    p.add_argument("--dtype", choices=sorted(DTYPES), nargs="*", help="activation dtypes (default: all)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--jobs", type=int, help="parallel compiles (default: the CPUs)")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter replaces @triton.jit kernels, which cannot be compiled")
    targets = [(c // 10, c % 10) for c in a.cc] if a.cc else list(cap.BUILD_TARGETS)
    dtypes = {d: DTYPES[d] for d in a.dtype} if a.dtype else None
    rows = build(targets, dtypes, jobs=a.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{'target':>7} {'dtype':>5} {'kernel':>14} {'regs':>5} {'spill':>5} {'smem':>7} {'dequant':>15} "
          f"{'mma':>4} {'cp.async':>8} config")
    for r in rows:
        c = r["constexprs"]
        cfg = "".join(f"{k}={c[k]} " for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "EVEN_K", "DOT", "K16", "SWAP_AB")
                      if k in c)
        print(f"{r['target']:>7} {r['dtype']:>5} {r['kernel']:>14} {str(r['registers']):>5} {str(r['spill_bytes']):>5} "
              f"{r['shared_bytes']:>7} {r['dequant']:>15} {str(r['ptx_mma'] or r['ptx_wgmma']):>4} "
              f"{str(r['ptx_cp_async']):>8} {cfg}w{r['num_warps']}s{r['num_stages']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"triton": __import__("triton").__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
