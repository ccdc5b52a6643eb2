// The AMX check's guest program: /init of a Linux booted in Bochs's Sapphire Rapids model (run.py).
// It runs the native MoE kernel (moe_cpu.cpp, built -march=sapphirerapids: the real AMX
// instructions) on the cases run.py wrote into /cases, with the AMX path on and off, against the
// float32 reference that torch computed on the host, and prints one line a case and a verdict on the
// serial console; then it powers the machine off.
//
// A case file (little-endian; run.py's write_case):
//   char[8] "GKAMXC01"; int64 T, H, I, E, K; float alpha, limit;
//   bf16 x[T H]; float topk_w[T K]; int32 topk_ids[T K];
//   u8 w13[E 2I H/2] (row-group layout); u8 s13[E 2I H/32]; float b13[E 2I];
//   u8 w2[E H I/2] (row-group layout); u8 s2[E H I/32]; float b2[E H];
//   float ref[T H] (moe_reference, float32); bf16 host[T H] (the host's own build, AMX path off)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <cpuid.h>
#include <dirent.h>
#include <omp.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <termios.h>
#include <unistd.h>

extern "C" {
int gptoss_cpu_features();
int gptoss_cpu_amx(int on);
int64_t gptoss_cpu_amx_items();
int gptoss_cpu_moe(int act_mode, const void* x, void* out, int64_t T, int64_t H, int64_t I, int64_t E, int64_t K,
                   const float* topk_w, const int32_t* topk_ids, const uint8_t* w13, const uint8_t* s13,
                   const float* b13, const uint8_t* w2, const uint8_t* s2, const float* b2, float alpha,
                   float limit, int64_t* bad);
}

namespace {

constexpr double kBound = 1e-2;  // rel. L2, the bf16 bound of tests/kernels/test_cpu_native.py
constexpr int kModeBf16 = 1;

float bf16(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

struct Reader {
  std::vector<char> data;
  size_t at = 0;
  template <typename T>
  std::vector<T> take(size_t n) {
    std::vector<T> v(n);
    if (at + n * sizeof(T) > data.size()) throw std::string("case file too short");
    std::memcpy(v.data(), data.data() + at, n * sizeof(T));
    at += n * sizeof(T);
    return v;
  }
};

// relative L2 of a against b (b float32), and whether every value of a is finite
template <typename A>
double rel_l2(const std::vector<A>& a, const std::vector<float>& b, bool* finite) {
  double num = 0, den = 0;
  *finite = true;
  for (size_t i = 0; i < b.size(); ++i) {
    const double x = std::is_same<A, uint16_t>::value ? bf16(uint16_t(a[i])) : double(a[i]);
    if (!std::isfinite(x)) *finite = false;
    num += (x - b[i]) * (x - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1e-300));
}

std::vector<float> widen(const std::vector<uint16_t>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = bf16(v[i]);
  return f;
}

bool run_case(const std::string& path, const std::string& name) {
  Reader r;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    std::printf("CASE %s: cannot open\n", name.c_str());
    return false;
  }
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) r.data.insert(r.data.end(), buf, buf + n);
  std::fclose(f);
  try {
    auto magic = r.take<char>(8);
    if (std::memcmp(magic.data(), "GKAMXC01", 8) != 0) throw std::string("bad magic");
    auto dims = r.take<int64_t>(5);
    const int64_t T = dims[0], H = dims[1], I = dims[2], E = dims[3], K = dims[4];
    auto al = r.take<float>(2);
    auto x = r.take<uint16_t>(T * H);
    auto tw = r.take<float>(T * K);
    auto ids = r.take<int32_t>(T * K);
    auto w13 = r.take<uint8_t>(E * 2 * I * H / 2);
    auto s13 = r.take<uint8_t>(E * 2 * I * H / 32);
    auto b13 = r.take<float>(E * 2 * I);
    auto w2 = r.take<uint8_t>(E * H * I / 2);
    auto s2 = r.take<uint8_t>(E * H * I / 32);
    auto b2 = r.take<float>(E * H);
    auto ref = r.take<float>(T * H);
    auto host = r.take<uint16_t>(T * H);
    if (r.at != r.data.size()) throw std::string("trailing bytes");

    auto call = [&](int amx, std::vector<uint16_t>& out, int64_t* items) {
      if (gptoss_cpu_amx(amx) != amx) throw std::string("the AMX switch did not take");
      out.assign(T * H, 0x7fc0);  // NaN-poisoned: every element must be written
      int64_t bad = 0;
      const int64_t before = gptoss_cpu_amx_items();
      const int rc = gptoss_cpu_moe(kModeBf16, x.data(), out.data(), T, H, I, E, K, tw.data(), ids.data(),
                                    w13.data(), s13.data(), b13.data(), w2.data(), s2.data(), b2.data(), al[0],
                                    al[1], &bad);
      if (rc != 0) throw std::string("gptoss_cpu_moe returned ") + std::to_string(rc);
      *items = gptoss_cpu_amx_items() - before;
    };
    std::vector<uint16_t> on, off;
    int64_t items_on = 0, items_off = 0;
    call(1, on, &items_on);
    call(0, off, &items_off);
    bool fin_on, fin_off, fin;
    const double on_ref = rel_l2(on, ref, &fin_on), off_ref = rel_l2(off, ref, &fin_off);
    const double on_off = rel_l2(on, widen(off), &fin), off_host = rel_l2(off, widen(host), &fin);
    const bool ok = fin_on && fin_off && on_ref <= kBound && off_ref <= kBound && on_off <= kBound &&
                    items_on > 0 && items_off == 0;
    std::printf("CASE %s T=%lld H=%lld I=%lld E=%lld K=%lld amx_items=%lld/%lld finite=%d/%d "
                "on_vs_ref=%.3e off_vs_ref=%.3e on_vs_off=%.3e off_vs_host=%.3e %s\n",
                name.c_str(), (long long)T, (long long)H, (long long)I, (long long)E, (long long)K,
                (long long)items_on, (long long)items_off, int(fin_on), int(fin_off), on_ref, off_ref, on_off,
                off_host, ok ? "PASS" : "FAIL");
    return ok;
  } catch (const std::string& e) {
    std::printf("CASE %s: %s FAIL\n", name.c_str(), e.c_str());
    return false;
  }
}

}  // namespace

// argv[1]: the cases' folder (/cases as /init). As PID 1 (the guest's /init) it powers off at the end;
// run by hand (run.py's dry run on the host, with the software model of the tiles) it just exits.
int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  const bool init = getpid() == 1;
  // (as /init, argv holds the kernel parameters the kernel did not know)
  const std::string cases = argc > 1 && !init ? argv[1] : "/cases";
  if (init) mount("proc", "/proc", "proc", 0, nullptr);
  unsigned a, b, c, d;
  __cpuid_count(7, 0, a, b, c, d);
  std::printf("GUEST cpuid.7.edx: amx_bf16=%u amx_tile=%u; avx512_bf16: ", (d >> 22) & 1, (d >> 24) & 1);
  __cpuid_count(7, 1, a, b, c, d);
  std::printf("%u\n", (a >> 5) & 1);
  const int features = gptoss_cpu_features();
  const int permit = gptoss_cpu_amx(1);
  std::printf("GUEST features=%d (AMX instructions: %d) amx_permission=%d threads=%d\n", features,
              (features >> 5) & 1, permit, omp_get_max_threads());
  // the instructions themselves (features bit 5), unless a dry run asked for the software model (bit 6)
  bool ok = (features & (32 | 64)) && permit == 1;
  std::vector<std::string> names;
  if (DIR* dir = opendir(cases.c_str())) {
    while (dirent* e = readdir(dir))
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    closedir(dir);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) ok = false;
  if (permit == 1)
    for (const auto& n : names) ok &= run_case(cases + "/" + n, n);
  std::printf("GUEST RESULT %s (%zu cases)\n", ok ? "PASS" : "FAIL", names.size());
  if (init) {
    tcdrain(1);  // the console's queue reaches the serial port before the machine stops
    sleep(1);
    reboot(RB_POWER_OFF);
  }
  return ok ? 0 : 1;
}
