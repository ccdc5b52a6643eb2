"""Native CPU kernels for gpt-oss: the MXFP4 MoE, and the bf16 linear layers where vLLM-CPU has no
fast bf16 GEMM. Build (once per machine), load, call.

`moe_cpu.cpp` and `linear_cpu.cpp` (sharing `cpu_common.h`) are compiled into one library with the system C++ compiler (`$CXX`, default `g++`) and `-march=native`
`<cache_root>/<key>/gptoss_moe_cpu.so`, where the key hashes the sources, this package's
version, the compiler command and the CPU's ISA flags: a machine with other flags (or a new
release) gets its own build, an unchanged one loads the cached library without compiling. The
build runs under an exclusive file lock, so processes starting together (vLLM's workers) build it
once and the others wait and load it. It is a plain shared library called through ctypes: no torch
headers (a build takes seconds, not a minute) and no ninja. It is linked against torch's own libgomp,
so its OpenMP threads are torch's (`torch.set_num_threads`, vLLM's CPU thread binding).

No vLLM import here. Public:
  load(cache_root=None, prefetch=None) -> NativeKernels    raises NativeUnavailable with the reason (no compiler, ...)
  NativeKernels.pack_experts(blocks, inplace)    E2M1 codes, checkpoint order -> the layout `moe` reads (once, at load)
  NativeKernels.moe(x, topk_weights, topk_ids, w13, w13_scale, w13_bias, w2, w2_scale, w2_bias, alpha, limit)
  NativeKernels.linear(x, weight, bias)    y = x weight^T + bias for bf16 weights [N, K], used in place
  NativeKernels.enable_amx() / disable_amx()    AMX builds: experts with 8+ tokens of a bf16 call on AMX tiles
Numerics: float32 activations run float32 math on exactly dequantized weights (as moe_reference,
up to summation order); bfloat16 activations, on CPUs with AVX512_BF16, multiply bf16 activations
by exactly-dequantized bf16 weights with float32 sums (the SwiGLU output is rounded to bf16 before
the down projection); on AVX2 CPUs and on AVX-512 CPUs without AVX512_BF16 (fp16 activations on
any of them), 16-bit activations are quantized to int16 per 32-block inside the kernel (step =
block max / 32767: error ~1e-5 of the block's largest value, two orders below bf16's own rounding)
for integer dot products with the 2x-E2M1 codes (vpdpwssd where AVX512_VNNI or AVX-VNNI has it), blocks
with extreme E8M0 scales exactly in float32; the scalar build converts 16-bit activations to float32.
With the AMX path on (`enable_amx`, CPUs with AMX), experts with 8+ tokens of a bf16 call multiply
the same bf16 values on AMX tiles: float32 sums in another order, and bf16 inputs below 2^-126
(denormals) count as zero there, as AMX's TDPBF16PS does.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(n) for n in ("moe_cpu.cpp", "linear_cpu.cpp"))
HEADERS = tuple(Path(__file__).with_name(n) for n in ("cpu_common.h", "amx_tiles.h"))
LIB_NAME = "gptoss_moe_cpu.so"
# ISA flags of /proc/cpuinfo that change what -march=native compiles
_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
              "avx512_bf16", "avx512vbmi", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
FEATURE_AVX512, FEATURE_BF16, FEATURE_AVX2, FEATURE_Q16, FEATURE_VNNI = 1, 2, 4, 8, 16  # gptoss_cpu_features() bits
FEATURE_AMX, FEATURE_AMX_EMULATED = 32, 64  # AMX tiles, or their software model (moe_cpu.cpp, amx_tiles.h)
MODE_F32, MODE_BF16, MODE_Q16 = 0, 1, 2  # gptoss_cpu_moe's act_mode
# Tokens per kernel call: longer inputs run in chunks of this many. The kernel's buffers grow with
# tokens x top-k (SwiGLU rows, weighted outputs, nibble-layout rows: ~100 MB at 1024 tokens, top-4,
# 20b shapes), and vLLM's profile run sends max_num_batched_tokens at once (4096 for the LLM class
# on the CPU): unchunked, its transient RSS was 0.29 GiB higher at 20b. Each chunk re-reads the
# touched experts (~0.4 GB at 20b), ~2% of a 1024-token chunk's time.
MOE_CHUNK_TOKENS = 1024
# The cache the decode loops (the AVX-512 MoE's few-token paths, the dense GEMVs of every x86 build)
# prefetch the weights they read next into: the name a caller passes -> GK_BF16_PREFETCH_HINT
# (cpu_common.h). The AVX2 MoE loop keeps L1 (measured on Zen 3; L2 made no difference on Zen 4).
# default_prefetch() says which one each CPU gets.
PREFETCH_HINTS = {"l1": "_MM_HINT_T0", "l2": "_MM_HINT_T1"}


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be used here; the message says why (no compiler, build error, ...)."""


def default_cache_root() -> Path:
    """~/.cache/vllm-gptoss/native; the plugin passes its own root (it honours VLLM_GPTOSS_CACHE)."""
    return Path(os.path.expanduser("~")) / ".cache" / "vllm-gptoss" / "native"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-gptoss")
    except Exception:  # not installed (a bare checkout on PYTHONPATH)
        return "0"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (name -> value), {} where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags() -> list[str]:
    flags = _cpuinfo().get("flags")
    if flags is not None:
        have = set(flags.split())
        return [fl for fl in _ISA_FLAGS if fl in have]
    import platform

    return [platform.machine()]


def _cpu_vendor_family() -> tuple[str, int]:
    """(vendor_id, cpu family) of /proc/cpuinfo, ("", -1) where it has none."""
    info = _cpuinfo()
    family = info.get("cpu family", "")
    return info.get("vendor_id", ""), int(family) if family.isdigit() else -1


def default_prefetch() -> str:
    """"l2" on AMD Zen 4, "l1" elsewhere: measured, weights from DRAM, 2 threads, builds of both
    interleaved in one process (BENCHMARKS.md). Zen 4: "l2" ran the one-token MoE 1.16-1.23x and the
    decode GEMV 1.05-1.15x faster than "l1" (the 32 KiB L1 gained less from fetching ahead than it
    lost to it). AMD Zen 5, where both loops were tuned, and the Intel Xeon measured ran "l1". Zen 4
    is the only AVX512_BF16 CPU of AMD's family 25; Zen 3 (AVX2 only, family 25 too) gets "l2" for
    its dense decode GEMV, unmeasured there (its AVX2 MoE loop does not use this setting)."""
    vendor, family = _cpu_vendor_family()
    return "l2" if vendor == "AuthenticAMD" and family == 25 else "l1"


def _compiler() -> list[str]:
    cxx = os.environ.get("CXX", "g++")
    return shlex.split(cxx)


def build_command(sources, out: Path, march: str = "native", prefetch: str = "l1",
                  emulate_amx: bool = False) -> list[str]:
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    # -fopenmp + linking from torch/lib: the library's NEEDED libgomp.so.1 resolves to the copy
    # torch already loaded, so both share one OpenMP runtime (one thread pool, torch's thread count).
    return [*_compiler(), "-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", "-std=c++17",
            "-fno-math-errno", f"-DGK_BF16_PREFETCH_HINT={PREFETCH_HINTS[prefetch]}",
            *(["-DGK_AMX_EMULATE=1"] if emulate_amx else []), *map(str, sources),
            "-o", str(out), f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}"]


def cache_key(march: str = "native", prefetch: str = "l1", emulate_amx: bool = False) -> str:
    h = hashlib.sha256()
    for f in (*SOURCES, *HEADERS):
        h.update(f.read_bytes())
    h.update(_package_version().encode())
    h.update(" ".join(build_command([Path(f.name) for f in SOURCES], Path("out"), march, prefetch,
                                    emulate_amx)).encode())
    h.update(",".join(_cpu_flags()).encode())
    return h.hexdigest()[:16]


def _build(directory: Path, march: str, prefetch: str, emulate_amx: bool) -> tuple[Path, bool]:
    """Compile into `directory` under its lock; returns (library path, whether we compiled it)."""
    lib = directory / LIB_NAME
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; we then find its result
        if lib.exists():
            return lib, False
        cxx = _compiler()
        if shutil.which(cxx[0]) is None:
            raise NativeUnavailable(f"no C++ compiler: {cxx[0]!r} (from $CXX, default g++) was not found")
        tmp = directory / f"{LIB_NAME}.{os.getpid()}.tmp"
        cmd = build_command(SOURCES, tmp, march, prefetch, emulate_amx)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise NativeUnavailable(f"building the native MoE kernel failed ({shlex.join(cmd)}):\n"
                                    f"{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, lib)  # atomic: a reader never sees a half-written library
        logger.info("vllm-gptoss: built the native CPU MoE kernel in %.1f s (%s)", time.perf_counter() - t0, lib)
        (directory / "build.log").write_text(f"{shlex.join(cmd)}\nseconds: {time.perf_counter() - t0:.2f}\n")
    return lib, True


_U8P = ctypes.POINTER(ctypes.c_uint8)
# enable_amx's check: the AMX and AVX-512 paths multiply the same bf16 values with float32 sums in
# another order; what differs is mostly where a SwiGLU output rounds to bf16 (~1e-3 relative)
AMX_CHECK_TOLERANCE = 2e-2


class NativeKernels:
    def __init__(self, path: Path):
        self.path = path
        self.built_here = False
        self.lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls
        self.lib.gptoss_cpu_features.restype = ctypes.c_int
        self.features = self.lib.gptoss_cpu_features()
        # the row-group layout `moe` reads the E2M1 codes in (moe_cpu.cpp; `pack_experts` writes it)
        self.group_rows = self.lib.gptoss_cpu_group_rows()
        self.chunk_bytes = self.lib.gptoss_cpu_chunk_bytes()
        fn = self.lib.gptoss_cpu_moe
        fn.restype = ctypes.c_int
        i64, vp, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        fn.argtypes = [ctypes.c_int, vp, vp, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp, vp, f32, f32,
                       ctypes.POINTER(i64)]
        self._fn = fn
        lin = self.lib.gptoss_cpu_linear_bf16
        lin.restype = ctypes.c_int
        lin.argtypes = [ctypes.c_int, vp, vp, vp, vp, i64, i64, i64]
        self._linear = lin
        # bf16 calls (K a multiple of 32) of at most this many tokens take the decode GEMV, more
        # tokens the register-blocked bf16 GEMM (linear_cpu.cpp); 0 on builds without AVX512_BF16,
        # which have neither (bf16 x is widened to float32 there)
        self.gemv_max_tokens = self.lib.gptoss_cpu_gemv_max_tokens()
        # Intel AMX: there oneDNN's packed bf16 GEMM streams the dense layers faster than the GEMV
        # (Xeon, 2026-12-06: the GEMV 0.74-1.0x at 1-8 tokens), so callers keep oneDNN's by default
        self.has_amx = "amx_bf16" in _cpu_flags()
        # the MoE's AMX path (enable_amx): off until asked for, and only in builds with AMX tiles
        # (libraries of earlier revisions, which benchmarks/cpu_moe_ab.py loads, have no such switch)
        self._amx_switch = getattr(self.lib, "gptoss_cpu_amx", None)
        if self._amx_switch is not None:
            self._amx_switch.restype = ctypes.c_int
            self._amx_switch.argtypes = [ctypes.c_int]
            self.lib.gptoss_cpu_amx_items.restype = ctypes.c_int64
        self.amx = False

    @property
    def isa(self) -> str:
        if self.features & FEATURE_BF16:
            return "avx512_bf16"
        if self.features & FEATURE_AVX512:
            return "avx512"
        if self.features & FEATURE_AVX2:
            return "avx2"
        return "scalar"

    def act_mode(self, dtype: torch.dtype) -> int:
        """The kernel's activation mode for activations of `dtype` on this build (moe_cpu.cpp's
        act_mode): float32 stays float32; 16-bit activations use the build's 16-bit path."""
        if dtype == torch.bfloat16 and self.features & FEATURE_BF16:
            return MODE_BF16
        # (FEATURE_AVX2: libraries built before FEATURE_Q16 existed had q16 in AVX2 builds only;
        # benchmarks/cpu_moe_ab.py loads such builds of older revisions)
        if dtype in (torch.bfloat16, torch.float16) and self.features & (FEATURE_Q16 | FEATURE_AVX2):
            return MODE_Q16
        return MODE_F32

    def _group_view(self, blocks: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if blocks.dtype != torch.uint8 or blocks.dim() not in (3, 4) or not blocks.is_contiguous():
            raise ValueError(f"expert blocks: expected a contiguous uint8 [E, N, K/2] or [E, N, K/32, 16] tensor, "
                             f"found {blocks.dtype} {tuple(blocks.shape)} contiguous={blocks.is_contiguous()}")
        E, N = blocks.shape[0], blocks.shape[1]
        kb = blocks[0, 0].numel()
        if N % self.group_rows or kb % 16:
            raise ValueError(f"expert blocks: expected rows in multiples of {self.group_rows} and K/2 in multiples "
                             f"of 16 bytes, found {tuple(blocks.shape)}")
        return blocks.view(E, N // self.group_rows, self.group_rows, kb), kb, kb // self.chunk_bytes * self.chunk_bytes

    def pack_experts(self, blocks: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Checkpoint byte order of E2M1 expert codes ([E, N, K/2] or [E, N, K/32, 16] uint8) -> the
        row-group layout `moe` reads (moe_cpu.cpp): per group of `group_rows` rows, their 64-byte
        chunks interleaved, then their partial last chunks. Same shape, same bytes. `inplace`: written
        back into `blocks`, as at model load, where a second copy of the experts would not fit: one
        expert at a time through one scratch buffer of an expert's size (8 MB at 20b), written into
        through views, so that a load leaves no freed temporaries behind: per-chunk temporaries of
        ~33 MB here, just under glibc's 32 MiB mmap threshold, left ~1 GiB of freed heap resident after
        a 20b load (BENCHMARKS.md, "Where the resident memory went")."""
        g, kb, full = self._group_view(blocks)
        out = blocks if inplace else torch.empty_like(blocks)
        dst = out.view(g.shape[0], g.shape[1], -1)
        _, q, r = g.shape[:3]
        c = self.chunk_bytes
        scratch = torch.empty(q, r * kb, dtype=torch.uint8)
        main = scratch[:, :r * full].view(q, full // c, r, c)  # the groups' full chunks, interleaved
        tail = scratch[:, r * full:].view(q, r, kb - full)      # then their partial last chunks
        for e in range(g.shape[0]):
            b = g[e]
            main.copy_(b[..., :full].unflatten(-1, (full // c, c)).transpose(1, 2))
            tail.copy_(b[..., full:])
            dst[e].copy_(scratch)
        return out

    def unpack_experts(self, blocks: torch.Tensor) -> torch.Tensor:
        """The inverse of `pack_experts` (a copy in the checkpoint byte order; tests, inspection)."""
        g, kb, full = self._group_view(blocks)
        n, q, r = g.shape[:3]
        flat = g.reshape(n, q, r * kb)
        c = self.chunk_bytes
        main = flat[..., :r * full].reshape(n, q, full // c, r, c).transpose(2, 3).reshape(n, q, r, full)
        tail = flat[..., r * full:].reshape(n, q, r, kb - full)
        return torch.cat([main, tail], dim=-1).reshape(blocks.shape)

    @property
    def amx_built(self) -> bool:
        """Whether this build has the MoE's AMX path (the instructions, or their software model)."""
        return self._amx_switch is not None and bool(self.features & (FEATURE_AMX | FEATURE_AMX_EMULATED))

    def enable_amx(self) -> None:
        """Turn on the MoE's AMX path: bf16 activations, experts with 8+ tokens of a call (prefill),
        multiplied on AMX tiles instead of AVX512_BF16 dot products (moe_cpu.cpp). Process-wide.
        Asks Linux for the tile registers, then runs a small random MoE both ways and compares;
        raises NativeUnavailable, the path left off, when the build has no AMX tiles, Linux refuses
        them, or the two disagree."""
        if not self.amx_built:
            raise NativeUnavailable(f"this build of the native kernel has no AMX tiles (features {self.features}; "
                                    f"the CPU reports amx_bf16: {self.has_amx})")
        if self._amx_switch(1) != 1:
            raise NativeUnavailable("Linux refused this process the AMX tile registers "
                                    "(arch_prctl ARCH_REQ_XCOMP_PERM; kernel 5.16+ needed)")
        try:
            err = self._amx_disagreement()
        except BaseException:
            self.disable_amx()
            raise
        if not err <= AMX_CHECK_TOLERANCE:
            self.disable_amx()
            raise NativeUnavailable(f"the AMX path disagrees with the AVX-512 path on a random MoE: relative "
                                    f"L2 difference {err:.3g} (at most {AMX_CHECK_TOLERANCE} expected)")
        self.amx = True

    def amx_items(self) -> int:
        """Work items (32 rows of an expert x all its tokens of a call) the AMX path has run in this
        process: benchmarks record it, tests check the path ran."""
        return self.lib.gptoss_cpu_amx_items() if self._amx_switch is not None else 0

    def disable_amx(self) -> None:
        if self._amx_switch is not None:
            self._amx_switch(0)
        self.amx = False

    def _amx_disagreement(self) -> float:
        """Relative L2 difference of a small random bf16 MoE (3 experts with ~32 tokens each, extreme
        activations absent) computed with the AMX path on (as set now) and off."""
        g = torch.Generator().manual_seed(20261207)
        E, H, I, T, K = 3, 96, 64, 48, 2
        w13 = self.pack_experts(torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g))
        w2 = self.pack_experts(torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g))
        s13 = torch.randint(119, 125, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
        s2 = torch.randint(119, 125, (E, H, I // 32), dtype=torch.uint8, generator=g)
        b13, b2 = torch.randn(E, 2 * I, generator=g) * 0.1, torch.randn(E, H, generator=g) * 0.1
        x = torch.randn(T, H, generator=g).to(torch.bfloat16)
        ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(torch.int32)
        tw = torch.softmax(torch.randn(T, K, generator=g), dim=-1)
        args = (x, tw, ids, w13, s13, b13, w2, s2, b2, 1.702, 7.0)
        on = self.moe(*args).float()
        self._amx_switch(0)
        try:
            off = self.moe(*args).float()
        finally:
            self._amx_switch(1)
        return float((on - off).norm() / off.norm().clamp_min(1e-30))

    def moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            w13: torch.Tensor, w13_scale: torch.Tensor, w13_bias: torch.Tensor | None,
            w2: torch.Tensor, w2_scale: torch.Tensor, w2_bias: torch.Tensor | None,
            alpha: float, limit: float, out: torch.Tensor | None = None,
            act_mode: int | None = None) -> torch.Tensor:
        """Same contract as `gptoss_kernels.moe_reference`, with the E2M1 blocks w13 / w2 ([E, N, K/2] or
        [E, N, K/32, 16] uint8) in the row-group layout of `pack_experts` (not the checkpoint order:
        the shapes are the same, so this cannot be checked here) and the scales [E, N, K/32] uint8 as
        in the checkpoint; returns [T, H] in
        x's dtype, written into `out` when given (every element is written). `act_mode` forces a
        kernel mode (MODE_Q16 on float32 x gives its float32 output: the tests compare modes)."""
        if x.dim() != 2:
            raise ValueError(f"x: expected [T, H], found shape {tuple(x.shape)}")
        T, H = x.shape
        E, N1 = w13.shape[0], w13.shape[1]
        I = N1 // 2
        _check("w13", w13, torch.uint8, (E, N1, H // 2))
        _check("w13_scale", w13_scale, torch.uint8, (E, N1, H // 32))
        _check("w2", w2, torch.uint8, (E, H, I // 2))
        _check("w2_scale", w2_scale, torch.uint8, (E, H, I // 32))
        if H % 32 or I % 32 or N1 % 2:
            raise ValueError(f"MXFP4 experts need hidden size and expert width multiples of 32: H={H}, I={I}")
        if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != T:
            raise ValueError(f"topk_ids / topk_weights: expected matching [T={T}, k], found "
                             f"{tuple(topk_ids.shape)} / {tuple(topk_weights.shape)}")
        K = topk_ids.shape[1]
        b13 = _bias("w13_bias", w13_bias, (E, N1))
        b2 = _bias("w2_bias", w2_bias, (E, H))
        mode = self.act_mode(x.dtype) if act_mode is None else act_mode
        if mode == MODE_BF16 and x.dtype != torch.bfloat16:
            raise ValueError(f"x: act_mode MODE_BF16 needs bfloat16 activations, found {x.dtype}")
        xin = x.contiguous() if mode == MODE_BF16 else x.to(torch.float32).contiguous()
        if out is not None and (out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous()):
            raise ValueError(f"out: expected a contiguous {x.dtype} tensor of shape {tuple(x.shape)}, found "
                             f"{out.dtype} {tuple(out.shape)}")
        res = out if out is not None and out.dtype == xin.dtype else torch.empty_like(xin)
        tw = topk_weights.to(torch.float32).contiguous()
        ids = topk_ids.to(torch.int32).contiguous()
        bad = ctypes.c_int64(0)
        ptr = _ptr
        # tokens are independent: at most MOE_CHUNK_TOKENS a call bounds the kernel's buffers
        for t0 in range(0, max(T, 1), MOE_CHUNK_TOKENS):
            n = min(MOE_CHUNK_TOKENS, T - t0)
            rc = self._fn(mode, ptr(xin[t0:]), ptr(res[t0:]), n, H, I, E, K, ptr(tw[t0:]), ptr(ids[t0:]), ptr(w13),
                          ptr(w13_scale), ptr(b13), ptr(w2), ptr(w2_scale), ptr(b2), float(alpha), float(limit),
                          ctypes.byref(bad))
            if rc == 1:
                raise ValueError(f"topk_ids: expert id {bad.value} outside [-1, {E}) (E = {E} local experts)")
            if rc != 0:
                raise RuntimeError(f"native MoE kernel returned {rc} (mode {mode}, features {self.features})")
        if out is not None:
            if res is not out:
                out.copy_(res)
            return out
        return res if res.dtype == x.dtype else res.to(x.dtype)


    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """torch.nn.functional.linear(x, weight, bias) for a bfloat16 weight [N, K], read in place:
        float32 math on the bf16 weights (x in float32: exact products; bf16 x: widened), float32
        sums, the result in x's dtype (float32 or bfloat16). `bias` (any float dtype) should be
        float32 already to avoid a conversion per call."""
        if weight.dtype != torch.bfloat16 or weight.dim() != 2:
            raise TypeError(f"weight: expected a 2-D bfloat16 tensor, found {weight.dtype} {tuple(weight.shape)}")
        if weight.device.type != "cpu" or not weight.is_contiguous():
            raise ValueError(f"weight: expected a contiguous CPU tensor, found {weight.device}, "
                             f"contiguous={weight.is_contiguous()}")
        N, K = weight.shape
        if x.shape[-1] != K:
            raise ValueError(f"x: expected last dimension {K} (the weight's K), found shape {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"x: expected float32 or bfloat16, found {x.dtype}")
        if bias is not None:
            if tuple(bias.shape) != (N,):
                raise ValueError(f"bias: expected shape ({N},), found {tuple(bias.shape)}")
            bias = bias.to(torch.float32).contiguous()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, K).contiguous()
        y = torch.empty(x2.shape[0], N, dtype=x.dtype)
        rc = self._linear(1 if x.dtype == torch.bfloat16 else 0, _ptr(x2), _ptr(weight), _ptr(bias), _ptr(y),
                          x2.shape[0], N, K)
        if rc != 0:
            raise RuntimeError(f"native linear kernel returned {rc}")
        return y.reshape(*lead, N)


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, found {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, found device {t.device}")
    if t.numel() != _prod(shape) or t.shape[:2] != shape[:2]:
        raise ValueError(f"{name}: expected shape {shape} (or [..., K/32, 16] blocks), found {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")


def _bias(name: str, b: torch.Tensor | None, shape: tuple) -> torch.Tensor | None:
    if b is None:
        return None
    if tuple(b.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, found {tuple(b.shape)}")
    return b.to(torch.float32).contiguous()  # no copy when it already is (prepare once at load)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


_LOADED: dict = {}


def load(cache_root: str | os.PathLike | None = None, march: str = "native",
         prefetch: str | None = None, emulate_amx: bool = False) -> NativeKernels:
    """Build if needed (once per machine and key, file-locked), load, and return the kernel.

    `march` is gcc's -march: "native" (the default: this CPU's ISA); the tests also build
    "x86-64-v3" (AVX2 path) and "x86-64" (scalar path) to check the fallbacks on an AVX-512 machine.
    `prefetch`: a key of PREFETCH_HINTS, None for default_prefetch() (results do not depend on it).
    `emulate_amx`: build the MoE's AMX path on a software model of the tile instructions (tests on
    CPUs without AMX; slow: never for serving)."""
    if prefetch is None:
        prefetch = default_prefetch()
    if prefetch not in PREFETCH_HINTS:
        raise ValueError(f"prefetch: expected one of {sorted(PREFETCH_HINTS)} or None, found {prefetch!r}")
    if sys.platform != "linux":
        raise NativeUnavailable(f"the native MoE kernel is built for Linux only, found {sys.platform}")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    directory = root / cache_key(march, prefetch, emulate_amx)
    if directory in _LOADED:
        return _LOADED[directory]
    lib = directory / LIB_NAME
    built = False
    if not lib.exists():
        lib, built = _build(directory, march, prefetch, emulate_amx)
    try:
        native = NativeKernels(lib)
    except OSError as e:
        raise NativeUnavailable(f"loading {lib} failed: {e}") from e
    native.built_here = built  # True when this process compiled it (tests check it happens once)
    native.prefetch = prefetch
    _LOADED[directory] = native
    return native
