// What the native CPU kernels of gptoss_kernels/cpu share: the bf16 rounding torch uses, the
// horizontal sum of an AVX register, the work-item loops over the caller's OpenMP threads, and the
// bf16 GEMM tile.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include <omp.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

// The instruction-set paths a build has (-march=native picks them): AVX-512 (F + BW) fp32 path,
// AVX512_BF16 dot products on top of it, else AVX2 + FMA; none: scalar.
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define GK_AVX512 1
#endif
#if defined(GK_AVX512) && defined(__AVX512BF16__)
#define GK_BF16 1
#endif
#if !defined(GK_AVX512) && defined(__AVX2__) && defined(__FMA__)
#define GK_AVX2 1
#endif

// The cache level the decode loops (the AVX-512 MoE's few-token paths, the dense GEMVs) prefetch
// the weights they read next into: _MM_HINT_T0 (L1) or _MM_HINT_T1 (L2). The build chooses per CPU
// (gptoss_kernels/cpu/__init__.py, PREFETCH_HINTS: measured, not guessed); T0 when built by hand.
#if !defined(GK_BF16_PREFETCH_HINT)
#define GK_BF16_PREFETCH_HINT _MM_HINT_T0
#endif

namespace gk {

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch's .to(bfloat16)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);  // NaN stays NaN
  b += 0x7fffu + ((b >> 16) & 1u);
  return uint16_t(b >> 16);
}

inline float bf16_to_f32(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

#if defined(__AVX2__)
inline float hsum256(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
#endif

// f(i) for i in [0, n), items taken from an atomic counter by the threads of the caller's OpenMP
// runtime (the libgomp torch uses, so torch.set_num_threads and vLLM's thread binding apply).
template <typename F>
void run_items(int64_t n, const F& f) {
  std::atomic<int64_t> next{0};
  const int nth = (int)std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(n, 1));
#pragma omp parallel num_threads(nth)
  {
    for (;;) {
      int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      f(i);
    }
  }
}

// As run_items, the items taken in runs of `chunk` consecutive ones (the last run may be shorter):
// for items whose data lie one after another in memory, so that each thread streams a contiguous
// stretch and what its prefetches fetch ahead is what it reads next.
template <typename F>
void run_item_runs(int64_t n, int64_t chunk, const F& f) {
  const int64_t runs = (n + chunk - 1) / chunk;
  run_items(runs, [&](int64_t c) {
    for (int64_t i = c * chunk, e = std::min(n, (c + 1) * chunk); i < e; ++i) f(i);
  });
}

// f(begin, end) once per thread of the caller's OpenMP runtime, on consecutive equal stretches of
// [0, n): each thread streams one contiguous range (for memory-bound loops over adjacent rows,
// whose prefetches then fetch what the same thread reads next).
template <typename F>
void run_stretches(int64_t n, const F& f) {
  const int nth = (int)std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(n, 1));
#pragma omp parallel num_threads(nth)
  {
    const int64_t t = omp_get_thread_num();
    f(n * t / nth, n * (t + 1) / nth);
  }
}

#if defined(GK_BF16)
// ------------------------------------------------------------------ bf16 GEMM tiles (vdpbf16ps)
// h[r * M + m] = W[r, :] . x_m over a bf16 weight in plain row-major order: the dense GEMM of
// linear_cpu.cpp (on the layer's weight) and the MoE's many-token path of moe_cpu.cpp (on a tile
// of an expert dequantized into bf16 scratch). Tiles of R rows x M tokens: per 32 k, R + M loads
// for R M vdpbf16ps, the M activation registers reused across the R rows; 8 x M up to 3 tokens and
// 6 x 4 (at most 24 accumulators of the 32 registers). Measured on AMD Zen 4 (dense layers, weights
// L3-resident, 48-64 tokens): 8 x 3 350-406 GFLOP/s, 6 x 4 349-369, 4 x 6 322-370, 3 x 8 281-296;
// groups of 4 tokens on 6 x 4 tiles 1.05-1.14x groups of 3 at 4 and 16 tokens (BENCHMARKS.md).
template <int M>
constexpr int kBf16TileRows = M == 4 ? 6 : 8;

// R rows at w (row stride K, a multiple of 32) against M tokens xs[m] (K bf16 each). With
// kPrefetch, also prefetches into L2 the same rows `next` elements further on, k blocks [lo, hi)
// of them (a caller streaming its next block of rows while this one computes).
template <int R, int M, bool kPrefetch>
inline void bf16_gemm_tile(const uint16_t* w, int64_t K, const uint16_t* const* xs, float* h, int64_t next,
                           int64_t lo, int64_t hi) {
  const int64_t kb = K / 32;
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < kb; ++b) {
    __m512bh xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs[m] + b * 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (kPrefetch && b >= lo && b < hi) _mm_prefetch((const char*)(w + r * K + b * 32 + next), _MM_HINT_T1);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + b * 32);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) h[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}

// Rows [0, rows) of w against M tokens: h[r * M + m], in kBf16TileRows<M>-row tiles, then 2- and
// 1-row ones for what is left.
template <int M, bool kPrefetch>
void bf16_gemm_rows(const uint16_t* w, int64_t K, int64_t rows, const uint16_t* const* xs, float* h,
                    int64_t next, int64_t lo, int64_t hi) {
  int64_t r = 0;
  constexpr int R = kBf16TileRows<M>;
  for (; r + R <= rows; r += R) bf16_gemm_tile<R, M, kPrefetch>(w + r * K, K, xs, h + r * M, next, lo, hi);
  for (; r + 2 <= rows; r += 2) bf16_gemm_tile<2, M, kPrefetch>(w + r * K, K, xs, h + r * M, next, lo, hi);
  for (; r < rows; ++r) bf16_gemm_tile<1, M, kPrefetch>(w + r * K, K, xs, h + r * M, next, lo, hi);
}
#endif

}  // namespace gk
