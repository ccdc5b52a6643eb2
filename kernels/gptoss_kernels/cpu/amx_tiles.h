// Intel AMX tile operations, as the MoE's many-token path uses them (moe_cpu.cpp): eight tiles of
// 16 rows x 64 bytes, loads / stores with a row stride, zeroing, and TDPBF16PS (C fp32 [16 x 16] +=
// A bf16 [16 x 32] . B, with B in AMX's pair-interleaved layout: row p holds, for 16 columns n, the
// two bf16 of k = 2p and 2p + 1 next to each other).
//
// Two implementations of one interface (gk::amx::configure / release / request_permission and the
// GK_AMX_* macros):
//   the instructions       builds with AMX-TILE + AMX-BF16 (-march=native on Sapphire Rapids and
//                          later Xeons): _tile_loadd / _tile_dpbf16ps / _tile_stored; Linux lends a
//                          process the tile registers only after it asks (arch_prctl
//                          ARCH_REQ_XCOMP_PERM), else the first tile instruction is SIGILL;
//   a software model       with -DGK_AMX_EMULATE (tests on CPUs without AMX): per-thread tile
//                          memory and the Intel SDM's pseudo-code of TDPBF16PS (two fp32 FMAs per
//                          pair, in the pair's order; no denormal flushing), so the layouts and loops
//                          around the tiles are exercised here; only the instructions themselves are not
//                          (scripts/amx_bochs runs them on Bochs's Sapphire Rapids model).
// GK_AMX is defined when the build has either.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_common.h"

#if defined(GK_BF16) && (defined(GK_AMX_EMULATE) || (defined(__AMX_TILE__) && defined(__AMX_BF16__)))
#define GK_AMX 1
#endif

#if defined(GK_AMX)
#if !defined(GK_AMX_EMULATE)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace gk::amx {

constexpr int kRows = 16;      // rows of every tile configured here
constexpr int kRowBytes = 64;  // bytes a tile row (16 fp32, or 32 bf16)

// Tile numbers are literals: gcc's intrinsics paste them into the instruction's text.
#if defined(GK_AMX_EMULATE)
struct Tiles {
  alignas(64) uint8_t t[8][kRows][kRowBytes];
};
inline Tiles& tiles() {
  thread_local Tiles t;
  return t;
}
inline bool request_permission() { return true; }
inline void configure() {}
inline void release() {}
inline void emu_zero(int i) { std::memset(tiles().t[i], 0, sizeof tiles().t[i]); }
inline void emu_load(int i, const void* p, int64_t stride) {
  for (int r = 0; r < kRows; ++r) std::memcpy(tiles().t[i][r], (const char*)p + r * stride, kRowBytes);
}
inline void emu_store(int i, void* p, int64_t stride) {
  for (int r = 0; r < kRows; ++r) std::memcpy((char*)p + r * stride, tiles().t[i][r], kRowBytes);
}
inline void emu_dp_bf16(int ci, int ai, int bi) {
  Tiles& t = tiles();
  for (int m = 0; m < kRows; ++m) {
    float c[16];
    uint16_t a[32];
    std::memcpy(c, t.t[ci][m], sizeof c);
    std::memcpy(a, t.t[ai][m], sizeof a);
    for (int k = 0; k < 16; ++k) {
      uint16_t b[32];
      std::memcpy(b, t.t[bi][k], sizeof b);
      for (int n = 0; n < 16; ++n) {
        c[n] += bf16_to_f32(a[2 * k]) * bf16_to_f32(b[2 * n]);
        c[n] += bf16_to_f32(a[2 * k + 1]) * bf16_to_f32(b[2 * n + 1]);
      }
    }
    std::memcpy(t.t[ci][m], c, sizeof c);
  }
}
#define GK_AMX_ZERO(i) gk::amx::emu_zero(i)
#define GK_AMX_LOAD(i, p, stride) gk::amx::emu_load(i, p, stride)
#define GK_AMX_STORE(i, p, stride) gk::amx::emu_store(i, p, stride)
#define GK_AMX_DP_BF16(c, a, b) gk::amx::emu_dp_bf16(c, a, b)
#else
// Linux: the tile data state is granted per process on request (kernel 5.16+); a refusal (an older
// kernel, a VM that hides AMX, a CPU without it under a foreign -march) returns false, and the
// caller keeps the AVX-512 path.
inline bool request_permission() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0;
}
// palette 1, all eight tiles 16 rows x 64 bytes (the 64-byte config block of LDTILECFG)
struct alignas(64) Config {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  Config() {
    for (int i = 0; i < 8; ++i) colsb[i] = kRowBytes, rows[i] = kRows;
  }
};
inline void configure() {
  static const Config config;
  _tile_loadconfig(&config);
}
inline void release() { _tile_release(); }
#define GK_AMX_ZERO(i) _tile_zero(i)
#define GK_AMX_LOAD(i, p, stride) _tile_loadd(i, p, stride)
#define GK_AMX_STORE(i, p, stride) _tile_stored(i, p, stride)
#define GK_AMX_DP_BF16(c, a, b) _tile_dpbf16ps(c, a, b)
#endif

}  // namespace gk::amx
#endif
