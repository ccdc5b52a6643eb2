// gpt-oss MXFP4 Mixture-of-Experts on x86 CPUs: the whole MoE of one layer in one call.
//
// Built per machine with -march=native (gptoss_kernels/cpu/__init__.py); the code paths below are
// chosen at compile time from the compiler's ISA macros:
//   AVX-512 (F+BW) + AVX512_BF16   bf16 activations, products exact, fp32 sums (vdpbf16ps). Few
//                                  tokens per expert (decode): 4 blocks per 64-byte load, unscaled
//                                  E2M1 -> bf16 by a word table (vpermw on the code word shifted by
//                                  0/4/8/12 bits), block scales applied after the sums
//                                  (dot_bf16_nib); elsewhere codes -> bf16 through a word
//                                  table (vpermw) whose exponents carry the block's E8M0 scale
//                                  (dot_bf16), or a dequantized bf16 tile for 8+ tokens
//   + AMX-BF16 (switched on at     experts with 8+ tokens: the same dequantized bf16 tile times the
//   run time, gptoss_cpu_amx)      activations on AMX tiles (TDPBF16PS; amx_tiles.h), the rest as above
//   AVX-512 (F+BW)                 fp32 activations: codes -> fp32 through a 16-entry table
//                                  (vpermps) pre-multiplied by the scale, fp32 FMA; bf16/fp16
//                                  models without AVX512_BF16 (act_mode 2, Intel Skylake-SP to Ice
//                                  Lake): activations quantized to int16 per 32-block as on AVX2,
//                                  codes -> int16 2*E2M1 by the decode path's word table (vpermw),
//                                  vpmaddwd (vpdpwssd with AVX512_VNNI), 4 blocks' scales in one FMA
//   AVX2 + FMA                     fp32 activations: 8 magnitudes by vpermps + sign bit by xor;
//                                  bf16/fp16 models (act_mode 2): activations quantized to int16 per
//                                  32-block (error ~1e-5 of the block's max, far below bf16's own
//                                  rounding), codes -> int8 2*E2M1 by vpshufb, vpmaddwd int16 dots
//                                  (the second vpdpwssd with AVX-VNNI), one fp32 FMA per block with
//                                  the two scales
//   anything else                  scalar fp32 (same layout, same results up to summation order)
// Dequantization happens in registers inside the dot products: no expert is ever expanded in memory.
//
// Weights: scales uint8 E8M0 [E, N, K/32] as in the checkpoint; the E2M1 codes (uint8, two a byte,
// low nibble = even element, K/2 bytes a row) in the *row-group layout*, written once at load in
// place of the checkpoint's [E, N, K/2] (gptoss_kernels.cpu.NativeKernels.pack_experts; same bytes,
// memory stays MXFP4-sized): per group of kGroupRows consecutive rows, the rows' first 64-byte
// chunks one after another, then their second chunks, ..., then the rows' last partial chunks
// (K/2 mod 64 bytes each). A register block of kGroupRows rows then reads one sequential stream
// where the checkpoint order gave kGroupRows streams a row apart, which the hardware prefetchers
// follow better, and the decode kernel keeps its 4 rows a block (activations loaded once for 4
// rows): Zen 5, one token from DRAM, 2 threads, same process, 1.03-1.09x over the checkpoint order
// read one row at a time; with the vpermw decode and the long runs below, 1.13-1.16x over the kernel
// before them, 88-97% of oneDNN's bf16 GEMV rate on as many bytes (BENCHMARKS.md). 16-byte blocks and
// 64-byte chunks stay contiguous, so every path reads them as before, through WRows::blocks.
//
// One call: route (CSR of slots per expert), gate_up over (expert, 32-row tile) work items with
// bias + clamped SwiGLU in the epilogue, down over (expert, 32-row tile) items with bias and the
// routing weight, then a per-token sum of its k slots (no atomics: deterministic). Work items are
// taken from an atomic counter by the OpenMP threads of the caller's runtime (the same libgomp
// torch uses, so torch.set_num_threads / vLLM's thread binding apply). ids of -1 contribute nothing.
//
// Activation layouts inside a call (per row of K elements):
//   fp32 mode: per 32-element block, the 16 even elements then the 16 odd ones, so that the
//              low / high nibbles of 16 code bytes meet their activations in one vector each;
//   bf16 mode: natural order (a code byte is an adjacent pair, which is what vdpbf16ps pairs);
//   q16 mode:  int16 in the order of the build's decode (Q16Row), one float step per 32-block (and
//              the fp32 row, even/odd-split, kept beside it for blocks whose E8M0 scale is extreme).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_common.h"  // GK_AVX512 / GK_BF16 / GK_AVX2: the paths this build has
#include "amx_tiles.h"   // GK_AMX: the build has AMX tiles (or their software model)

// the q16 mode (16-bit activations as int16, integer dot products): AVX2 and AVX-512 builds
#if defined(GK_AVX2) || defined(GK_AVX512)
#define GK_Q16 1
#endif

namespace {

constexpr int kBlock = 32;   // elements per E8M0 scale
constexpr int kTile = 32;    // rows per work item (gate_up: 16 gate/up pairs)
constexpr int kMaxM = 8;     // tokens per register block
constexpr int64_t kItemRun = 16;  // consecutive work items a thread takes at a time (see the work items)
constexpr int64_t kRunsPerThread = 2;  // decode: the items split into this many runs per thread
constexpr int64_t kGroupRows = 4;      // rows per group of the row-group layout (gptoss_cpu_group_rows)
constexpr int64_t kChunk = 64;         // bytes of a row per chunk of the row-group layout

// Rows r0, r0 + 1, ... of one work tile (its first row a multiple of kGroupRows) in the row-group
// layout.
struct WRows {
  const uint8_t* tile;
  int64_t ldw;  // bytes a row (K / 2)
  int64_t r0;
  // The 16-byte blocks of the rows r0 .. r0 + R - 1, R dividing kGroupRows and r0 a multiple of R
  // (so the rows are in one row group): blocks().at(b).row(r) is row r's block b. The addresses
  // are set up once per call and cost a few integer operations per block for all R rows, so the
  // loops over blocks stay about as cheap as on the checkpoint order.
  struct Block {
    const uint8_t* p;
    int64_t stride;
    const uint8_t* row(int r) const { return p + r * stride; }
  };
  struct Blocks {
    const uint8_t* head;  // row r0's first chunk
    const uint8_t* tail;  // row r0's partial last chunk
    uint64_t whole;       // blocks in whole chunks (4 a chunk)
    int64_t tail_stride;  // bytes from one row's partial chunk to the next one's
    Block at(int64_t b) const {
      const uint64_t u = uint64_t(b);
      return u < whole ? Block{head + (u / 4) * (kChunk * kGroupRows) + (u % 4) * 16, kChunk}
                       : Block{tail + (u - whole) * 16, tail_stride};
    }
  };
  Blocks blocks() const {
    static_assert(kChunk == 64, "4 blocks of 16 bytes a chunk");
    const int64_t rr = r0 % kGroupRows, full = ldw / kChunk * kChunk;
    const uint8_t* g = tile + (r0 - rr) * ldw;
    return {g + rr * kChunk, g + full * kGroupRows + rr * (ldw - full), uint64_t(full / 16), ldw - full};
  }
};

const float kE2M1[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                         -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

struct ScaleTable {
  float v[256];
  ScaleTable() {
    for (int s = 0; s < 256; ++s) v[s] = s == 255 ? NAN : std::ldexp(1.0f, s - 127);  // 2^-127 is subnormal
  }
};
const ScaleTable kScale;

using gk::f32_to_bf16;
using gk::run_item_runs;
using gk::run_items;
#if defined(__AVX2__)
using gk::hsum256;
#endif

// --------------------------------------------------------------------------- the SwiGLU epilogue
// a[p] = g / (1 + e^(-alpha g)) (u + 1) for the 16 gate/up pairs of a work tile and one token m:
// g = min(h[2p][m] + bias[2p], limit), u = clamp(h[2p + 1][m] + bias[2p + 1], -limit, limit), where
// h[r * M + m] and bias is the tile's 32 interleaved gate/up biases (or null). NaN propagates, as in
// torch.clamp. AVX-512 builds take the 16 pairs in one vector for groups of 4+ tokens (prefill:
// 1.04x at 512 tokens, 20b layer, Zen 5), e^x by Cephes' expf polynomial and an exponent scaling
// (within 1 ulp of e^x at 3.8M points of [-110, 92] checked against double's exp; 0 / inf / NaN where
// expf gives them); with fewer tokens (decode), one pair at a time with std::exp, which measured 1-2%
// faster there from DRAM for a reason not found (the same speed with the experts L3-resident).
#if defined(GK_AVX512)
inline __m512 exp512(__m512 x) {
  // x beyond [-104, 89] gives 0 or inf through the scaling, as expf; NaN stays NaN (min/max return
  // their second operand when one is NaN)
  x = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // x - n ln2, ln2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(y, n);  // y 2^n: 0 below, inf above float's range
}
#endif

inline void swiglu_pairs(const float* h, int M, int m, const float* bias, float alpha, float limit, float* a) {
  static_assert(kTile == 32, "16 gate/up pairs a work tile: one vector");
#if defined(GK_AVX512)
  if (M >= 4) {
    const __m512i rows = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i gi = _mm512_add_epi32(_mm512_mullo_epi32(rows, _mm512_set1_epi32(M)), _mm512_set1_epi32(m));
    __m512 g = _mm512_i32gather_ps(gi, h, 4);
    __m512 u = _mm512_i32gather_ps(_mm512_add_epi32(gi, _mm512_set1_epi32(M)), h, 4);
    if (bias != nullptr) {
      const __m512 lo = _mm512_loadu_ps(bias), hi = _mm512_loadu_ps(bias + 16);
      g = _mm512_add_ps(g, _mm512_permutex2var_ps(lo, rows, hi));
      u = _mm512_add_ps(u, _mm512_permutex2var_ps(lo, _mm512_add_epi32(rows, _mm512_set1_epi32(1)), hi));
    }
    const __m512 lim = _mm512_set1_ps(limit);
    g = _mm512_min_ps(lim, g);  // g when g is NaN
    u = _mm512_min_ps(lim, _mm512_max_ps(_mm512_set1_ps(-limit), u));
    const __m512 e = exp512(_mm512_mul_ps(_mm512_set1_ps(-alpha), g));
    _mm512_storeu_ps(a, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e)),
                                      _mm512_add_ps(u, _mm512_set1_ps(1.f))));
    return;
  }
#endif
  for (int p = 0; p < kTile / 2; ++p) {
    float g = h[(2 * p) * M + m], u = h[(2 * p + 1) * M + m];
    if (bias != nullptr) {
      g += bias[2 * p];
      u += bias[2 * p + 1];
    }
    g = std::min(g, limit);  // NaN propagates, as torch.clamp does
    u = std::min(std::max(u, -limit), limit);
    a[p] = g / (1.0f + std::exp(-alpha * g)) * (u + 1.0f);
  }
}

// position of element c of a K-row in the fp32 mode's even/odd-split layout
inline int64_t perm_pos(int64_t c) {
  int64_t w = c & 31;
  return (c & ~int64_t(31)) + ((w & 1) ? 16 + (w >> 1) : (w >> 1));
}

// --------------------------------------------------------------------------------- fp32 dot tiles
// out[r * M + m] = sum_k W[r, k] * X_m[k] for R rows w (scale rows at s, row stride lds) and M
// activation rows xs[m] (fp32, even/odd-split layout), nb blocks of 32.
template <int R, int M>
void dot_f32(WRows w, const uint8_t* s, int64_t lds, int64_t nb, const float* const* xs, float* out) {
#if defined(GK_AVX512)
  const __m512 lut = _mm512_loadu_ps(kE2M1);
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const WRows::Blocks wb = w.blocks();
  for (int64_t b = 0; b < nb; ++b) {
    __m512 xe[M], xo[M];  // the block's activations stay in registers across the R rows
    for (int m = 0; m < M; ++m) {
      xe[m] = _mm512_loadu_ps(xs[m] + b * 32);
      xo[m] = _mm512_loadu_ps(xs[m] + b * 32 + 16);
    }
    const WRows::Block blk = wb.at(b);
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)blk.row(r)));
      __m512 ls = _mm512_mul_ps(lut, _mm512_set1_ps(kScale.v[s[r * lds + b]]));
      __m512 wl = _mm512_permutexvar_ps(v, ls);                         // low nibbles: even elements
      __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), ls);   // high nibbles: odd elements
      for (int m = 0; m < M; ++m) {
        acc[r][m] = _mm512_fmadd_ps(wl, xe[m], acc[r][m]);
        acc[r][m] = _mm512_fmadd_ps(wh, xo[m], acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
#elif defined(GK_AVX2)
  const __m256 mag = _mm256_loadu_ps(kE2M1);  // magnitudes of codes 0-7; bit 3 is the sign
  const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
  __m256 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const WRows::Blocks wb = w.blocks();
  for (int64_t b = 0; b < nb; ++b) {
    const WRows::Block blk = wb.at(b);
    for (int r = 0; r < R; ++r) {
      __m128i c = _mm_loadu_si128((const __m128i*)blk.row(r));
      __m256 ms = _mm256_mul_ps(mag, _mm256_set1_ps(kScale.v[s[r * lds + b]]));
      for (int h = 0; h < 2; ++h) {
        __m256i v = _mm256_cvtepu8_epi32(h ? _mm_srli_si128(c, 8) : c);
        __m256i vh = _mm256_srli_epi32(v, 4);
        __m256 wl = _mm256_xor_ps(_mm256_permutevar8x32_ps(ms, v),
                                  _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(v, 28), sign)));
        __m256 wh = _mm256_xor_ps(_mm256_permutevar8x32_ps(ms, vh),
                                  _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(vh, 28), sign)));
        for (int m = 0; m < M; ++m) {
          acc[r][m] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xs[m] + b * 32 + h * 8), acc[r][m]);
          acc[r][m] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xs[m] + b * 32 + 16 + h * 8), acc[r][m]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc[r][m]), _mm256_extractf128_ps(acc[r][m], 1));
      q = _mm_add_ps(q, _mm_movehl_ps(q, q));
      q = _mm_add_ss(q, _mm_movehdup_ps(q));
      out[r * M + m] = _mm_cvtss_f32(q);
    }
#else
  const WRows::Blocks blocks = w.blocks();
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const float sc = kScale.v[s[r * lds + b]];
        const uint8_t* wb = blocks.at(b).row(r);
        const float* xb = xs[m] + b * 32;
        for (int i = 0; i < 16; ++i)
          acc += kE2M1[wb[i] & 15] * sc * xb[i] + kE2M1[wb[i] >> 4] * sc * xb[16 + i];
      }
      out[r * M + m] = acc;
    }
#endif
}


// ------------------------------------------------------------------ 16-bit activations as int16
// The q16 mode (AVX2 and AVX-512 builds; bf16 / fp16 activations where the build has no
// AVX512_BF16 path): one activation row quantized to int16, q = round(x / step), one step per
// 32-block (step = max|x| / 32767), for exact integer dot products with the weights W = 2 * E2M1
// (integers in [-12, 12]). The storage order is the one the weights come out of dot_q16's decode in:
//   AVX2:    per block [even 0-7 | odd 0-7], then [even 8-15 | odd 8-15]; the weights sit in the
//            high byte of each int16 word (256 * W);
//   AVX-512: the nibble layout of nib_pos (per group of 4 blocks, register k word j = element
//            4j + k), rows zero-padded to whole groups; the weights are W.
// half = step / 2 (the 1/2 of W = 2 * E2M1) / the weights' unit; xf = the fp32 row (even/odd-split
// layout) for blocks with extreme weight scales.
struct Q16Row {
  const int16_t* q;
  const float* half;
  const float* xf;
};

// Elements per group of 4 blocks, the unit of the AVX-512 few-token loops (64 code bytes a row)
constexpr int64_t kNibGroup = 128;

inline int64_t nib_len(int64_t n) { return (n + kNibGroup - 1) / kNibGroup * kNibGroup; }

// Position of element c of a K-row (natural order) in the nibble layout: per group of 4 blocks
// (128 elements, 32 code words), 4 chunks of 32 words: chunk k, word j holds element 4j + k (the
// weights vpermw gives for the code words shifted by 4k bits).
inline int64_t nib_pos(int64_t c) { return (c >> 7) * kNibGroup + (c & 3) * 32 + ((c & 127) >> 2); }

// element (natural order) of position i of a block's even/odd-split layout
inline int split_elem(int i) { return i < 16 ? 2 * i : 2 * (i - 16) + 1; }

#if defined(GK_AVX512)
constexpr float kQ16WeightUnit = 1.f;
inline int64_t q16_len(int64_t n) { return nib_len(n); }
inline int64_t q16_index(int64_t b, int i) { return nib_pos(b * kBlock + split_elem(i)); }
#else
constexpr float kQ16WeightUnit = 256.f;
inline int64_t q16_len(int64_t n) { return n; }
inline int64_t q16_index(int64_t b, int i) {
  const int e = split_elem(i);  // the (e/2)-th even or odd element
  return b * kBlock + ((e >> 1) >= 8 ? 16 : 0) + (e & 1) * 8 + ((e >> 1) & 7);
}
#endif

// Quantizes one row of n fp32 values (even/odd-split layout, whole 32-blocks) into q (q16_len(n)
// int16) and half (q16_len(n) / 32; the padding zero). Non-finite blocks get half = NaN and q = 0,
// so that the NaN reaches the output as it would in float arithmetic.
inline Q16Row quantize_q16(const float* x, int64_t n, int16_t* q, float* half) {
  std::memset(q + n, 0, (q16_len(n) - n) * sizeof(int16_t));
  std::fill(half + n / kBlock, half + q16_len(n) / kBlock, 0.f);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    float amax = 0.f;
    bool finite = true;
    for (int i = 0; i < kBlock; ++i) {
      amax = std::max(amax, std::fabs(xb[i]));
      finite &= std::isfinite(xb[i]);
    }
    const float inv = finite && amax > 0.f ? 32767.f / amax : 0.f;
    half[b] = finite ? amax / 32767.f * (0.5f / kQ16WeightUnit) : NAN;
    for (int i = 0; i < kBlock; ++i) q[q16_index(b, i)] = int16_t(std::lrintf(xb[i] * inv));
  }
  return {q, half, x};
}

#if defined(GK_AVX512)
// -------------------------------------------------- AVX-512, few tokens: 4 blocks per 64-byte load
// The loop of the AVX-512 few-token paths (dot_bf16_nib, and dot_q16 of AVX-512 builds): R rows of
// one row group (R divides kGroupRows), one 64-byte chunk (4 blocks, 128 weights) of each at a time.
// Per group g of 4 blocks: start(g), then per row r row(g, r, c, sv) with c = the row's 64 code
// bytes (a row's 32 words each hold 4 codes: elements 4j .. 4j + 3 of the group in bits 0-3, 4-7,
// 8-11, 12-15; the missing blocks of a partial last group zero) and sv = the 4 blocks' scales,
// lane k (128 bits) = 2^(scale of block k - 127) (missing blocks: 1; scales 1..254 only, where it is
// a normal float: the callers check).
// Prefetch: the R rows of a register block are adjacent in memory, and so are the blocks that
// follow (the rest of the tile, then the expert's next tile), so while a block runs, the bytes
// kNibPrefetchBlocks blocks further on are prefetched, one cache line per row and group (R x groups
// lines cover R rows of K/2 bytes). The hardware prefetcher of the AVX-512 CPUs measured does not run that
// far ahead of the R interleaved row streams (AMD Zen 5, one MoE layer at one token from DRAM, 2
// threads: 26 GB/s without software prefetch, 28 with each row's line 8 groups ahead, 31-34 with
// the next block, 35-36 with the 4th block ahead; C++ harness, BENCHMARKS.md). Into which cache
// (GK_BF16_PREFETCH_HINT) depends on the CPU: on AMD Zen 4 (32 KiB L1) fetching 4 blocks (23 KB at
// 20b) ahead into L1 cost more than it gained, into L2 it gained 1.16-1.23x over L1 (2 threads).
// A prefetch past the tensor is harmless (no fault).
constexpr int kNibPrefetchBlocks = 4;

template <int R, typename Start, typename Row>
inline void for_each_chunk(const WRows& w, const uint8_t* s, int64_t lds, int64_t nb, const Start& start,
                           const Row& row) {
  // lane k of the broadcast scale dword -> byte 2 of each of its dwords (then << 7: the exponent)
  const __m512i sc_idx = _mm512_set_epi32(0x80038080, 0x80038080, 0x80038080, 0x80038080,
                                          0x80028080, 0x80028080, 0x80028080, 0x80028080,
                                          0x80018080, 0x80018080, 0x80018080, 0x80018080,
                                          0x80008080, 0x80008080, 0x80008080, 0x80008080);
  // row r's chunk g is at rows[r] + g * step (row-group layout); R <= kGroupRows rows of one group
  static_assert(kGroupRows % R == 0, "a register block lies in one row group");
  const WRows::Blocks wb = w.blocks();  // rows r of the block: wb.head + r * kChunk + g * step
  const int64_t step = kChunk * kGroupRows, ahead = kNibPrefetchBlocks * R * w.ldw;
  {  // the scales of the block as far ahead (R rows of lds bytes, adjacent)
    const char* sp = (const char*)(s + kNibPrefetchBlocks * R * lds);
    for (int64_t o = 0; o < R * lds; o += 64) _mm_prefetch(sp + o, GK_BF16_PREFETCH_HINT);
  }
  // one group of 4 blocks (the last one of a row may have fewer: cmask / sbytes say which); chunks
  // of row r at base + r * rstride
  auto group = [&](int64_t g, __mmask64 cmask, const uint32_t* sbytes, const uint8_t* base, int64_t rstride)
      __attribute__((always_inline)) {
    start(g);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* cp = base + r * rstride;
      _mm_prefetch((const char*)(cp + ahead), GK_BF16_PREFETCH_HINT);
      const __m512i c = _mm512_maskz_loadu_epi8(cmask, cp);
      uint32_t sb;
      if (sbytes == nullptr)
        std::memcpy(&sb, s + r * lds + g * 4, 4);
      else
        sb = sbytes[r];
      const __m512 sv = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_shuffle_epi8(_mm512_set1_epi32(int(sb)), sc_idx), 7));
      row(g, r, c, sv);
    }
  };
  const int64_t full = nb / 4, left = nb % 4;
  for (int64_t g = 0; g < full; ++g) group(g, ~__mmask64(0), nullptr, wb.head + g * step, kChunk);
  if (left) {  // missing blocks: zero codes and activations, scale 1
    uint32_t sbytes[R];
    for (int r = 0; r < R; ++r) {
      sbytes[r] = 0x7f7f7f7fu;
      std::memcpy(&sbytes[r], s + r * lds + full * 4, size_t(left));
    }
    // the rows' partial chunks, after the group's whole ones, left * 16 bytes each
    group(full, (__mmask64(1) << (16 * left)) - 1, sbytes, wb.tail, wb.tail_stride);
  }
}

// 2 * E2M1 as int16 words for vpermw (index bit 4, the next code's low bit, ignored: the 16 values twice)
struct Q16Words {
  alignas(64) int16_t w[32];
  Q16Words() {
    for (int i = 0; i < 32; ++i) w[i] = int16_t(2.f * kE2M1[i & 15]);
  }
};
const Q16Words kQ16Words;

// As dot_f32 for q16 activation rows (AVX-512 builds without the bf16 path: Intel Xeon Skylake-SP to
// Ice Lake, ...). The decode of dot_bf16_nib with a table of int16 words W = 2 * E2M1: per row and
// 4 blocks, 4 vpermw give 128 weights; 4 vpmaddwd (3 of them vpdpwssd where the CPU has
// AVX512_VNNI) with the activations in the nibble layout leave each block's 4 exact int32 partial
// sums in its own 128-bit lane (|sum| <= 8 * 12 * 32767 < 2^24: exact in float), and one FMA with
// lane k = 2^(scale_k - 127) * half_k scales the 4 blocks at once. Same results as the AVX2 build's
// dot_q16 up to float summation order. Every scale of the R rows in [2, 252] (q16_scales_ok).
template <int R, int M>
void dot_q16(WRows w, const uint8_t* s, int64_t lds, int64_t nb, const Q16Row* xs, float* out) {
  const __m512i table = _mm512_load_si512(kQ16Words.w);
  const __m512i lane_of = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  __m512 hv[M];  // lane k: half of the group's block k, per token
  auto start = [&](int64_t g) __attribute__((always_inline)) {
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
      hv[m] = _mm512_permutexvar_ps(lane_of, _mm512_castps128_ps512(_mm_loadu_ps(xs[m].half + 4 * g)));
  };
  for_each_chunk<R>(w, s, lds, nb, start, [&](int64_t g, int r, __m512i c, __m512 sv) __attribute__((always_inline)) {
    const __m512i w0 = _mm512_permutexvar_epi16(c, table);
    const __m512i w1 = _mm512_permutexvar_epi16(_mm512_srli_epi16(c, 4), table);
    const __m512i w2 = _mm512_permutexvar_epi16(_mm512_srli_epi16(c, 8), table);
    const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(c, 12), table);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const int16_t* q = xs[m].q + g * kNibGroup;
      __m512i p = _mm512_madd_epi16(w0, _mm512_loadu_si512(q));
#if defined(__AVX512VNNI__)
      p = _mm512_dpwssd_epi32(p, w1, _mm512_loadu_si512(q + 32));
      p = _mm512_dpwssd_epi32(p, w2, _mm512_loadu_si512(q + 64));
      p = _mm512_dpwssd_epi32(p, w3, _mm512_loadu_si512(q + 96));
#else
      p = _mm512_add_epi32(p, _mm512_madd_epi16(w1, _mm512_loadu_si512(q + 32)));
      p = _mm512_add_epi32(p, _mm512_madd_epi16(w2, _mm512_loadu_si512(q + 64)));
      p = _mm512_add_epi32(p, _mm512_madd_epi16(w3, _mm512_loadu_si512(q + 96)));
#endif
      acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(sv, hv[m]), acc[r][m]);
    }
  });
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}
#endif

#if defined(GK_AVX2)
// 2 * E2M1 as int8: every code times 2 is an integer in [-12, 12]; both lanes alike for a 256-bit
// vpshufb
alignas(32) const int8_t kE2M1x2[32] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                        0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// As dot_f32 for q16 activation rows. Per block and row: the 16 code bytes go to both 128-bit
// lanes, the high lane shifted by a nibble, so one 256-bit vpshufb gives the 32 weights W (int8)
// as [even | odd]; interleaving them with zero bytes (vpunpck*bw, in-lane) makes int16 words
// 256 * W, and two vpmaddwd with the int16 activations give 8 exact int32 partial sums (|256 W q|
// <= 256 * 12 * 32767, four per lane: < 2^31). Then one FMA with 2^(scale-127) * half. The caller
// guarantees every scale of the R rows is in [2, 252] (q16_scales_ok); other row blocks take
// dot_f32 on the fp32 rows. No branch in the loop, so that the R x M accumulators stay in
// registers.
// Rows of the register blocks that follow are prefetched while this one runs: the R interleaved
// row streams of a block (row stride K/2 bytes) defeat the hardware prefetcher of the AVX2 CPU
// measured (AMD Zen 3): 1.4-1.6x at one token, from DRAM (BENCHMARKS.md). Prefetches past the
// tile or the tensor are harmless (no fault) and cheap (one per 4 blocks and row).
constexpr int kQ16PrefetchAhead = 2;

template <int R, int M>
void dot_q16(WRows w, const uint8_t* s, int64_t lds, int64_t nb, const Q16Row* xs, float* out) {
  const __m256i lut = _mm256_load_si256((const __m256i*)kE2M1x2);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i nibble_hi_lane = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
  const __m256i zero = _mm256_setzero_si256();
  __m256 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const WRows::Blocks wb = w.blocks();
  for (int64_t b = 0; b < nb; ++b) {
    __m256 hv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) hv[m] = _mm256_broadcast_ss(xs[m].half + b);
    const WRows::Block blk = wb.at(b);
    if ((b & 3) == 0) {  // one cache line of each row kQ16PrefetchAhead register blocks further on
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        _mm_prefetch((const char*)(blk.row(r) + kQ16PrefetchAhead * R * w.ldw), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i c = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)blk.row(r)));
      const __m256i wv = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srlv_epi32(c, nibble_hi_lane), m4));
      const __m256i w0 = _mm256_unpacklo_epi8(zero, wv), w1 = _mm256_unpackhi_epi8(zero, wv);
      const __m256 ws = _mm256_broadcast_ss(&kScale.v[s[r * lds + b]]);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int16_t* q = xs[m].q + b * 32;
#if defined(__AVXVNNI__)  // Intel client cores from Alder Lake on: the second product added in place
        const __m256i p = _mm256_dpwssd_avx_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)q)),
                                                  w1, _mm256_loadu_si256((const __m256i*)(q + 16)));
#else
        const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)q)),
                                           _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i*)(q + 16))));
#endif
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(ws, hv[m]), acc[r][m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[r * M + m] = hsum256(acc[r][m]);
}
#endif

// Storage for `rows` q16 rows of n values each.
struct Q16Buffer {
  std::vector<int16_t> q;
  std::vector<float> half;
  std::vector<Q16Row> rows;
  int64_t n = 0, len = 0;
  void resize(int64_t count, int64_t n_) {
    n = n_;
    len = q16_len(n);
    q.resize(count * len);
    half.resize(count * len / kBlock);
    rows.resize(count);
  }
  void quantize(int64_t i, const float* x) {
    rows[i] = quantize_q16(x, n, q.data() + i * len, half.data() + i * len / kBlock);
  }
};

// Whether every E8M0 scale of R rows x nb blocks is in [lo, hi]. Asked once per register block or
// tile, so it must cost little beside their dot products: 64 (AVX-512) or 32 (AVX2) scales per
// compare. A scalar min/max loop here cost a third of a one-token MoE layer with the experts in L3
// (AVX-512 build) and 16-18% of it with the experts in DRAM (AVX2 build; both measured on the Zen 5
// machine of BENCHMARKS.md).
inline bool scales_in_range(const uint8_t* s, int64_t lds, int R, int64_t nb, uint8_t lo, uint8_t hi) {
#if defined(GK_AVX512)
  const __m512i vlo = _mm512_set1_epi8(char(lo)), vhi = _mm512_set1_epi8(char(hi));
  __mmask64 bad = 0;
  for (int r = 0; r < R; ++r)
    for (int64_t b = 0; b < nb; b += 64) {
      const __mmask64 m = nb - b >= 64 ? ~__mmask64(0) : (__mmask64(1) << (nb - b)) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(m, s + r * lds + b);
      bad |= _mm512_mask_cmplt_epu8_mask(m, v, vlo) | _mm512_mask_cmpgt_epu8_mask(m, v, vhi);
    }
  return bad == 0;
#else
#if defined(__AVX2__)
  if (nb >= 32) {
    const __m256i vlo = _mm256_set1_epi8(char(lo)), vhi = _mm256_set1_epi8(char(hi));
    __m256i ok = _mm256_set1_epi8(-1);
    for (int r = 0; r < R; ++r)
      for (int64_t b = 0; b < nb; b += 32) {
        // the last load of a row overlaps the one before it: the whole row, nothing past it
        const __m256i v = _mm256_loadu_si256((const __m256i*)(s + r * lds + std::min(b, nb - 32)));
        ok = _mm256_and_si256(ok, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(v, vlo), v),
                                                   _mm256_cmpeq_epi8(_mm256_min_epu8(v, vhi), v)));
      }
    return _mm256_movemask_epi8(ok) == -1;
  }
#endif
  uint8_t mn = 255, mx = 0;  // rows of fewer than 32 blocks, or no AVX2
  for (int r = 0; r < R; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      mn = std::min(mn, s[r * lds + b]);
      mx = std::max(mx, s[r * lds + b]);
    }
  return mn >= lo && mx <= hi;
#endif
}

// Whether every scale of R rows x nb blocks is in [2, 252], where the q16 step is exact (outside
// it, the weights are subnormal or near float32's limit: dot_f32 handles them exactly).
inline bool q16_scales_ok(const uint8_t* s, int64_t lds, int R, int64_t nb) {
  return scales_in_range(s, lds, R, nb, 2, 252);
}

#if defined(GK_BF16)
// bf16 of E2M1 code (i & 15) for i in 0..31: vpermw indexes with the low 5 bits, so bit 4 (the
// neighbouring nibble's low bit in our index trick) is ignored by duplicating the table.
struct Bf16Table {
  uint16_t v[32];
  Bf16Table() {
    for (int i = 0; i < 32; ++i) v[i] = f32_to_bf16(kE2M1[i & 15]);
  }
};
const Bf16Table kE2M1Bf16;

// As dot_f32 with bf16 activations in natural order (xs[m]: K bf16 values).
template <int R, int M>
void dot_bf16(WRows w, const uint8_t* s, int64_t lds, int64_t nb, const uint16_t* const* xs, float* out) {
  const __m512i lut = _mm512_loadu_si512(kE2M1Bf16.v);
  // the four (+-)0 entries must stay zero when the scale is added to the exponent bits
  const __mmask32 nonzero = ~((1u << 0) | (1u << 8) | (1u << 16) | (1u << 24));
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const WRows::Blocks wb = w.blocks();
  for (int64_t b = 0; b < nb; ++b) {
    __m512bh xv[M];  // the block's activations stay in registers across the R rows
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs[m] + b * 32);
    const WRows::Block blk = wb.at(b);
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)blk.row(r)));
      // dword j = code byte j: low word indexes its low nibble (element 2j), high word its high
      // nibble (element 2j+1): the pair vdpbf16ps multiplies with activations 2j, 2j+1.
      __m512i idx = _mm512_or_si512(v, _mm512_slli_epi32(v, 12));
      const int sc = s[r * lds + b];
      if (__builtin_expect(sc >= 2 && sc <= 252, 1)) {
        // 2^(sc-127) folded into the bf16 exponent: exact, since every scaled value stays a normal
        // bf16 (|E2M1| in [0.5, 6] times 2^-125 .. 2^125)
        __m512i ls = _mm512_mask_add_epi16(lut, nonzero, lut, _mm512_set1_epi16(int16_t((sc - 127) << 7)));
        __m512bh wv = (__m512bh)_mm512_permutexvar_epi16(idx, ls);
        for (int m = 0; m < M; ++m)
          acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
      } else {
        // extreme scales (weights subnormal or beyond bf16/fp32 range): as the fp32 path, weights
        // scaled exactly in fp32 (what the reference computes), activations widened from bf16
        const __m512 ls = _mm512_mul_ps(_mm512_loadu_ps(kE2M1), _mm512_set1_ps(kScale.v[sc]));
        const __m512 wl = _mm512_permutexvar_ps(v, ls), wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), ls);
        for (int m = 0; m < M; ++m) {
          const __m512i xi = (__m512i)xv[m];  // dword j = (x[2j] low word, x[2j+1] high word)
          const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(xi, 16));
          const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(xi, _mm512_set1_epi32(int(0xffff0000u))));
          acc[r][m] = _mm512_fmadd_ps(wh, xo, _mm512_fmadd_ps(wl, xe, acc[r][m]));
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}
#endif

#if defined(GK_BF16)
// ---------------------------------------------------------------- bf16, few tokens: nibble tables
// The decode path (fewer than kScratchMin tokens of an expert). One 64-byte load takes 4 blocks of a
// row (128 weights), 16 code bytes per 128-bit lane. Its 32 words each hold 4 codes (elements 4j ..
// 4j + 3 of the group in bits 0-3, 4-7, 8-11, 12-15); the code word shifted right by 0, 4, 8, 12
// bits indexes a 32-entry word table (vpermw reads the low 5 bits: the table holds the 16 *unscaled*
// bf16 E2M1 values twice, so the next code's low bit does not matter), giving 4 registers of 32 bf16
// weights: 1 shuffle per 32 weights (the byte tables + byte interleaves used before took 2, and the
// kernel is compute-bound once its weights come from L3: Zen 5, one expert L3-resident, 2 threads,
// 60 -> 66 GB/s). Register k holds elements 4j + k of the group, so word 8k + i of it belongs to
// block k (lane k), as vdpbf16ps's lanes need. Every product of an E2M1 value and a bf16
// activation is exact in fp32, so each block's scale can be applied after its sums: vdpbf16ps leaves
// a block's partial sums in its own 128-bit lane, so one FMA with a vector whose lane k holds
// 2^(scale_k - 127) applies the 4 blocks' scales at once (exact: a power of two; scales 1..254 only,
// where that float is normal; nib_scales_ok). Summing before scaling narrows the range of the
// activations for which this is exact: a block's unscaled sum must not overflow (|x| < 2^64) and
// no product may come near float's subnormal range, where vdpbf16ps flushes it (|x| >= 2^-100, or 0
// / a bf16 subnormal, which vdpbf16ps reads as 0 on every path; AMD Zen 5 was seen to flush products
// a binade above the subnormal range too); rows outside that take dot_bf16 (to_nib says which).
// The activations are permuted once per call to match the weights' order (nib_pos); a row's last
// group may be partial (masked loads, zero activations).
struct NibTable {
  alignas(64) uint16_t w[32];  // bf16(E2M1[i & 15]): index bit 4 (the next code's low bit) ignored
  NibTable() {
    for (int i = 0; i < 32; ++i) w[i] = f32_to_bf16(kE2M1[i & 15]);
  }
};
const NibTable kNib;

// dst (nib_len(n) bf16) = row x (n bf16, natural order) in the nibble layout, zero padded. Returns
// whether every value is in dot_bf16_nib's exact range: 0, a subnormal, or 2^-100 <= |x| < 2^64.
inline bool to_nib(const uint16_t* x, int64_t n, uint16_t* dst) {
  std::memset(dst + n / kNibGroup * kNibGroup, 0, (nib_len(n) - n / kNibGroup * kNibGroup) * sizeof(uint16_t));
  bool ok = true;
  for (int64_t c = 0; c < n; ++c) {
    const int exp = (x[c] >> 7) & 0xff;  // bf16 biased exponent (0: zero / subnormal)
    ok &= exp == 0 || (exp >= 127 - 100 && exp < 127 + 64);
    dst[nib_pos(c)] = x[c];
  }
  return ok;
}

// Every E8M0 scale of R rows x nb blocks in [1, 254] (2^(s-127) a normal float)?
inline bool nib_scales_ok(const uint8_t* s, int64_t lds, int R, int64_t nb) {
  return scales_in_range(s, lds, R, nb, 1, 254);
}

// As dot_bf16, activations xs[m] in the nibble layout (nib_len(K) values each).
template <int R, int M>
void dot_bf16_nib(const WRows& w, const uint8_t* s, int64_t lds, int64_t nb, const uint16_t* const* xs,
                  float* out) {
  const __m512i table = _mm512_load_si512(kNib.w);
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for_each_chunk<R>(w, s, lds, nb, [](int64_t) {}, [&](int64_t g, int r, __m512i c, __m512 sv) __attribute__((always_inline)) {
    const __m512bh w0 = (__m512bh)_mm512_permutexvar_epi16(c, table);
    const __m512bh w1 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(c, 4), table);
    const __m512bh w2 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(c, 8), table);
    const __m512bh w3 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(c, 12), table);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const uint16_t* x = xs[m] + g * kNibGroup;
      __m512 t = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0, (__m512bh)_mm512_loadu_si512(x));
      t = _mm512_dpbf16_ps(t, w1, (__m512bh)_mm512_loadu_si512(x + 32));
      t = _mm512_dpbf16_ps(t, w2, (__m512bh)_mm512_loadu_si512(x + 64));
      t = _mm512_dpbf16_ps(t, w3, (__m512bh)_mm512_loadu_si512(x + 96));
      acc[r][m] = _mm512_fmadd_ps(t, sv, acc[r][m]);
    }
  });
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}
#endif

#if defined(GK_BF16)
// Many tokens per expert: dequantize the 32-row tile once into a per-thread bf16 scratch (natural
// order, scale folded in; 32 x K x 2 bytes, L2-resident), then a plain bf16 register-blocked GEMM
// over all of the expert's tokens. Returns false (nothing written) if a scale of the tile is outside
// [2, 252]: those tiles take the in-register path, which handles extreme scales exactly.
// Streaming its codes from DRAM, one thread dequantized 7.3 GB/s of them with the hardware
// prefetchers alone (28 GB/s L2-hot; a plain read loop reads 31-35): each 256-byte chunk of a row
// group also prefetches the codes kDequantAheadL1 bytes on into L1 and kDequantAheadL2 into L2 (into
// the next tile, the thread's next work item, near a tile's end), and each tile the next tile's
// scales: 11.6 GB/s (Zen 5, a `/tmp` harness over 920 MB of tiles; distances 1-16 KB tried).
constexpr int64_t kDequantAheadL1 = 2048, kDequantAheadL2 = 8192;

bool dequant_tile_bf16(WRows w, const uint8_t* s, int64_t lds, int64_t nb, uint16_t* dst) {
  for (int64_t o = 0; o < kTile * lds; o += 64) _mm_prefetch((const char*)s + kTile * lds + o, _MM_HINT_T0);
  if (!scales_in_range(s, lds, kTile, nb, 2, 252)) return false;
  const __m512i lut = _mm512_loadu_si512(kE2M1Bf16.v);
  const __mmask32 nonzero = ~((1u << 0) | (1u << 8) | (1u << 16) | (1u << 24));
  // in the weights' order: per row group, chunk by chunk (each 4 rows x 4 blocks, 256 bytes), then
  // the rows' partial chunks; each row's bf16 blocks go to its own row of dst
  auto one = [&](const uint8_t* src, int r, int64_t b) __attribute__((always_inline)) {
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)src));
    __m512i idx = _mm512_or_si512(v, _mm512_slli_epi32(v, 12));
    __m512i ls = _mm512_mask_add_epi16(lut, nonzero, lut, _mm512_set1_epi16(int16_t((s[r * lds + b] - 127) << 7)));
    _mm512_storeu_si512(dst + (r * nb + b) * 32, _mm512_permutexvar_epi16(idx, ls));
  };
  for (int r0 = 0; r0 < kTile; r0 += kGroupRows) {
    const WRows::Blocks wb = WRows{w.tile, w.ldw, w.r0 + r0}.blocks();
    for (int64_t b0 = 0; b0 < int64_t(wb.whole); b0 += 4) {
      const WRows::Block blk = wb.at(b0);
      for (int64_t l = 0; l < kChunk * kGroupRows; l += 64) {
        _mm_prefetch((const char*)blk.row(0) + l + kDequantAheadL1, _MM_HINT_T0);
        _mm_prefetch((const char*)blk.row(0) + l + kDequantAheadL2, _MM_HINT_T1);
      }
      for (int rr = 0; rr < kGroupRows; ++rr)
        for (int j = 0; j < 4; ++j) one(blk.row(rr) + 16 * j, r0 + rr, b0 + j);
    }
    for (int64_t b = int64_t(wb.whole); b < nb; ++b) {
      const WRows::Block blk = wb.at(b);
      for (int rr = 0; rr < kGroupRows; ++rr) one(blk.row(rr), r0 + rr, b);
    }
  }
  return true;
}

// out[r * M + m] for the kTile rows of a dequantized bf16 tile (row stride nb * 32) and M <= 4
// tokens: the dense GEMM's tiles (cpu_common.h).
void gemm_bf16_rows(const uint16_t* wt, int64_t nb, const uint16_t* const* xs, int M, float* out) {
  switch (M) {
#define GK_T(MM) \
  case MM:       \
    gk::bf16_gemm_rows<MM, false>(wt, nb * 32, kTile, xs, out, 0, 0, 0); \
    break;
    GK_T(1) GK_T(2) GK_T(3) GK_T(4)
#undef GK_T
    default:
      break;
  }
}
#endif

// Whether experts with kScratchMin+ tokens multiply on AMX tiles (gptoss_cpu_amx; off until asked),
// and how many work items (32 rows of an expert x all its tokens) have since the process started
// (gptoss_cpu_amx_items: benchmarks and tests see which path ran).
std::atomic<int> g_amx{0};
std::atomic<int64_t> g_amx_items{0};

#if defined(GK_AMX)
// Many tokens per expert on AMX (Sapphire Rapids and later Xeons, where vLLM-CPU's own bf16 MoE
// multiplies on tiles and AVX512_BF16 dot products ran 0.2-0.6x of it from 64 tokens, BENCHMARKS.md):
// the same dequantized scratch tile as above (32 rows, natural order, K bf16 a row) is the A operand,
// two 16-row tiles loaded straight from it; the expert's activations, transposed once per call into
// AMX's pair-interleaved layout (to_vnni), are B, 16 tokens a tile; C = 16 rows x 16 tokens fp32.
// Per 32 k: 2 A + up to 2 B loads for up to 4 TDPBF16PS (16 x 16 x 32 each).
constexpr int64_t kAmxTokens = 16;  // tokens (columns) of one B / C tile

// Elements of one group of kAmxTokens activation rows of K values in the pair-interleaved layout.
inline int64_t vnni_group_len(int64_t K) { return K * kAmxTokens; }

// rows[0 .. n) (n <= kAmxTokens bf16 rows of K values) -> dst in the pair-interleaved layout: pair p
// (k = 2p, 2p + 1) of token t at dst[(p * kAmxTokens + t) * 2 + {0, 1}]; tokens n.. are zeros.
void to_vnni(const uint16_t* const* rows, int n, int64_t K, uint16_t* dst) {
  uint32_t* d = (uint32_t*)dst;
  const int64_t pairs = K / 2;
  for (int t = 0; t < kAmxTokens; ++t) {
    if (t >= n) {
      for (int64_t p = 0; p < pairs; ++p) d[p * kAmxTokens + t] = 0;
      continue;
    }
    for (int64_t p = 0; p < pairs; ++p) std::memcpy(d + p * kAmxTokens + t, rows[t] + 2 * p, 4);
  }
}

// c[r * 32 + t] = row r of the scratch tile wt (kTile rows of K bf16) . token t of G groups of
// kAmxTokens tokens at xv (pair-interleaved, one group every vnni_group_len(K) elements), t < 16 G.
// Tiles: 0 / 1 C of rows 0-15 x groups 0 / 1, 2 / 3 C of rows 16-31, 4 / 5 A (rows 0-15 / 16-31),
// 6 / 7 B (groups 0 / 1).
template <int G>
void amx_tile_gemm(const uint16_t* wt, int64_t K, const uint16_t* xv, float* c) {
  static_assert(kTile == 2 * gk::amx::kRows, "a work tile is two A tiles");
  GK_AMX_ZERO(0);
  GK_AMX_ZERO(2);
  if constexpr (G == 2) {
    GK_AMX_ZERO(1);
    GK_AMX_ZERO(3);
  }
  const int64_t a_stride = K * 2;           // bytes between scratch rows
  const int64_t b_step = 16 * 2 * kAmxTokens;  // elements of 16 pairs (32 k) of one group
  for (int64_t kb = 0; kb < K / 32; ++kb) {
    GK_AMX_LOAD(4, wt + kb * 32, a_stride);
    GK_AMX_LOAD(5, wt + 16 * K + kb * 32, a_stride);
    GK_AMX_LOAD(6, xv + kb * b_step, 2 * 2 * kAmxTokens);
    GK_AMX_DP_BF16(0, 4, 6);
    GK_AMX_DP_BF16(2, 5, 6);
    if constexpr (G == 2) {
      GK_AMX_LOAD(7, xv + vnni_group_len(K) + kb * b_step, 2 * 2 * kAmxTokens);
      GK_AMX_DP_BF16(1, 4, 7);
      GK_AMX_DP_BF16(3, 5, 7);
    }
  }
  constexpr int64_t ldc = 32 * 4;  // bytes a row of c
  GK_AMX_STORE(0, c, ldc);
  GK_AMX_STORE(2, c + 16 * 32, ldc);
  if constexpr (G == 2) {
    GK_AMX_STORE(1, c + 16, ldc);
    GK_AMX_STORE(3, c + 16 * 32 + 16, ldc);
  }
}
#endif

enum Mode { kF32 = 0, kBf16 = 1, kQ16 = 2 };  // act_mode of gptoss_cpu_moe

inline bool all_rows(const void* const* rows, int M) {
  for (int m = 0; m < M; ++m)
    if (rows[m] == nullptr) return false;
  return true;
}

// Length of a row of n values in the nibble layout (0 where the build or the mode has none), and the
// conversion into it.
inline int64_t nib_len_or_0(int64_t n, bool bf16) {
#if defined(GK_BF16)
  return bf16 ? nib_len(n) : 0;
#else
  (void)n, (void)bf16;
  return 0;
#endif
}
inline bool to_nib_or_false(const uint16_t* x, int64_t n, uint16_t* dst) {
#if defined(GK_BF16)
  return to_nib(x, n, dst);
#else
  (void)x, (void)n, (void)dst;
  return false;
#endif
}

// Runtime M -> template; R = 4 rows for up to 4 tokens, 2 rows above (register budget: R*M <= 16
// accumulators; AVX2 has 16 registers, so its q16 keeps R*M <= 8; AVX-512's q16 takes the bf16
// path's R). A block of 4 rows is one row group of the weight layout: one sequential stream.
// xn: the same activation rows in the nibble layout for dot_bf16_nib (bf16 mode; a null row: that
// group of rows takes dot_bf16).
inline void dot_rows(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t lds, int64_t nb, const void* const* xs,
                     const void* const* xn, int M, float* out /* [kTile][M] for the tile's rows */, Mode mode) {
#define GK_CASE(MM, RR, RQ)                                                                      \
  case MM:                                                                                       \
    if (mode == kQ16) {                                                                          \
      GK_Q16_CALL(GK_Q16_ROWS(RR, RQ), MM)                                                       \
    } else if (mode == kBf16) {                                                                  \
      for (int r0 = 0; r0 < kTile; r0 += RR) GK_BF16_CALL(RR, MM)                                \
    } else {                                                                                     \
      for (int r0 = 0; r0 < kTile; r0 += RR)                                                     \
        dot_f32<RR, MM>(WRows{w, ldw, r0}, s + r0 * lds, lds, nb, (const float* const*)xs,      \
                        out + r0 * MM);                                                          \
    }                                                                                            \
    break;
#if defined(GK_BF16)
#define GK_BF16_CALL(RR, MM)                                                                        \
  {                                                                                                 \
    if (all_rows(xn, MM) && nib_scales_ok(s + r0 * lds, lds, RR, nb))                               \
      dot_bf16_nib<RR, MM>(WRows{w, ldw, r0}, s + r0 * lds, lds, nb, (const uint16_t* const*)xn,  \
                           out + r0 * MM);                                                          \
    else                                                                                            \
      dot_bf16<RR, MM>(WRows{w, ldw, r0}, s + r0 * lds, lds, nb, (const uint16_t* const*)xs,      \
                       out + r0 * MM);                                                              \
  }
#else
#define GK_BF16_CALL(RR, MM) {}
#endif
#if defined(GK_Q16)
#if defined(GK_AVX512)
#define GK_Q16_ROWS(RR, RQ) RR
#else
#define GK_Q16_ROWS(RR, RQ) RQ
#endif
#define GK_Q16_CALL(RQ, MM)                                                                      \
  {                                                                                              \
    Q16Row rows[MM];                                                                             \
    const float* xf[MM];                                                                         \
    for (int m = 0; m < MM; ++m) rows[m] = *(const Q16Row*)xs[m], xf[m] = rows[m].xf;            \
    for (int r0 = 0; r0 < kTile; r0 += RQ) {                                                     \
      if (q16_scales_ok(s + r0 * lds, lds, RQ, nb))                                              \
        dot_q16<RQ, MM>(WRows{w, ldw, r0}, s + r0 * lds, lds, nb, rows, out + r0 * MM);         \
      else                                                                                       \
        dot_f32<RQ, MM>(WRows{w, ldw, r0}, s + r0 * lds, lds, nb, xf, out + r0 * MM);           \
    }                                                                                            \
  }
#else
#define GK_Q16_CALL(RQ, MM) {}
#endif
  switch (M) {
    GK_CASE(1, 4, 4)
    GK_CASE(2, 4, 4)
    GK_CASE(3, 4, 2)
    GK_CASE(4, 4, 2)
    GK_CASE(5, 2, 1)
    GK_CASE(6, 2, 1)
    GK_CASE(7, 2, 1)
    GK_CASE(8, 2, 1)
    default:
      break;
  }
#undef GK_CASE
#undef GK_BF16_CALL
#undef GK_Q16_CALL
#undef GK_Q16_ROWS
}

#ifndef GK_SCRATCH_MIN
#define GK_SCRATCH_MIN 8
#endif
constexpr int64_t kScratchMin = GK_SCRATCH_MIN;  // tokens of one expert from which the bf16 scratch tile pays off

// The tile's 32 rows against every slot jb..je of one expert: emit(j0, M, h) per group of up to
// kMaxM slots (32 on AMX), h[r * M + m] = row r . activation of slot j0 + m. xptr(j): slot j's
// activation row in the mode's layout; nptr(j): the same row in the nibble layout (bf16 mode; else
// unused); xv: the slots' rows in AMX's pair-interleaved layout (to_vnni, groups of kAmxTokens from
// slot jb), or null where the expert does not take the AMX path.
template <typename XPtr, typename NPtr, typename Emit>
void tile_all_tokens(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t nb, Mode mode, int64_t jb,
                     int64_t je, const XPtr& xptr, const NPtr& nptr, const uint16_t* xv, const Emit& emit) {
  (void)xv;  // (builds without AMX)
  float h[kTile * kMaxM];
  const void* xs[kMaxM];
  const void* xn[kMaxM];
#if defined(GK_BF16)
  if (mode == kBf16 && je - jb >= kScratchMin) {
    thread_local std::vector<uint16_t> scratch;
    scratch.resize((size_t)kTile * nb * 32);
    if (dequant_tile_bf16(WRows{w, ldw, 0}, s, nb, nb, scratch.data())) {
#if defined(GK_AMX)
      if (xv != nullptr) {
        const int64_t K = nb * 32;
        float c[kTile * 2 * kAmxTokens], h2[kTile * 2 * kAmxTokens];
        gk::amx::configure();
        for (int64_t j0 = jb; j0 < je; j0 += 2 * kAmxTokens) {
          const int M = (int)std::min<int64_t>(2 * kAmxTokens, je - j0);
          const uint16_t* g = xv + (j0 - jb) / kAmxTokens * vnni_group_len(K);
          if (M > kAmxTokens)
            amx_tile_gemm<2>(scratch.data(), K, g, c);
          else
            amx_tile_gemm<1>(scratch.data(), K, g, c);
          for (int r = 0; r < kTile; ++r)
            for (int m = 0; m < M; ++m) h2[r * M + m] = c[r * 2 * kAmxTokens + m];
          emit(j0, M, h2);
        }
        gk::amx::release();
        g_amx_items.fetch_add(1, std::memory_order_relaxed);
        return;
      }
#endif
      for (int64_t j0 = jb; j0 < je; j0 += 4) {
        const int M = (int)std::min<int64_t>(4, je - j0);
        for (int m = 0; m < M; ++m) xs[m] = xptr(j0 + m);
        gemm_bf16_rows(scratch.data(), nb, (const uint16_t* const*)xs, M, h);
        emit(j0, M, h);
      }
      return;
    }
  }
#endif
  const int maxm = mode == kF32 ? 4 : kMaxM;  // fp32 keeps 2 registers of activations per token
  for (int64_t j0 = jb; j0 < je; j0 += maxm) {
    const int M = (int)std::min<int64_t>(maxm, je - j0);
    for (int m = 0; m < M; ++m) xs[m] = xptr(j0 + m), xn[m] = nptr(j0 + m);
    dot_rows(w, s, ldw, nb, nb, xs, xn, M, h, mode);
    emit(j0, M, h);
  }
}

}  // namespace

extern "C" {

// The row-group layout of the expert codes that gptoss_cpu_moe reads: rows per group, bytes a chunk.
int gptoss_cpu_group_rows() { return int(kGroupRows); }
int gptoss_cpu_chunk_bytes() { return int(kChunk); }

// Bit 0: AVX-512 fp32 path, bit 1: AVX512_BF16 path, bit 2: AVX2 path (none of them: scalar);
// bit 3: the q16 mode (AVX2 or AVX-512 builds), bit 4: its dot products use VNNI (AVX512_VNNI in
// AVX-512 builds, AVX-VNNI in AVX2 builds); bit 5: AMX tiles (AMX-BF16 builds), bit 6: their
// software model instead (-DGK_AMX_EMULATE: tests).
int gptoss_cpu_features() {
  int f = 0;
#if defined(GK_AVX512)
  f |= 1;
#endif
#if defined(GK_BF16)
  f |= 2;
#endif
#if defined(GK_AVX2)
  f |= 4;
#endif
#if defined(GK_Q16)
  f |= 8;
#endif
#if (defined(GK_AVX512) && defined(__AVX512VNNI__)) || (defined(GK_AVX2) && defined(__AVXVNNI__))
  f |= 16;
#endif
#if defined(GK_AMX) && !defined(GK_AMX_EMULATE)
  f |= 32;
#endif
#if defined(GK_AMX_EMULATE) && defined(GK_AMX)
  f |= 64;
#endif
  return f;
}

// The AMX path for experts with kScratchMin+ tokens (bf16 mode), process-wide: on = 1 asks for it
// (on Linux, first for the tile registers: arch_prctl), 0 turns it off. Returns whether it is on
// now, or -1 when asked for in a build without AMX tiles (features bits 5 / 6).
int gptoss_cpu_amx(int on) {
#if defined(GK_AMX)
  g_amx.store(on && gk::amx::request_permission() ? 1 : 0);
  return g_amx.load();
#else
  return on ? -1 : 0;
#endif
}

// Work items that took the AMX path since the process started.
int64_t gptoss_cpu_amx_items() { return g_amx_items.load(); }

// act_mode 0: x and out are fp32 [T, H]; 1: bf16 (only when built with AVX512_BF16); 2: x and out
// fp32, activations and the SwiGLU output quantized to int16 per 32-block inside the call (AVX2 and
// AVX-512 builds: for bf16/fp16 models, whose activations carry ~2^-9 relative rounding already).
// Returns 0, or 1 with *bad = the first expert id outside [-1, E), or 2 for an unsupported mode.
int gptoss_cpu_moe(int act_mode, const void* x_, void* out_, int64_t T, int64_t H, int64_t I, int64_t E,
                   int64_t K, const float* topk_w, const int32_t* topk_ids, const uint8_t* w13,
                   const uint8_t* s13, const float* b13, const uint8_t* w2, const uint8_t* s2, const float* b2,
                   float alpha, float limit, int64_t* bad) {
  const Mode mode = Mode(act_mode);
  const bool bf16 = mode == kBf16, q16 = mode == kQ16;
#if !defined(GK_BF16)
  if (bf16) return 2;
#endif
#if !defined(GK_Q16)
  if (q16) return 2;
#endif
  if (act_mode < 0 || act_mode > 2) return 2;
  const int64_t S = T * K, N1 = 2 * I;
  // ---- routing: slots grouped by expert (counting sort keeps slots in token order)
  std::vector<int64_t> off(E + 1, 0), slots;
  for (int64_t i = 0; i < S; ++i) {
    int32_t e = topk_ids[i];
    if (e < -1 || e >= E) {
      *bad = e;
      return 1;
    }
    if (e >= 0) off[e + 1]++;
  }
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  slots.resize(off[E]);
  {
    std::vector<int64_t> fill(off.begin(), off.end() - 1);
    for (int64_t i = 0; i < S; ++i)
      if (topk_ids[i] >= 0) slots[fill[topk_ids[i]]++] = i;
  }
  // ---- activations in the mode's layout
  const size_t esz = bf16 ? 2 : 4;
  std::vector<float> xperm;
  const char* xa = (const char*)x_;
  if (!bf16) {
    xperm.resize(T * H);
    const float* x = (const float*)x_;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < H; ++c) xperm[t * H + perm_pos(c)] = x[t * H + c];
    xa = (const char*)xperm.data();
  }
  // q16: the quantized rows (one Q16Row per activation row is what the tiles get)
  Q16Buffer xq, aq;
  if (q16) {
    xq.resize(T, H);
    run_items(T, [&](int64_t t) { xq.quantize(t, xperm.data() + t * H); });
  }
  // bf16: the rows that meet an expert with fewer than kScratchMin tokens (the in-register path)
  // again in the nibble layout of dot_bf16_nib, where their values allow it (xnib_ok / anib_ok)
  auto in_small_expert = [&](int64_t slot) {
    const int32_t e = topk_ids[slot];
    return e >= 0 && off[e + 1] - off[e] < kScratchMin;
  };
  const int64_t Hn = nib_len_or_0(H, bf16), In = nib_len_or_0(I, bf16);
  std::vector<uint16_t> xnib((size_t)T * Hn), anib((size_t)S * In);
  std::vector<uint8_t> xnib_ok(T, 0), anib_ok(S, 0);
  if (bf16)
    run_items(T, [&](int64_t t) {
      bool need = false;
      for (int64_t j = 0; j < K; ++j) need |= in_small_expert(t * K + j);
      if (need) xnib_ok[t] = to_nib_or_false((const uint16_t*)x_ + t * H, H, xnib.data() + t * Hn);
    });
  // AMX: the activation rows of the experts with kScratchMin+ tokens (those that take the scratch
  // tile) in the pair-interleaved layout, kAmxTokens slots a group, per projection: vgroup[e] is
  // expert e's first group (vgroup[e] == vgroup[e + 1]: the expert does not take the AMX path).
  std::vector<uint16_t> xv, av;
#if defined(GK_AMX)
  std::vector<int64_t> vgroup(E + 1, 0);
  std::vector<std::pair<int32_t, int32_t>> vgroups;  // (expert, group)
  if (bf16 && g_amx.load(std::memory_order_relaxed))
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      const int64_t groups = n >= kScratchMin ? (n + kAmxTokens - 1) / kAmxTokens : 0;
      for (int64_t g = 0; g < groups; ++g) vgroups.emplace_back(int32_t(e), int32_t(g));
      vgroup[e + 1] = vgroup[e] + groups;
    }
  // slot j's row: row(j); the groups of all AMX experts into buf, in parallel
  auto fill_vnni = [&](std::vector<uint16_t>& buf, int64_t K, auto row) {
    buf.resize((size_t)vgroup[E] * vnni_group_len(K));
    run_items((int64_t)vgroups.size(), [&](int64_t i) {
      const int64_t e = vgroups[i].first, j0 = off[e] + int64_t(vgroups[i].second) * kAmxTokens;
      const int n = (int)std::min<int64_t>(kAmxTokens, off[e + 1] - j0);
      const uint16_t* rows[kAmxTokens];
      for (int t = 0; t < n; ++t) rows[t] = row(j0 + t);
      to_vnni(rows, n, K, buf.data() + (vgroup[e] + vgroups[i].second) * vnni_group_len(K));
    });
  };
  auto vnni_of = [&](const std::vector<uint16_t>& buf, int64_t e, int64_t K) -> const uint16_t* {
    return vgroup[e] == vgroup[e + 1] ? nullptr : buf.data() + vgroup[e] * vnni_group_len(K);
  };
  if (!vgroups.empty())
    fill_vnni(xv, H, [&](int64_t j) { return (const uint16_t*)x_ + (slots[j] / K) * H; });
#else
  auto vnni_of = [](const std::vector<uint16_t>&, int64_t, int64_t) -> const uint16_t* { return nullptr; };
#endif
  std::vector<char> act((size_t)S * I * esz);       // SwiGLU output per slot, mode layout
  std::vector<float> ybuf((size_t)S * H);           // weighted expert output per slot
  // ---- work items: (expert, 32-row tile), taken by the threads in runs of consecutive items: the
  // tiles of an expert are adjacent in memory, and a thread that streams a run of them reads next
  // what its prefetches fetched (4 register blocks ahead, across tile ends). Tiles taken alternately
  // by 2 threads made each core prefetch the other's next tile into its own L2 (on AMD Zen the L3 is
  // a victim cache): 2 threads then ran one-token layers slower than 1 thread (Zen 5, from DRAM: 31
  // -> 57-61 GB/s with runs of 16-64; BENCHMARKS.md). When every expert has few tokens (decode), the
  // items cost alike and the runs are as long as they can be: kRunsPerThread per thread (each thread
  // streams long stretches, and no thread is left with a last run of 16 while the other waits; Zen
  // 5, one token, same process: 1.02-1.10x over runs of 16); otherwise runs of kItemRun, which
  // balance experts of unequal token counts.
  std::vector<std::pair<int32_t, int32_t>> items1, items2;
  for (int64_t e = 0; e < E; ++e) {
    if (off[e + 1] == off[e]) continue;
    for (int64_t n = 0; n < N1; n += kTile) items1.emplace_back(int32_t(e), int32_t(n));
    for (int64_t n = 0; n < H; n += kTile) items2.emplace_back(int32_t(e), int32_t(n));
  }
  bool decode = true;
  for (int64_t e = 0; e < E; ++e) decode &= off[e + 1] - off[e] < kScratchMin;
  const int64_t runs = int64_t(omp_get_max_threads()) * kRunsPerThread;
  auto run_len = [&](size_t n) { return decode ? std::max<int64_t>(1, (int64_t(n) + runs - 1) / runs) : kItemRun; };
  // gate_up + bias + clamped SwiGLU
  run_item_runs((int64_t)items1.size(), run_len(items1.size()), [&](int64_t it) {
    const int64_t e = items1[it].first, n0 = items1[it].second;
    const uint8_t* w = w13 + (e * N1 + n0) * (H / 2);
    const uint8_t* s = s13 + (e * N1 + n0) * (H / kBlock);
    auto xptr = [&](int64_t j) -> const void* {
      return q16 ? (const void*)&xq.rows[slots[j] / K] : xa + (slots[j] / K) * H * esz;
    };
    auto nptr = [&](int64_t j) -> const void* {
      return in_small_expert(slots[j]) && xnib_ok[slots[j] / K] ? xnib.data() + (slots[j] / K) * Hn : nullptr;
    };
    tile_all_tokens(w, s, H / 2, H / kBlock, mode, off[e], off[e + 1], xptr, nptr, vnni_of(xv, e, H),
                    [&](int64_t j0, int M, const float* h) {
      for (int m = 0; m < M; ++m) {
        char* arow = act.data() + (size_t)slots[j0 + m] * I * esz;
        float a[kTile / 2];
        swiglu_pairs(h, M, m, b13 ? b13 + e * N1 + n0 : nullptr, alpha, limit, a);
        for (int p = 0; p < kTile / 2; ++p) {
          const int64_t c = n0 / 2 + p;
          if (bf16)
            ((uint16_t*)arow)[c] = f32_to_bf16(a[p]);
          else
            ((float*)arow)[perm_pos(c)] = a[p];
        }
      }
    });
  });
  if (bf16)
    run_items(S, [&](int64_t j) {
      if (in_small_expert(j)) anib_ok[j] = to_nib_or_false((const uint16_t*)act.data() + j * I, I, anib.data() + j * In);
    });
#if defined(GK_AMX)
  if (!vgroups.empty()) {
    std::vector<uint16_t>().swap(xv);  // gate_up's copy is done with: the two are never held at once
    fill_vnni(av, I, [&](int64_t j) { return (const uint16_t*)act.data() + slots[j] * I; });
  }
#endif
  if (q16) {  // the SwiGLU output of each routed slot, quantized as the input was
    aq.resize(S, I);
    run_items(S, [&](int64_t j) {
      if (topk_ids[j] >= 0) aq.quantize(j, (const float*)act.data() + j * I);
    });
  }
  // down + bias, times the routing weight
  run_item_runs((int64_t)items2.size(), run_len(items2.size()), [&](int64_t it) {
    const int64_t e = items2[it].first, n0 = items2[it].second;
    const uint8_t* w = w2 + (e * H + n0) * (I / 2);
    const uint8_t* s = s2 + (e * H + n0) * (I / kBlock);
    auto aptr = [&](int64_t j) -> const void* {
      return q16 ? (const void*)&aq.rows[slots[j]] : act.data() + (size_t)slots[j] * I * esz;
    };
    auto nptr = [&](int64_t j) -> const void* {
      return in_small_expert(slots[j]) && anib_ok[slots[j]] ? anib.data() + slots[j] * In : nullptr;
    };
    tile_all_tokens(w, s, I / 2, I / kBlock, mode, off[e], off[e + 1], aptr, nptr, vnni_of(av, e, I),
                    [&](int64_t j0, int M, const float* y) {
      for (int m = 0; m < M; ++m) {
        const int64_t slot = slots[j0 + m];
        const float rw = topk_w[slot];
        float* yrow = ybuf.data() + slot * H + n0;
        for (int r = 0; r < kTile; ++r) yrow[r] = (y[r * M + m] + (b2 ? b2[e * H + n0 + r] : 0.f)) * rw;
      }
    });
  });
  // per-token sum of its valid slots (every output element is written)
  run_items(T, [&](int64_t t) {
    float* acc = nullptr;
    std::vector<float> tmp(H, 0.f);
    acc = tmp.data();
    for (int64_t j = 0; j < K; ++j) {
      if (topk_ids[t * K + j] < 0) continue;
      const float* yrow = ybuf.data() + (t * K + j) * H;
      for (int64_t c = 0; c < H; ++c) acc[c] += yrow[c];
    }
    if (bf16) {
      uint16_t* o = (uint16_t*)out_ + t * H;
      for (int64_t c = 0; c < H; ++c) o[c] = f32_to_bf16(acc[c]);
    } else {
      std::memcpy((float*)out_ + t * H, acc, H * sizeof(float));
    }
  });
  return 0;
}

}  // extern "C"
