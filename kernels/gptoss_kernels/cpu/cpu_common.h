// What the native CPU kernels of gptoss_kernels/cpu share: the bf16 rounding torch uses, the
// horizontal sum of an AVX register, and the work-item loop over the caller's OpenMP threads.
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

// The cache level the AVX512_BF16 decode loops (the MoE's few-token path, the dense GEMV) prefetch
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

}  // namespace gk
