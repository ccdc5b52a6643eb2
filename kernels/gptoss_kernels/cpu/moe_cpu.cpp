// gpt-oss MXFP4 Mixture-of-Experts on x86 CPUs: the whole MoE of one layer in one call.
//
// Built per machine with -march=native (gptoss_kernels/cpu/__init__.py); the code paths below are
// chosen at compile time from the compiler's ISA macros:
//   AVX-512 (F+BW) + AVX512_BF16   bf16 activations: E2M1 codes -> bf16 through a 32-entry word
//                                  table (vpermw) whose exponents already carry the block's E8M0
//                                  scale, then vdpbf16ps (products exact, fp32 sums)
//   AVX-512 (F+BW)                 fp32 activations: codes -> fp32 through a 16-entry table
//                                  (vpermps) pre-multiplied by the scale, fp32 FMA
//   AVX2 + FMA                     fp32, 8 magnitudes by vpermps + sign bit by xor
//   anything else                  scalar fp32 (same layout, same results up to summation order)
// Dequantization happens in registers inside the dot products: no expert is ever expanded in memory.
//
// Weights are read in the checkpoint / vLLM parameter layout, unchanged:
//   blocks uint8 [E, N, K/2] (two E2M1 codes a byte, low nibble = even element), scales uint8
//   E8M0 [E, N, K/32]. Rows of one expert are contiguous, so a tile of rows is a few sequential
//   streams; no repacking is needed (and none is done: memory stays MXFP4-sized).
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
//   bf16 mode: natural order (a code byte is an adjacent pair, which is what vdpbf16ps pairs).

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define GK_AVX512 1
#endif
#if defined(GK_AVX512) && defined(__AVX512BF16__)
#define GK_BF16 1
#endif
#if !defined(GK_AVX512) && defined(__AVX2__) && defined(__FMA__)
#define GK_AVX2 1
#endif

namespace {

constexpr int kBlock = 32;   // elements per E8M0 scale
constexpr int kTile = 32;    // rows per work item (gate_up: 16 gate/up pairs)
constexpr int kMaxM = 8;     // tokens per register block

const float kE2M1[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                         -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

struct ScaleTable {
  float v[256];
  ScaleTable() {
    for (int s = 0; s < 256; ++s) v[s] = s == 255 ? NAN : std::ldexp(1.0f, s - 127);  // 2^-127 is subnormal
  }
};
const ScaleTable kScale;

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch's .to(bfloat16)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);  // NaN stays NaN
  b += 0x7fffu + ((b >> 16) & 1u);
  return uint16_t(b >> 16);
}

// position of element c of a K-row in the fp32 mode's even/odd-split layout
inline int64_t perm_pos(int64_t c) {
  int64_t w = c & 31;
  return (c & ~int64_t(31)) + ((w & 1) ? 16 + (w >> 1) : (w >> 1));
}

// --------------------------------------------------------------------------------- fp32 dot tiles
// out[r * M + m] = sum_k W[r, k] * X_m[k] for R rows starting at w (row stride ldw bytes, scale row
// stride lds) and M activation rows xs[m] (fp32, even/odd-split layout), nb blocks of 32.
template <int R, int M>
void dot_f32(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t lds, int64_t nb,
             const float* const* xs, float* out) {
#if defined(GK_AVX512)
  const __m512 lut = _mm512_loadu_ps(kE2M1);
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512 xe[M], xo[M];  // the block's activations stay in registers across the R rows
    for (int m = 0; m < M; ++m) {
      xe[m] = _mm512_loadu_ps(xs[m] + b * 32);
      xo[m] = _mm512_loadu_ps(xs[m] + b * 32 + 16);
    }
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(w + r * ldw + b * 16)));
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
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < R; ++r) {
      __m128i c = _mm_loadu_si128((const __m128i*)(w + r * ldw + b * 16));
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
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const float sc = kScale.v[s[r * lds + b]];
        const uint8_t* wb = w + r * ldw + b * 16;
        const float* xb = xs[m] + b * 32;
        for (int i = 0; i < 16; ++i)
          acc += kE2M1[wb[i] & 15] * sc * xb[i] + kE2M1[wb[i] >> 4] * sc * xb[16 + i];
      }
      out[r * M + m] = acc;
    }
#endif
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
void dot_bf16(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t lds, int64_t nb,
              const uint16_t* const* xs, float* out) {
  const __m512i lut = _mm512_loadu_si512(kE2M1Bf16.v);
  // the four (+-)0 entries must stay zero when the scale is added to the exponent bits
  const __mmask32 nonzero = ~((1u << 0) | (1u << 8) | (1u << 16) | (1u << 24));
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512bh xv[M];  // the block's activations stay in registers across the R rows
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs[m] + b * 32);
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(w + r * ldw + b * 16)));
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
// Many tokens per expert: dequantize the 32-row tile once into a per-thread bf16 scratch (natural
// order, scale folded in; 32 x K x 2 bytes, L2-resident), then a plain bf16 register-blocked GEMM
// over all of the expert's tokens. Returns false (nothing written) if a scale of the tile is outside
// [2, 252]: those tiles take the in-register path, which handles extreme scales exactly.
bool dequant_tile_bf16(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t lds, int64_t nb, uint16_t* dst) {
  for (int r = 0; r < kTile; ++r)
    for (int64_t b = 0; b < nb; ++b)
      if (s[r * lds + b] < 2 || s[r * lds + b] > 252) return false;
  const __m512i lut = _mm512_loadu_si512(kE2M1Bf16.v);
  const __mmask32 nonzero = ~((1u << 0) | (1u << 8) | (1u << 16) | (1u << 24));
  for (int r = 0; r < kTile; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(w + r * ldw + b * 16)));
      __m512i idx = _mm512_or_si512(v, _mm512_slli_epi32(v, 12));
      __m512i ls = _mm512_mask_add_epi16(lut, nonzero, lut, _mm512_set1_epi16(int16_t((s[r * lds + b] - 127) << 7)));
      _mm512_storeu_si512(dst + (r * nb + b) * 32, _mm512_permutexvar_epi16(idx, ls));
    }
  return true;
}

// out[r * M + m] for R rows of a dequantized bf16 tile (row stride ld elements).
template <int R, int M>
void gemm_bf16_tile(const uint16_t* wt, int64_t ld, int64_t nb, const uint16_t* const* xs, float* out) {
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512bh xv[M];
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs[m] + b * 32);
    for (int r = 0; r < R; ++r) {
      __m512bh wv = (__m512bh)_mm512_loadu_si512(wt + r * ld + b * 32);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}

void gemm_bf16_rows(const uint16_t* wt, int64_t nb, const uint16_t* const* xs, int M, float* out) {
  const int64_t ld = nb * 32;
  switch (M) {
#define GK_T(MM) \
  case MM:       \
    for (int r0 = 0; r0 < kTile; r0 += 4) gemm_bf16_tile<4, MM>(wt + r0 * ld, ld, nb, xs, out + r0 * MM); \
    break;
    GK_T(1) GK_T(2) GK_T(3) GK_T(4)
#undef GK_T
    default:
      break;
  }
}
#endif

// Runtime M -> template; R = 4 rows for up to 4 tokens, 2 rows above (register budget: R*M <= 16
// accumulators).
template <typename X>
void dot_rows(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t lds, int64_t nb, const X* const* xs,
              int M, float* out /* [kTile][M] for the tile's rows */, bool bf16) {
#define GK_CASE(MM, RR)                                                                     \
  case MM:                                                                                  \
    for (int r0 = 0; r0 < kTile; r0 += RR) {                                                \
      if (bf16) GK_BF16_CALL(RR, MM) else                                                   \
        dot_f32<RR, MM>(w + r0 * ldw, s + r0 * lds, ldw, lds, nb, (const float* const*)xs, \
                        out + r0 * MM);                                                     \
    }                                                                                       \
    break;
#if defined(GK_BF16)
#define GK_BF16_CALL(RR, MM) \
  dot_bf16<RR, MM>(w + r0 * ldw, s + r0 * lds, ldw, lds, nb, (const uint16_t* const*)xs, out + r0 * MM);
#else
#define GK_BF16_CALL(RR, MM) {}
#endif
  switch (M) {
    GK_CASE(1, 4)
    GK_CASE(2, 4)
    GK_CASE(3, 4)
    GK_CASE(4, 4)
    GK_CASE(5, 2)
    GK_CASE(6, 2)
    GK_CASE(7, 2)
    GK_CASE(8, 2)
    default:
      break;
  }
#undef GK_CASE
#undef GK_BF16_CALL
}

#ifndef GK_SCRATCH_MIN
#define GK_SCRATCH_MIN 8
#endif
constexpr int64_t kScratchMin = GK_SCRATCH_MIN;  // tokens of one expert from which the bf16 scratch tile pays off

// The tile's 32 rows against every slot jb..je of one expert: emit(j0, M, h) per group of up to
// kMaxM slots, h[r * M + m] = row r . activation of slot j0 + m.
template <typename XPtr, typename Emit>
void tile_all_tokens(const uint8_t* w, const uint8_t* s, int64_t ldw, int64_t nb, bool bf16, int64_t jb,
                     int64_t je, const XPtr& xptr, const Emit& emit) {
  float h[kTile * kMaxM];
  const void* xs[kMaxM];
#if defined(GK_BF16)
  if (bf16 && je - jb >= kScratchMin) {
    thread_local std::vector<uint16_t> scratch;
    scratch.resize((size_t)kTile * nb * 32);
    if (dequant_tile_bf16(w, s, ldw, nb, nb, scratch.data())) {
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
  const int maxm = bf16 ? kMaxM : 4;  // fp32 keeps 2 registers of activations per token
  for (int64_t j0 = jb; j0 < je; j0 += maxm) {
    const int M = (int)std::min<int64_t>(maxm, je - j0);
    for (int m = 0; m < M; ++m) xs[m] = xptr(j0 + m);
    dot_rows(w, s, ldw, nb, nb, xs, M, h, bf16);
    emit(j0, M, h);
  }
}

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

}  // namespace

extern "C" {

// Bit 0: AVX-512 fp32 path, bit 1: AVX512_BF16 path, bit 2: AVX2 path (none set: scalar).
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
  return f;
}

// act_mode 0: x and out are fp32 [T, H]; 1: bf16 (only when built with AVX512_BF16).
// Returns 0, or 1 with *bad = the first expert id outside [-1, E), or 2 for an unsupported mode.
int gptoss_cpu_moe(int act_mode, const void* x_, void* out_, int64_t T, int64_t H, int64_t I, int64_t E,
                   int64_t K, const float* topk_w, const int32_t* topk_ids, const uint8_t* w13,
                   const uint8_t* s13, const float* b13, const uint8_t* w2, const uint8_t* s2, const float* b2,
                   float alpha, float limit, int64_t* bad) {
  const bool bf16 = act_mode == 1;
#if !defined(GK_BF16)
  if (bf16) return 2;
#endif
  if (act_mode != 0 && act_mode != 1) return 2;
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
  std::vector<char> act((size_t)S * I * esz);       // SwiGLU output per slot, mode layout
  std::vector<float> ybuf((size_t)S * H);           // weighted expert output per slot
  // ---- work items: (expert, 32-row tile)
  std::vector<std::pair<int32_t, int32_t>> items1, items2;
  for (int64_t e = 0; e < E; ++e) {
    if (off[e + 1] == off[e]) continue;
    for (int64_t n = 0; n < N1; n += kTile) items1.emplace_back(int32_t(e), int32_t(n));
    for (int64_t n = 0; n < H; n += kTile) items2.emplace_back(int32_t(e), int32_t(n));
  }
  // gate_up + bias + clamped SwiGLU
  run_items((int64_t)items1.size(), [&](int64_t it) {
    const int64_t e = items1[it].first, n0 = items1[it].second;
    const uint8_t* w = w13 + (e * N1 + n0) * (H / 2);
    const uint8_t* s = s13 + (e * N1 + n0) * (H / kBlock);
    auto xptr = [&](int64_t j) -> const void* { return xa + (slots[j] / K) * H * esz; };
    tile_all_tokens(w, s, H / 2, H / kBlock, bf16, off[e], off[e + 1], xptr, [&](int64_t j0, int M, const float* h) {
      for (int m = 0; m < M; ++m) {
        char* arow = act.data() + (size_t)slots[j0 + m] * I * esz;
        for (int p = 0; p < kTile / 2; ++p) {
          float g = h[(2 * p) * M + m], u = h[(2 * p + 1) * M + m];
          if (b13) {
            g += b13[e * N1 + n0 + 2 * p];
            u += b13[e * N1 + n0 + 2 * p + 1];
          }
          g = std::min(g, limit);  // NaN propagates, as torch.clamp does
          u = std::min(std::max(u, -limit), limit);
          const float a = g / (1.0f + std::exp(-alpha * g)) * (u + 1.0f);
          const int64_t c = n0 / 2 + p;
          if (bf16)
            ((uint16_t*)arow)[c] = f32_to_bf16(a);
          else
            ((float*)arow)[perm_pos(c)] = a;
        }
      }
    });
  });
  // down + bias, times the routing weight
  run_items((int64_t)items2.size(), [&](int64_t it) {
    const int64_t e = items2[it].first, n0 = items2[it].second;
    const uint8_t* w = w2 + (e * H + n0) * (I / 2);
    const uint8_t* s = s2 + (e * H + n0) * (I / kBlock);
    auto aptr = [&](int64_t j) -> const void* { return act.data() + (size_t)slots[j] * I * esz; };
    tile_all_tokens(w, s, I / 2, I / kBlock, bf16, off[e], off[e + 1], aptr, [&](int64_t j0, int M, const float* y) {
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
