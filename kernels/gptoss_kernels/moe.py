"""Public entry points of the fused MXFP4 MoE: `route`, `prepare_moe_weights`, `fused_moe`.

The Triton kernels live in `fused_moe_triton` and are imported on first use, so importing this module
(and `gptoss_kernels`) needs no triton.

Data flow of `fused_moe` (four launches, no host synchronisation, CUDA-graph capturable):
  1. align:  routed slots (token * top_k + j) sorted by expert into BLOCK_M-row blocks, on device;
             the same launch zeroes the float32 output accumulator (above 2048 slots: a few torch
             ops instead: sort, scatter, searchsorted, still without host synchronisation);
  2. gemm1:  gather x rows -> @ dequant(w13[e])^T + b13 -> clamped SwiGLU -> act [rows, I];
  3. gemm2:  act @ dequant(w2[e])^T + b2, times the routing weight, atomically added to out[token];
  4. cast:   float32 accumulator -> x's dtype (skipped when x is float32).
Every grid size depends only on shapes (T, top_k, E, H, I), never on the routing itself.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from .capability import DEQUANT_PLAIN, device_capability, kernel_variant
from .mxfp4 import BLOCK as MXFP4_BLOCK
from .reference import SWIGLU_ALPHA, SWIGLU_LIMIT


# tests only: set when the interpreter's inline-asm hook is replaced by an emulation of the
# dequantization PTX (tests/kernels/test_fused_moe_k16.py), so the PTX variants run there
_INTERPRETER_PTX = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    try:
        from . import fused_moe_triton
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "gptoss_kernels: the fused kernels need the `triton` package; install it, or use "
            "gptoss_kernels.moe_reference (plain torch) instead") from exc
    return fused_moe_triton


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"gptoss_kernels: Triton kernels need CUDA tensors (found a tensor on {t.device}); "
                "on the CPU use moe_reference, or set TRITON_INTERPRET=1 before importing triton to "
                "run them in Triton's (slow) interpreter")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --------------------------------------------------------------------------------------------- route
def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss's router in one kernel: top-k of the logits, then softmax over those k.

    router_logits: [T, E] (any float dtype). Returns (weights float32 [T, top_k], ids int32 [T, top_k]),
    ordered by descending logit. Ties go to the lowest expert index (the order of a stable
    descending sort, and of torch.topk on CUDA; torch.topk on the CPU orders ties its own way).
    """
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits: expected [T, E], found shape {tuple(router_logits.shape)}")
    T, E = router_logits.shape
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k: expected 1 <= top_k <= E={E}, found {top_k}")
    _check_device(router_logits)
    tk = _kernels()
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    weights = torch.empty(T, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int32, device=logits.device)
    if T == 0:
        return weights, ids
    e_p2 = _next_pow2(E)
    block_t = max(1, min(16, 4096 // e_p2))
    grid = (triton_cdiv(T, block_t),)
    tk._route_kernel[grid](logits, weights, ids, T, E, logits.stride(0), TOPK=top_k,
                           K_P2=_next_pow2(top_k), BLOCK_T=block_t, E_P2=e_p2)
    return weights, ids


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------------------- weights
@dataclasses.dataclass(frozen=True)
class MoEWeights:
    """MXFP4 expert weights in the layout the fused kernels read. Built once by `prepare_moe_weights`.

    Layout (all contiguous, on the weights' device):
      w13:        uint8 [E, 2I, H/2]   packed E2M1, two codes per byte, low nibble = even k;
                  rows interleave gate (even) and up (odd), as in the checkpoint.
      w13_scales: uint8 [E, 2I, H/32]  E8M0 scale of each 32 consecutive k.
      w13_bias:   float32 [E, 2I] or None.
      w2:         uint8 [E, H, I/2];  w2_scales uint8 [E, H, I/32];  w2_bias float32 [E, H] or None.
    Why this layout: each output row's K bytes are contiguous, so a [BLOCK_N, BLOCK_K/2] weight tile
    is BLOCK_N runs of >= 16 contiguous bytes (full-width vector loads), nibbles unpack along K in
    registers with no shuffles, and a gate/up pair always falls in the same tile (BLOCK_N even), so
    SwiGLU fits in GEMM1's epilogue. It is the checkpoint's own byte order: preparing it costs no copy
    when the tensors already are contiguous (vLLM's [E, N, K/2] parameters are), which matters at
    load time for 120b (about 60 GB of experts).
    """

    w13: torch.Tensor
    w13_scales: torch.Tensor
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_scales: torch.Tensor
    w2_bias: torch.Tensor | None
    # byte order of w13 / w2 inside each 32-element block: "checkpoint" (byte i = elements 2i, 2i+1,
    # low nibble first) or "k16" (byte i = elements i and i + 16; `permute_k16`), which the GEMMs
    # read without re-ordering the dequantized tile (fused_moe_triton._mxfp4_halves)
    layout: str = "checkpoint"

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.w2.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2

    def expert_bytes(self) -> int:
        """Bytes the kernels read for one expert: both matrices, their scales and biases."""
        n = (self.w13[0].numel() + self.w13_scales[0].numel() + self.w2[0].numel()
             + self.w2_scales[0].numel())
        for b in (self.w13_bias, self.w2_bias):
            if b is not None:
                n += b[0].numel() * b.element_size()
        return n


def _as_packed(name: str, blocks: torch.Tensor, scales: torch.Tensor, E: int | None) -> torch.Tensor:
    """[E, N, K/32, 16] or [E, N, K/2] uint8 -> contiguous [E, N, K/2] (a view when possible)."""
    if blocks.dtype != torch.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (packed E2M1), found {blocks.dtype}")
    if scales.dtype != torch.uint8:
        raise TypeError(f"{name}_scales: expected dtype uint8 (E8M0), found {scales.dtype}")
    if scales.dim() != 3:
        raise ValueError(f"{name}_scales: expected [E, N, K/32], found shape {tuple(scales.shape)}")
    e, n, kb = scales.shape
    if blocks.dim() == 4:
        expected = (e, n, kb, 16)
    elif blocks.dim() == 3:
        expected = (e, n, kb * 16)
    else:
        expected = None
    if expected is None or tuple(blocks.shape) != expected:
        raise ValueError(
            f"{name}: expected [E, N, K/32, 16] = {(e, n, kb, 16)} or [E, N, K/2] = {(e, n, kb * 16)} "
            f"to match {name}_scales {tuple(scales.shape)}, found {tuple(blocks.shape)}")
    if E is not None and e != E:
        raise ValueError(f"{name}: expected {E} experts (as w13), found {e}")
    if blocks.device != scales.device:
        raise ValueError(f"{name} is on {blocks.device} but {name}_scales on {scales.device}")
    return blocks.reshape(e, n, kb * 16).contiguous()


def _as_bias(name: str, bias: torch.Tensor | None, shape: tuple[int, int], device) -> torch.Tensor | None:
    if bias is None:
        return None
    if tuple(bias.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, found {tuple(bias.shape)}")
    if not bias.is_floating_point():
        raise TypeError(f"{name}: expected a float dtype, found {bias.dtype}")
    return bias.to(device=device, dtype=torch.float32).contiguous()


LAYOUTS = ("checkpoint", "k16")
LAYOUT_ENV = "GPTOSS_KERNELS_WEIGHT_LAYOUT"


def permute_k16(blocks: torch.Tensor, out: torch.Tensor | None = None, chunk: int = 1) -> torch.Tensor:
    """Checkpoint byte order -> K16 order, per 32-element block (16 bytes): byte j of the result
    holds element j in its low nibble and element j + 16 in its high nibble (the checkpoint's byte
    i holds elements 2i and 2i + 1). Same shape and dtype; `out` may be `blocks` itself (in place,
    `chunk` experts (leading index) at a time, so the extra memory is a few experts' codes)."""
    if blocks.dtype != torch.uint8 or blocks.shape[-1] % 16:
        raise ValueError(f"blocks: expected uint8 [..., K/2] with K a multiple of 32, found "
                         f"{blocks.dtype} {tuple(blocks.shape)}")
    out = torch.empty_like(blocks) if out is None else out
    lead = blocks.shape[0] if blocks.dim() > 1 else 1
    src, dst = blocks.reshape(lead, -1, 16), out.view(lead, -1, 16)
    for e in range(0, lead, chunk):
        b = src[e:e + chunk]
        codes = torch.stack((b & 0xF, b >> 4), dim=-1).flatten(-2)  # [c, nb, 32] in k order
        dst[e:e + chunk] = codes[..., :16] | (codes[..., 16:] << 4)
    return out


def unpermute_k16(blocks: torch.Tensor) -> torch.Tensor:
    """The inverse of `permute_k16` (tests, and reading a K16 tensor back as a checkpoint)."""
    b = blocks.reshape(*blocks.shape[:-1], -1, 16)
    codes = torch.cat((b & 0xF, b >> 4), dim=-1)  # [..., nb, 32] in k order
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).reshape(blocks.shape)


def prepare_moe_weights(w13_blocks, w13_scales, w13_bias, w2_blocks, w2_scales, w2_bias,
                        layout: str | None = None, inplace: bool = False) -> MoEWeights:
    """Checkpoint (or vLLM parameter) MXFP4 expert tensors -> `MoEWeights` for `fused_moe`. Once, at load.

    w13_blocks: uint8 [E, 2I, H/32, 16] or [E, 2I, H/2]; w13_scales: uint8 [E, 2I, H/32];
    w13_bias: [E, 2I] float (bf16/fp16/fp32) or None. w2: the same with [E, H, I/32(, 16)] and [E, H].
    H and I must be multiples of 32 (one E8M0 scale per 32 elements).
    layout: "checkpoint" (no copy when the blocks are contiguous) or "k16" (`permute_k16`: the byte
    order the decode-oriented K loop reads without shuffling the dequantized tile; a copy of the
    blocks, or with `inplace=True` written back into the given (contiguous) block tensors, which
    then hold the K16 order). None: $GPTOSS_KERNELS_WEIGHT_LAYOUT, else "checkpoint".
    """
    layout = layout or os.environ.get(LAYOUT_ENV, "checkpoint")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, found {layout!r}")
    w13 = _as_packed("w13", w13_blocks, w13_scales, None)
    E, N13, _ = w13.shape
    H = w13_scales.shape[2] * MXFP4_BLOCK
    if N13 % 2:
        raise ValueError(f"w13: expected an even number of rows (gate/up interleaved), found {N13}")
    I = N13 // 2
    w2 = _as_packed("w2", w2_blocks, w2_scales, E)
    if tuple(w2_scales.shape) != (E, H, I // MXFP4_BLOCK) or I % MXFP4_BLOCK:
        raise ValueError(
            f"w2_scales: expected [E, H, I/32] = {(E, H, I // MXFP4_BLOCK)} for H={H}, I={I} "
            f"(I a multiple of 32), found {tuple(w2_scales.shape)}")
    if w2.device != w13.device:
        raise ValueError(f"w2 is on {w2.device} but w13 on {w13.device}")
    if layout == "k16":
        if inplace and not (w13.data_ptr() == w13_blocks.data_ptr() and w2.data_ptr() == w2_blocks.data_ptr()):
            raise ValueError("inplace=True needs contiguous w13_blocks and w2_blocks")
        w13 = permute_k16(w13, out=w13 if inplace else None)
        w2 = permute_k16(w2, out=w2 if inplace else None)
    return MoEWeights(
        w13=w13, w13_scales=w13_scales.contiguous(), w13_bias=_as_bias("w13_bias", w13_bias, (E, N13), w13.device),
        w2=w2, w2_scales=w2_scales.contiguous(), w2_bias=_as_bias("w2_bias", w2_bias, (E, H), w13.device),
        layout=layout)


# --------------------------------------------------------------------------------------- fused_moe
@dataclasses.dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    swap_ab: bool = False  # compute (w @ x^T)^T: weights as the MMA's left operand
    split_k: int = 1  # GEMM2 only: K ranges per output tile, summed by the same atomic add
    # E2M1 dequantization (capability.DEQUANT_*): plain, or inline PTX on bf16x2 (sm_90: mul,
    # sm_80..89: fma); chosen per device and dtype by capability.kernel_variant
    dequant: int = DEQUANT_PLAIN
    evict_w: bool = False  # weight/scale loads evict-first (decode: each weight byte is read once)
    # 0: one program per output tile. n > 0: a persistent grid of n programs per SM (at most one per
    # tile), each looping over tiles in the grouped order, so that the programs resident at one time
    # hold neighbouring row blocks of the same weight column (prefill: each dequantized weight tile,
    # fetched once into L2, serves their rows) and no CTA is launched or scheduled twice
    persistent: int = 0


def pick_config(num_tokens: int, top_k: int, num_experts: int, dtype: torch.dtype = torch.bfloat16,
                capability: tuple[int, int] | None = None) -> TileConfig:
    """The tile shapes and dequantization `fused_moe` launches for these shapes on a GPU of
    `capability` (None: Triton's interpreter) with activations of `dtype`.

    Tiles go by the expected rows per expert (T * top_k / E), a function of shapes only. Decode (a
    handful of rows per expert) is bound by reading weights: narrow row blocks (16, the smallest
    tl.dot) and narrow column tiles so that even 4 active experts spread over all SMs (120b GEMM1 at
    T=1: 4 experts x 5760/64 = 360 programs). Prefill is bound by the matrix units: wide tiles to
    reuse each dequantized weight tile over many rows. The dequantization is capability.py's rule
    (inline PTX for bf16 on sm_80+: on an H200 it took 120b T=1 from 88.2 to 78.7 us and T=8192 from
    207 to 270 TFLOP/s); raises for a GPU/dtype the kernels do not support, with the reason.
    """
    variant = kernel_variant(None if _interpreting() else capability, dtype)
    if not variant.supported:
        raise RuntimeError(f"gptoss_kernels: {variant.reason}")
    rows = -(-num_tokens * top_k // max(1, num_experts))
    return dataclasses.replace(_pick_config(rows, num_tokens * top_k), dequant=variant.dequant)


def _pick_config(rows: int, slots: int) -> TileConfig:
    if _interpreting():  # the interpreter is slow: keep tiles small, shapes in tests are small
        return TileConfig(16, 32, 32, 4, 1, 4)
    # measured on an H200, 120b layer, fast dequantization (BENCHMARKS.md, run 5): T=1 16x64x256
    # with GEMM2 split 4 ways 65.2 us (16x32x256: 78.9); T=16 split 2 ways 515.7 us (16x32x256
    # split 4: 725.8); T=4096 64x128x64 with 4 warps 3.58 ms (128x128x64 with 8 warps: 4.01)
    if rows <= 16:
        return TileConfig(16, 64, 256, 4, 3, split_k=4 if slots <= 16 else 2, evict_w=True)
    if rows <= 48:
        return TileConfig(32, 64, 128, 4, 4)
    # the persistent grid (TileConfig.persistent, issue 14 part 3) is built and checked but not yet
    # timed on a GPU: it costs the looping GEMM2 ~50 registers (3 -> 2 resident CTAs an SM, aot_decode.py),
    # so it becomes the default only where benchmarks/gpu_moe.py --variants measures it faster
    return TileConfig(64, 128, 64, 4, 4)


def _dot_kind(dtype: torch.dtype) -> int:
    tk = _kernels()
    if dtype == torch.bfloat16:
        # the interpreter's bf16 x bf16 tl.dot is broken: upcast (exact) there
        return tk.DOT_F32 if _interpreting() else tk.DOT_BF16
    if dtype == torch.float16:
        return tk.DOT_F16
    return tk.DOT_F32


def fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, prepared: MoEWeights,
              alpha: float = SWIGLU_ALPHA, limit: float = SWIGLU_LIMIT,
              config: TileConfig | None = None, out: torch.Tensor | None = None,
              _stages: int = 4) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) -> [T, H] in x's dtype.

    x: [T, H] bf16/fp16/fp32; topk_weights: [T, k] float; topk_ids: [T, k] int (an id of -1, or
    any id outside [0, E), contributes nothing: experts not on this rank under expert parallelism).
    The expert is gpt-oss's: h = x @ w13^T + b13 (rows interleaved gate/up), clamped SwiGLU with
    `alpha` and `limit`, then @ w2^T + b2. Matches `moe_reference` up to the rounding of x's dtype
    (the intermediate activation is stored in x's dtype). No host synchronisation.
    `config` overrides the tile shapes chosen by `pick_config` (benchmarks, tuning).
    `out`: optional [T, H] buffer in x's dtype to write into (every element is overwritten).
    `_stages` (benchmark breakdown only): stop after align (1), gemm1 (2) or gemm2 (3).
    """
    if x.dim() != 2:
        raise ValueError(f"x: expected [T, H], found shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x: expected bf16, fp16 or fp32, found {x.dtype}")
    T, H = x.shape
    E, I = prepared.num_experts, prepared.intermediate_size
    if H != prepared.hidden_size:
        raise ValueError(f"x: hidden size {H} does not match the experts' hidden size {prepared.hidden_size}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"topk_weights and topk_ids: expected both [T={T}, k], found {tuple(topk_weights.shape)} "
            f"and {tuple(topk_ids.shape)}")
    if topk_ids.dtype.is_floating_point:
        raise TypeError(f"topk_ids: expected an integer dtype, found {topk_ids.dtype}")
    _check_device(x, prepared.w13)
    if x.device != prepared.w13.device:
        raise ValueError(f"x is on {x.device} but the expert weights on {prepared.w13.device}")
    tk = _kernels()
    top_k = topk_ids.shape[1]
    M = T * top_k
    out_dtype = x.dtype
    if out is not None:
        if tuple(out.shape) != (T, H) or out.dtype != out_dtype or out.device != x.device:
            raise ValueError(
                f"out: expected [{T}, {H}] {out_dtype} on {x.device}, found {tuple(out.shape)} "
                f"{out.dtype} on {out.device}")
    if T == 0:
        return out if out is not None else torch.empty(0, H, dtype=out_dtype, device=x.device)
    cfg = config or pick_config(T, top_k, E, x.dtype, device_capability(x.device))
    if cfg.dequant != DEQUANT_PLAIN and (x.dtype != torch.bfloat16 or (_interpreting() and not _INTERPRETER_PTX)):
        raise ValueError(f"config: inline-PTX dequantization ({cfg.dequant}) needs bf16 activations on a "
                         f"GPU, found {x.dtype}{' in the interpreter' if _interpreting() else ''}")
    bm = cfg.block_m

    x = x if x.stride(-1) == 1 else x.contiguous()
    tw = topk_weights.to(torch.float32).contiguous().view(-1)
    # float32 output: accumulate in place; otherwise in a float32 buffer cast at the end
    direct = out is not None and out_dtype == torch.float32 and out.is_contiguous()
    acc = out if direct else torch.empty(T, H, dtype=torch.float32, device=x.device)
    sorted_ids, block_expert = align_tokens(topk_ids, E, bm, zero=acc)
    max_blocks = block_expert.shape[0]
    if _stages <= 1:
        return acc

    act_dtype = x.dtype
    act = torch.empty(max_blocks * bm, I, dtype=act_dtype, device=x.device)
    dot = _dot_kind(x.dtype)
    w = prepared
    b13 = w.w13_bias if w.w13_bias is not None else w.w13_scales  # dummy pointer when HAS_BIAS=False
    b2 = w.w2_bias if w.w2_bias is not None else w.w2_scales
    n1 = 2 * I
    grid1 = (_programs(max_blocks * triton_cdiv(n1, cfg.block_n), cfg.persistent, x.device),)
    tk._gemm1_kernel[grid1](
        x, w.w13, w.w13_scales, b13, act, sorted_ids, block_expert,
        M, n1, H, max_blocks,
        x.stride(0), w.w13.stride(0), w.w13.stride(1), w.w13_scales.stride(0), w.w13_scales.stride(1),
        b13.stride(0), act.stride(0), float(alpha), float(limit),
        TOPK=top_k, HAS_BIAS=w.w13_bias is not None, DOT=dot,
        BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=H % cfg.block_k == 0, SWAP_AB=cfg.swap_ab, DEQUANT=cfg.dequant,
        K16=w.layout == "k16", EVICT_W=cfg.evict_w, PERSISTENT=cfg.persistent > 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if _stages <= 2:
        return acc
    grid2 = (_programs(max_blocks * triton_cdiv(H, cfg.block_n), cfg.persistent, x.device), cfg.split_k)
    tk._gemm2_kernel[grid2](
        act, w.w2, w.w2_scales, b2, tw, acc, sorted_ids, block_expert,
        M, H, I, max_blocks,
        act.stride(0), w.w2.stride(0), w.w2.stride(1), w.w2_scales.stride(0), w.w2_scales.stride(1),
        b2.stride(0), acc.stride(0),
        TOPK=top_k, HAS_BIAS=w.w2_bias is not None, DOT=dot,
        BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=I % cfg.block_k == 0 and cfg.split_k == 1, SWAP_AB=cfg.swap_ab, SPLIT_K=cfg.split_k, DEQUANT=cfg.dequant,
        K16=w.layout == "k16", EVICT_W=cfg.evict_w, PERSISTENT=cfg.persistent > 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if _stages <= 3:
        return acc
    if out is not None:
        if not direct:
            out.copy_(acc)
        return out
    return acc if out_dtype == torch.float32 else acc.to(out_dtype)


# Triton's interpreter runs programs one after another: a persistent grid of 2 "SMs" there makes
# every program loop over several tiles, which is what the CPU tests check
_INTERPRETER_SMS = 2
_SM_COUNT: dict[int, int] = {}


def _programs(tiles: int, per_sm: int, device: torch.device) -> int:
    """Grid size of one GEMM launch: `tiles`, or for a persistent config at most `per_sm` programs
    per SM of `device` (a static number: the launch stays CUDA-graph capturable)."""
    if per_sm <= 0:
        return tiles
    if _interpreting() or device.type != "cuda":
        sms = _INTERPRETER_SMS
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _SM_COUNT:
            _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
        sms = _SM_COUNT[index]
    return max(1, min(tiles, per_sm * sms))


def max_aligned_blocks(num_slots: int, num_experts: int, block_m: int) -> int:
    """Static bound on sum_e ceil(c_e / block_m) when sum_e c_e = num_slots over at most
    min(num_slots, num_experts) used experts: the grid size that needs no look at the routing."""
    return -(-(num_slots + min(num_slots, num_experts) * (block_m - 1)) // block_m)


def align_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                 zero: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the routed slots (token * k + j) by expert into blocks of `block_m` rows, on device.

    Returns (sorted_ids int32 [max_blocks * block_m], block_expert int32 [max_blocks]):
    block b holds rows [b * block_m, (b + 1) * block_m) of expert block_expert[b] (-1: unused block);
    a row holds a slot index, or T * k for padding. Ids outside [0, num_experts) are dropped.
    Within an expert, slots keep their original order. `zero`, if given, is a float32 tensor that
    the same launch fills with zeros (the output accumulator of fused_moe).
    """
    _check_device(topk_ids)
    ids = topk_ids.to(torch.int32).contiguous().view(-1)
    M = ids.numel()
    max_blocks = max_aligned_blocks(M, num_experts, block_m)
    how = os.environ.get("GPTOSS_KERNELS_ALIGN", "auto")
    if how == "torch" or (how == "auto" and M > _ALIGN_TRITON_MAX_SLOTS):
        if zero is not None:
            zero.zero_()
        return _align_torch(ids, num_experts, block_m, max_blocks)
    tk = _kernels()
    sorted_ids = torch.empty(max_blocks * block_m, dtype=torch.int32, device=ids.device)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=ids.device)
    zblock = 4096
    n_zero = 0 if zero is None else zero.numel()
    if zero is not None and (zero.dtype != torch.float32 or not zero.is_contiguous()):
        raise ValueError("zero: expected a contiguous float32 tensor")
    tk._align_kernel[(1 + triton_cdiv(n_zero, zblock),)](
        ids, sorted_ids, block_expert, zero if zero is not None else sorted_ids, M, num_experts,
        max_blocks, n_zero, BLOCK_M=block_m, E_P2=_next_pow2(num_experts),
        CHUNK=64 if num_experts >= 64 else 128, ZBLOCK=zblock, CB=max(1, 4096 // max(block_m, _next_pow2(num_experts))))
    return sorted_ids, block_expert


# the Triton align kernel runs in one program: fine for decode, slow past a few thousand slots
# (603 us at 16384 slots on an H200; the torch path took 169 us there), so torch's sort takes over
_ALIGN_TRITON_MAX_SLOTS = 2048


def _align_torch(ids: torch.Tensor, E: int, bm: int, max_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result as the Triton align kernel from torch ops (sort, scatter, searchsorted):
    no host synchronisation, so it can be captured in a CUDA graph."""
    M = ids.numel()
    dev = ids.device
    key = ids.long()
    key = torch.where((key >= 0) & (key < E), key, E)  # E: dropped slots
    counts = torch.zeros(E + 1, dtype=torch.long, device=dev).scatter_add_(0, key, torch.ones_like(key))
    nblocks = (counts[:E] + bm - 1) // bm
    block_end = torch.cumsum(nblocks, 0)
    max_rows = max_blocks * bm
    row_start = torch.cat([(block_end - nblocks) * bm, torch.full((1,), max_rows, dtype=torch.long, device=dev)])
    sorted_key, order = torch.sort(key, stable=True)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(M, device=dev) - first[sorted_key]
    dest = row_start[sorted_key] + torch.where(sorted_key < E, rank, 0)  # dropped: all to row max_rows
    sorted_ids = torch.full((max_rows + 1,), M, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    owner = torch.searchsorted(block_end, torch.arange(max_blocks, device=dev), right=True)
    block_expert = torch.where(owner < E, owner, -1).to(torch.int32)
    return sorted_ids[:max_rows], block_expert
