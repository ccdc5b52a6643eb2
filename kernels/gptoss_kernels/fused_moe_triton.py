"""The Triton kernels behind `route` and `fused_moe`. Imported lazily: it needs triton.

Four kernels, launched in this order by `fused_moe`:
  _align_kernel   one program sorts the routed slots by expert into BLOCK_M-row blocks (the other
                  programs of the same launch zero the float32 output accumulator);
  _gemm1_kernel   gathers token rows of x, multiplies by the MXFP4 w13 dequantized in registers,
                  adds the bias, applies the clamped SwiGLU and writes one row per routed slot;
  _gemm2_kernel   multiplies those rows by w2 (MXFP4, dequantized in registers), adds the bias,
                  scales by the routing weight and atomically adds into the token's output row
                  (the top-k reduction).
Every size the host needs is a static bound (no device->host reads), so the sequence can be captured
in a CUDA graph.

`INTERPRET` kernels (TRITON_INTERPRET=1, the CPU tests) upcast bf16 dot operands to float32: the
interpreter's bf16 x bf16 tl.dot returns garbage (see shared/research/environment.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

# dot operand kinds (constexpr)
DOT_F32 = 0
DOT_BF16 = 1
DOT_F16 = 2


@triton.jit
def _route_kernel(logits_ptr, w_ptr, ids_ptr, T, E, stride_t,
                  TOPK: tl.constexpr, K_P2: tl.constexpr, BLOCK_T: tl.constexpr, E_P2: tl.constexpr):
    """top-k by repeated arg-max (lowest index wins a tie), then softmax over the k selected."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, E_P2)
    rmask = rows < T
    mask = rmask[:, None] & (cols[None, :] < E)
    v = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :], mask=mask,
                other=float("-inf")).to(tl.float32)
    # padding columns are never chosen
    taken = ((cols[None, :] >= E) | (rows[:, None] < 0)).to(tl.int32)
    kcols = tl.arange(0, K_P2)
    top_v = tl.full([BLOCK_T, K_P2], float("-inf"), tl.float32)
    top_i = tl.zeros([BLOCK_T, K_P2], tl.int32)
    for j in tl.static_range(TOPK):
        cand = tl.where(taken != 0, float("-inf"), v)
        mx = tl.max(cand, axis=1)
        hit = (cand == mx[:, None]) & (taken == 0)
        idx = tl.min(tl.where(hit, cols[None, :], E_P2), axis=1)
        taken = tl.where(cols[None, :] == idx[:, None], 1, taken)
        top_v = tl.where(kcols[None, :] == j, mx[:, None], top_v)
        top_i = tl.where(kcols[None, :] == j, idx[:, None], top_i)
    kmask = kcols[None, :] < TOPK
    first = tl.max(tl.where(kmask, top_v, float("-inf")), axis=1)
    first = tl.where(first == float("-inf"), 0.0, first)  # rows past T: avoid -inf - -inf
    p = tl.where(kmask, tl.exp(top_v - first[:, None]), 0.0)
    p = p / tl.where(rmask, tl.sum(p, axis=1), 1.0)[:, None]
    out_off = rows[:, None] * TOPK + kcols[None, :]
    omask = rmask[:, None] & kmask
    tl.store(w_ptr + out_off, p, mask=omask)
    tl.store(ids_ptr + out_off, top_i, mask=omask)


@triton.jit
def _align_kernel(ids_ptr, sorted_ptr, block_expert_ptr, zero_ptr, M, E, max_blocks, n_zero,
                  BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr, ZBLOCK: tl.constexpr,
                  CB: tl.constexpr):
    """Program 0: sort the M routed slots by expert. Programs 1..: zero `zero_ptr[:n_zero]`.

    Output layout: expert e owns blocks [block_start[e], block_end[e]) of BLOCK_M rows each;
    sorted_ptr[row] is the slot index (token * top_k + j) or M for a padding row; block_expert_ptr[b]
    is the owning expert or -1 for a block past the last used one. Slots whose id is outside
    [0, E) (-1 under expert parallelism) are left out.
    """
    pid = tl.program_id(0)
    if pid > 0:
        zoffs = (pid - 1).to(tl.int64) * ZBLOCK + tl.arange(0, ZBLOCK)
        tl.store(zero_ptr + zoffs, tl.zeros([ZBLOCK], tl.float32), mask=zoffs < n_zero)
    else:
        e_offs = tl.arange(0, E_P2)
        counts = tl.zeros([E_P2], tl.int32)
        for start in range(0, M, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            ids = tl.load(ids_ptr + offs, mask=offs < M, other=-1)
            ids = tl.where((ids >= 0) & (ids < E), ids, -1)
            counts += tl.sum((ids[:, None] == e_offs[None, :]).to(tl.int32), axis=0)
        nblocks = (counts + BLOCK_M - 1) // BLOCK_M
        block_end = tl.cumsum(nblocks, axis=0)
        block_start = block_end - nblocks
        # scatter every valid slot to its row; rank inside an expert = running count + in-chunk prefix
        running = block_start * BLOCK_M
        for start in range(0, M, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            ids = tl.load(ids_ptr + offs, mask=offs < M, other=-1)
            ids = tl.where((ids >= 0) & (ids < E), ids, -1)
            onehot = (ids[:, None] == e_offs[None, :]).to(tl.int32)
            incl = tl.cumsum(onehot, axis=0)
            dest = tl.sum(onehot * (running[None, :] + incl - 1), axis=1)
            tl.store(sorted_ptr + dest, offs, mask=(ids >= 0) & (offs < M))
            running += tl.sum(onehot, axis=0)
        # padding rows (never the rows written above, so no ordering between the two stores is needed)
        # and the expert of every block; CHUNK // BLOCK_M blocks (at least one) per step
        for b0 in range(0, max_blocks, CB):
            b = b0 + tl.arange(0, CB)
            owner = tl.sum((block_end[None, :] <= b[:, None]).to(tl.int32), axis=1)
            sel = e_offs[None, :] == owner[:, None]
            used = tl.sum(tl.where(sel, counts[None, :], 0), axis=1)
            first_row = tl.sum(tl.where(sel, block_start[None, :], 0), axis=1) * BLOCK_M
            in_range = b < max_blocks
            tl.store(block_expert_ptr + b, tl.where(owner < E, owner, -1), mask=in_range)
            r = b[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
            pad = (owner >= E)[:, None] | ((r - first_row[:, None]) >= used[:, None])
            tl.store(sorted_ptr + r, tl.full([CB, BLOCK_M], 0, tl.int32) + M, mask=pad & in_range[:, None])


@triton.jit
def _mxfp4_tile(wb, sc, BN: tl.constexpr, BK: tl.constexpr):
    """uint8 [BN, BK/2] packed E2M1 (low nibble = even k) + uint8 [BN, BK/32] E8M0 -> float32 [BN, BK].

    E2M1 code -> fp16 bits: magnitude bits (e e m) go to bits 11..9, sign to bit 15. As fp16 that is
    the E2M1 value times 2**-14 (e = 0, m = 1 lands on the fp16 subnormal 2**-15, i.e. 0.5 * 2**-14),
    so the 2**14 is folded into the E8M0 scale built directly as float32 bits: (s + 14) << 23.
    Exact for scales s <= 240 (|w| < 2**113); s = 255 (NaN in the OCP spec) is not supported.
    """
    lo = wb & 0xF
    hi = wb >> 4
    codes = tl.reshape(tl.join(lo, hi), [BN, BK]).to(tl.int32)
    bits = (((codes & 0x7) << 9) | ((codes & 0x8) << 12)).to(tl.uint16)
    v = bits.to(tl.float16, bitcast=True).to(tl.float32)
    scale = ((sc.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], [BN, BK // 32, 32]), [BN, BK])
    return v * scale


# 4 packed bytes (8 E2M1 codes) -> 8 bf16 in two bf16x2 pairs per nibble half. prmt moves byte 0 and
# byte 1 to bytes 1 and 3 of a word, so each byte's high nibble sits at bits 12..15 / 28..31, the
# sign + exponent-msb position of a bf16 pair: (q & 0x80008000) | ((q & 0x70007000) >> 6) is then
# E2M1 * 2**-126 in bf16 (the 0.5 code lands on a bf16 subnormal, which bf16 arithmetic keeps).
# The low nibbles get there after q << 4. Two exact bf16x2 products apply 2**126 and the scale.
# The product is written once, as {MUL}: `mul.rn.bf16x2 d, a, b` exists from sm_90 on; sm_80..89
# have only the bf16x2 FMA, so there it is `fma.rn.bf16x2 d, a, b, -0.0` (the same value: adding
# -0.0 changes no product, and keeps the sign of a zero one). capability.py says which runs where.
_E2M1X8_TEMPLATE = """
{
.reg .b32 q, u, t, r, c, z;
mov.b32 c, 0x7E807E80;
mov.b32 z, 0x80008000;
prmt.b32 q, $4, 0, 0x1404;
and.b32 t, q, 0x80008000; and.b32 r, q, 0x70007000; shr.b32 r, r, 6; or.b32 r, r, t;
{MUL(r, r, c)} {MUL($2, r, $5)}
shl.b32 u, q, 4;
and.b32 t, u, 0x80008000; and.b32 r, u, 0x70007000; shr.b32 r, r, 6; or.b32 r, r, t;
{MUL(r, r, c)} {MUL($0, r, $5)}
prmt.b32 q, $4, 0, 0x3424;
and.b32 t, q, 0x80008000; and.b32 r, q, 0x70007000; shr.b32 r, r, 6; or.b32 r, r, t;
{MUL(r, r, c)} {MUL($3, r, $6)}
shl.b32 u, q, 4;
and.b32 t, u, 0x80008000; and.b32 r, u, 0x70007000; shr.b32 r, r, 6; or.b32 r, r, t;
{MUL(r, r, c)} {MUL($1, r, $6)}
}
"""


def _e2m1x8_asm(product) -> str:
    import re

    return re.sub(r"\{MUL\((\S+), (\S+), (\S+)\)\}", lambda m: product(*m.groups()), _E2M1X8_TEMPLATE)


_E2M1X8_ASM_MUL = tl.constexpr(_e2m1x8_asm(lambda d, a, b: f"mul.rn.bf16x2 {d}, {a}, {b};"))
_E2M1X8_ASM_FMA = tl.constexpr(_e2m1x8_asm(lambda d, a, b: f"fma.rn.bf16x2 {d}, {a}, {b}, z;"))


@triton.jit
def _mxfp4_tile_bf16_asm(wb, sc, BN: tl.constexpr, BK: tl.constexpr, USE_FMA: tl.constexpr):
    """GPU-only (inline PTX: sm_90+, or sm_80+ with USE_FMA) version of `_mxfp4_tile` that returns
    bf16 [BN, BK] directly, working on packed bytes: about 3.5 instructions per element instead of
    about 10. Exact for every scale byte except 255 (NaN in the OCP spec; gives inf here). The
    interpreter cannot run inline PTX: tests/kernels/test_dequant_bits.py replays the bit logic in
    numpy against `dequantize` for every byte and scale, and the kernel was checked against
    `moe_reference` on an H200 (BENCHMARKS.md)."""
    s = sc.to(tl.int32)
    sbits = tl.where(s == 0, 0x40, s << 7).to(tl.int16).to(tl.bfloat16, bitcast=True)  # 2**(s-127)
    sbits = tl.reshape(tl.broadcast_to(sbits[:, :, None], [BN, BK // 32, 16]), [BN, BK // 2])
    if USE_FMA:
        lo, hi = tl.inline_asm_elementwise(_E2M1X8_ASM_FMA, "=r,=r,=r,=r,r,r,r", [wb, sbits],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        lo, hi = tl.inline_asm_elementwise(_E2M1X8_ASM_MUL, "=r,=r,=r,=r,r,r,r", [wb, sbits],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    return tl.reshape(tl.join(lo, hi), [BN, BK])


@triton.jit
def _mxfp4_halves(wb, sc, BN: tl.constexpr, BK: tl.constexpr, DEQUANT: tl.constexpr):
    """The K16 layout (`moe.permute_k16`): byte j of a 32-element block holds element j (low
    nibble) and element j + 16 (high nibble). uint8 [BN, BK/2] + E8M0 [BN, BK/32] -> (lo, hi), each
    [BN, BK/2]: lo[:, j] is element 32 * (j // 16) + j % 16 of the tile, hi[:, j] the one 16 after
    it, and both share scale j // 16. The nibbles are dequantized where they lie: no join, no
    reshape of the weight tile, so the two halves go to two dots as they are (the activations are
    loaded in the same order, see `_mxfp4_k_loop`). DEQUANT 1/2: the inline PTX of
    `_mxfp4_tile_bf16_asm` (it already returns low / high nibbles apart), 0: plain (float32)."""
    if DEQUANT != 0:
        s = sc.to(tl.int32)
        sbits = tl.where(s == 0, 0x40, s << 7).to(tl.int16).to(tl.bfloat16, bitcast=True)
        sbits = tl.reshape(tl.broadcast_to(sbits[:, :, None], [BN, BK // 32, 16]), [BN, BK // 2])
        if DEQUANT == 2:
            lo, hi = tl.inline_asm_elementwise(_E2M1X8_ASM_FMA, "=r,=r,=r,=r,r,r,r", [wb, sbits],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(_E2M1X8_ASM_MUL, "=r,=r,=r,=r,r,r,r", [wb, sbits],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        scale = ((sc.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)
        scale = tl.reshape(tl.broadcast_to(scale[:, :, None], [BN, BK // 32, 16]), [BN, BK // 2])
        lo_c = (wb & 0xF).to(tl.int32)
        hi_c = (wb >> 4).to(tl.int32)
        lo = (((lo_c & 0x7) << 9) | ((lo_c & 0x8) << 12)).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (((hi_c & 0x7) << 9) | ((hi_c & 0x8) << 12)).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        lo = lo * scale
        hi = hi * scale
    return lo, hi


@triton.jit
def _mxfp4_k_loop(a_rows, a_ok, w_rows, s_rows, n_ok, k_begin, k_end,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                  EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr, DEQUANT: tl.constexpr, K16: tl.constexpr,
                  EVICT_W: tl.constexpr):
    """The K loop both GEMMs run: acc += a[rows, k] @ dequant(w[n, k])^T over k in [k_begin, k_end).

    a_rows [BLOCK_M, 1] / w_rows, s_rows [BLOCK_N, 1]: row pointers (activations, packed E2M1
    bytes, E8M0 scales); a_ok / n_ok: which rows are real. k_begin, k_end: multiples of 32
    (k_begin of BLOCK_K). Returns float32 [BLOCK_M, BLOCK_N], or [BLOCK_N, BLOCK_M] with SWAP_AB
    (the dequantized weight tile is the MMA's left operand, the few tokens its narrow N side).
    K16: the weights are in the K16 layout and each K step is two dots on the nibble halves
    (`_mxfp4_halves`); otherwise the checkpoint layout, dequantized into one [BLOCK_N, BLOCK_K]
    tile (the nibbles joined back into k order). EVICT_W: weight and scale loads marked
    evict-first (decode: each weight byte is read once, keep L2 for the activations).
    """
    if SWAP_AB:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    offs_kb = tl.arange(0, BLOCK_K // 2)
    offs_ks = tl.arange(0, BLOCK_K // 32)
    if K16:
        # element of tile column j of the low half: 32 * (j // 16) + j % 16 (runs of 16, 32 bytes)
        offs_a = (offs_kb // 16) * 32 + offs_kb % 16
    else:
        offs_a = tl.arange(0, BLOCK_K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            wmask = n_ok
            smask = n_ok
            amask = a_ok
        else:
            wmask = n_ok & ((k0 // 2 + offs_kb) < k_end // 2)[None, :]
            smask = n_ok & ((k0 // 32 + offs_ks) < k_end // 32)[None, :]
            amask = a_ok & ((k0 + offs_a) < k_end)[None, :]
        if EVICT_W:
            wb = tl.load(w_rows + (k0 // 2 + offs_kb)[None, :], mask=wmask, other=0, eviction_policy="evict_first")
            sc = tl.load(s_rows + (k0 // 32 + offs_ks)[None, :], mask=smask, other=127,
                         eviction_policy="evict_first")
        else:
            wb = tl.load(w_rows + (k0 // 2 + offs_kb)[None, :], mask=wmask, other=0)
            sc = tl.load(s_rows + (k0 // 32 + offs_ks)[None, :], mask=smask, other=127)
        if K16:
            a_lo = tl.load(a_rows + (k0 + offs_a)[None, :], mask=amask, other=0.0)
            a_hi = tl.load(a_rows + (k0 + 16 + offs_a)[None, :], mask=amask, other=0.0)
            w_lo, w_hi = _mxfp4_halves(wb, sc, BLOCK_N, BLOCK_K, DEQUANT)
            if SWAP_AB:
                acc = _dot_swapped(a_lo, w_lo, acc, DOT)
                acc = _dot_swapped(a_hi, w_hi, acc, DOT)
            else:
                acc = _dot(a_lo, w_lo, acc, DOT)
                acc = _dot(a_hi, w_hi, acc, DOT)
        else:
            a = tl.load(a_rows + (k0 + offs_a)[None, :], mask=amask, other=0.0)
            if DEQUANT != 0:  # 1: mul.rn.bf16x2 (sm_90+), 2: fma.rn.bf16x2 (sm_80+); capability.py
                w = _mxfp4_tile_bf16_asm(wb, sc, BLOCK_N, BLOCK_K, DEQUANT == 2)
            else:
                w = _mxfp4_tile(wb, sc, BLOCK_N, BLOCK_K)
            if SWAP_AB:
                acc = _dot_swapped(a, w, acc, DOT)
            else:
                acc = _dot(a, w, acc, DOT)
    if SWAP_AB:
        acc = tl.trans(acc)
    return acc


@triton.jit
def _tile_ids(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped program order: GROUP_M row blocks share each weight tile while it is in L2."""
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size
    pid_n = (pid % per_group) // size
    return pid_m, pid_n


@triton.jit
def _dot(a, w, acc, DOT: tl.constexpr):
    """acc += a [BM, BK] @ w[BN, BK]^T in the requested operand precision."""
    if DOT == 1:
        return tl.dot(a.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)), acc)
    elif DOT == 2:
        return tl.dot(a.to(tl.float16), tl.trans(w.to(tl.float16)), acc)
    else:
        return tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc)


@triton.jit
def _dot_swapped(a, w, acc_t, DOT: tl.constexpr):
    """acc_t [BN, BM] += w [BN, BK] @ a^T: the weight tile (dequantized in registers) is the
    left operand, which Hopper's wgmma can take from registers, and a narrow token block becomes
    the MMA's N (>= 16), which suits decode. The epilogue transposes acc_t back."""
    if DOT == 1:
        return tl.dot(w.to(tl.bfloat16), tl.trans(a.to(tl.bfloat16)), acc_t)
    elif DOT == 2:
        return tl.dot(w.to(tl.float16), tl.trans(a.to(tl.float16)), acc_t)
    else:
        return tl.dot(w.to(tl.float32), tl.trans(a.to(tl.float32)), acc_t)


@triton.jit
def _gemm1_tile(tile, x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, sorted_ptr, block_expert_ptr,
                M, N, K, num_m,
                stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ym,
                alpha, limit,
                TOPK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
                DEQUANT: tl.constexpr, K16: tl.constexpr, EVICT_W: tl.constexpr):
    """One output tile of GEMM1 (see `_gemm1_kernel`): row block and column block of `tile`."""
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_ids(tile, num_m, num_n, GROUP_M)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= 0:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.load(sorted_ptr + rows)
        row_ok = slot < M
        tok = tl.where(row_ok, slot // TOPK, 0)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        e64 = expert.to(tl.int64)
        x_rows = x_ptr + tok.to(tl.int64)[:, None] * stride_xt
        w_rows = w_ptr + e64 * stride_we + offs_n[:, None] * stride_wn
        s_rows = s_ptr + e64 * stride_se + offs_n[:, None] * stride_sn
        acc = _mxfp4_k_loop(x_rows, row_ok[:, None], w_rows, s_rows, n_ok[:, None], 0, K,
                            BLOCK_M, BLOCK_N, BLOCK_K, DOT, EVEN_K, SWAP_AB, DEQUANT, K16, EVICT_W)
        if HAS_BIAS:
            acc += tl.load(b_ptr + e64 * stride_be + offs_n, mask=n_ok, other=0.0)[None, :]
        gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N // 2, 2]))
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        act = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
        offs_i = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + offs_i[None, :]
        tl.store(y_ptrs, act.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_i < N // 2)[None, :])


@triton.jit
def _gemm1_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, sorted_ptr, block_expert_ptr,
                  M, N, K, num_m,
                  stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ym,
                  alpha, limit,
                  TOPK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
                  DEQUANT: tl.constexpr, K16: tl.constexpr = False, EVICT_W: tl.constexpr = False,
                  PERSISTENT: tl.constexpr = False):
    """y[row, :N/2] = swiglu(x[token(row)] @ w13[e]^T + b13[e]) for the rows of one expert block.

    N = 2I (rows of w13, gate/up interleaved), K = H. Rows are in the aligned (sorted) order.
    One program per output tile, or with PERSISTENT a fixed grid whose programs take tiles
    pid, pid + grid, ... in the grouped order (`_tile_ids`): the programs running at one time hold
    neighbouring tiles, which share each weight tile through L2, and no program is launched twice.
    """
    if PERSISTENT:
        for tile in range(tl.program_id(0), num_m * tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
            _gemm1_tile(tile, x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, sorted_ptr, block_expert_ptr, M, N, K, num_m,
                        stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ym, alpha, limit,
                        TOPK, HAS_BIAS, DOT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, SWAP_AB, DEQUANT, K16,
                        EVICT_W)
    else:
        _gemm1_tile(tl.program_id(0), x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, sorted_ptr, block_expert_ptr, M, N, K,
                    num_m, stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ym, alpha,
                    limit, TOPK, HAS_BIAS, DOT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, SWAP_AB, DEQUANT,
                    K16, EVICT_W)


@triton.jit
def _gemm2_tile(tile, pid_k, y_ptr, w_ptr, s_ptr, b_ptr, tw_ptr, out_ptr, sorted_ptr, block_expert_ptr,
                M, N, K, num_m,
                stride_ym, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ot,
                TOPK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
                SPLIT_K: tl.constexpr, DEQUANT: tl.constexpr, K16: tl.constexpr, EVICT_W: tl.constexpr):
    """One output tile (and K range `pid_k`) of GEMM2 (see `_gemm2_kernel`)."""
    k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_begin = pid_k * k_per
    k_end = tl.minimum(K, k_begin + k_per)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_ids(tile, num_m, num_n, GROUP_M)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= 0:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.load(sorted_ptr + rows)
        row_ok = slot < M
        tok = tl.where(row_ok, slot // TOPK, 0)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        e64 = expert.to(tl.int64)
        y_rows = y_ptr + rows.to(tl.int64)[:, None] * stride_ym
        w_rows = w_ptr + e64 * stride_we + offs_n[:, None] * stride_wn
        s_rows = s_ptr + e64 * stride_se + offs_n[:, None] * stride_sn
        acc = _mxfp4_k_loop(y_rows, row_ok[:, None], w_rows, s_rows, n_ok[:, None], k_begin, k_end,
                            BLOCK_M, BLOCK_N, BLOCK_K, DOT, EVEN_K, SWAP_AB, DEQUANT, K16, EVICT_W)
        if HAS_BIAS:
            bias = tl.load(b_ptr + e64 * stride_be + offs_n, mask=n_ok, other=0.0)
            acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
        tw = tl.load(tw_ptr + slot, mask=row_ok, other=0.0)
        acc = acc * tw[:, None]
        o_ptrs = out_ptr + tok.to(tl.int64)[:, None] * stride_ot + offs_n[None, :]
        tl.atomic_add(o_ptrs, acc, mask=row_ok[:, None] & n_ok[None, :], sem="relaxed")


@triton.jit
def _gemm2_kernel(y_ptr, w_ptr, s_ptr, b_ptr, tw_ptr, out_ptr, sorted_ptr, block_expert_ptr,
                  M, N, K, num_m,
                  stride_ym, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ot,
                  TOPK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
                  SPLIT_K: tl.constexpr, DEQUANT: tl.constexpr, K16: tl.constexpr = False,
                  EVICT_W: tl.constexpr = False, PERSISTENT: tl.constexpr = False):
    """out[token(row)] += topk_w[slot(row)] * (y[row] @ w2[e]^T + b2[e]); N = H, K = I.

    SPLIT_K > 1 (decode): program_id(1) takes one K range; the partial products are linear in y, so
    they go through the same atomic add (the bias is added by the first split only). That multiplies
    the programs streaming weights when only a few experts are active. PERSISTENT: as in
    `_gemm1_kernel`, over the tiles of program_id(1)'s K range.
    """
    if PERSISTENT:
        for tile in range(tl.program_id(0), num_m * tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
            _gemm2_tile(tile, tl.program_id(1), y_ptr, w_ptr, s_ptr, b_ptr, tw_ptr, out_ptr, sorted_ptr,
                        block_expert_ptr, M, N, K, num_m, stride_ym, stride_we, stride_wn, stride_se, stride_sn,
                        stride_be, stride_ot, TOPK, HAS_BIAS, DOT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K,
                        SWAP_AB, SPLIT_K, DEQUANT, K16, EVICT_W)
    else:
        _gemm2_tile(tl.program_id(0), tl.program_id(1), y_ptr, w_ptr, s_ptr, b_ptr, tw_ptr, out_ptr, sorted_ptr,
                    block_expert_ptr, M, N, K, num_m, stride_ym, stride_we, stride_wn, stride_se, stride_sn,
                    stride_be, stride_ot, TOPK, HAS_BIAS, DOT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K,
                    SWAP_AB, SPLIT_K, DEQUANT, K16, EVICT_W)
