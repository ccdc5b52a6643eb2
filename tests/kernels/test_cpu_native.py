"""The native CPU MoE kernel (gptoss_kernels/cpu) against the float32 torch reference `moe_reference`.

Fresh random MXFP4 experts every case (uniform random bytes: all 16 E2M1 codes, checked), E8M0 scales
at both extremes, biases, T in {1, 3, 17, 64, 257}, a number of experts that is not a power of two,
top-1 and top-4, about 20% of ids -1 (experts of other ranks), outputs NaN-poisoned before each call.

Error bounds (relative L2 over the whole output, and elementwise):
- float32 activations: float32 math on exactly dequantized weights, as the reference, summed in
  another order: rel. L2 <= 1e-5, |diff| <= 1e-4 * max|ref| (measured ~3e-7).
- bfloat16 activations: on AVX512_BF16 CPUs exact bf16 weights x bf16 activations, float32 sums,
  the SwiGLU output rounded to bf16 before the down projection; on AVX2 CPUs without AVX-512 the
  int16 path (q16: activations and the SwiGLU output quantized to int16 per 32-block, exact integer
  dots); elsewhere converted to float32. The output is rounded to bf16 in every case, so
  rel. L2 <= 1e-2 (measured ~2e-3 to 3e-3), as the GPU kernels.
- the q16 path itself, float32 in and out (test_q16_*): rel. L2 <= 2e-4 against the float32
  reference (measured 4e-5 to 6e-5: the int16 steps are max|block| / 32767).
"""

import logging
import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import gptoss_kernels as gk
from gptoss_kernels import cpu as native_cpu
from gptoss_kernels.mxfp4 import dequantize, unpack_codes

BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _load(root, march):
    try:
        return native_cpu.load(root, march=march)
    except native_cpu.NativeUnavailable as e:  # this suite's machines have g++: a failure is a bug
        pytest.fail(f"native kernel did not build: {e}")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("native")


@pytest.fixture(scope="module")
def native(cache_root):
    return _load(cache_root / "native", "native")


X86 = platform.machine() in ("x86_64", "AMD64")


# -march values of the other paths, and the CPU flags each needs to run here
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
MARCH_NEEDS = {"x86-64-v3": {"avx2", "fma"}, "x86-64": set(),
               # Intel Xeon Skylake-SP: AVX-512 without AVX512_BF16 or VNNI; Cascade Lake: with VNNI
               "skylake-avx512": AVX512_FLAGS, "cascadelake": AVX512_FLAGS | {"avx512_vnni"},
               # Intel client cores from Alder Lake on: AVX2 with AVX-VNNI, no AVX-512
               "alderlake": {"avx2", "fma", "avx_vnni"}}
MARCH_ISA = {"x86-64-v3": "avx2", "x86-64": "scalar", "skylake-avx512": "avx512", "cascadelake": "avx512",
             "alderlake": "avx2"}
VNNI_MARCHES = {"cascadelake", "alderlake"}


def _load_march(cache_root, march):
    """The build for `march`, skipping where this CPU cannot run it."""
    if not X86:
        pytest.skip(f"-march={march} is an x86 target")
    missing = MARCH_NEEDS[march] - set(native_cpu._cpu_flags())
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)} for -march={march}")
    n = _load(cache_root / "native", march)
    assert n.isa == MARCH_ISA[march]
    return n


# -march=native: the best path of this CPU (AVX512_BF16 here); x86-64-v3: the AVX2 path;
# skylake-avx512: AVX-512 without AVX512_BF16 (bf16 activations on the q16 path); x86-64: scalar
@pytest.fixture(scope="module", params=["native", "x86-64-v3", "skylake-avx512", "x86-64"])
def any_isa(request, cache_root):
    if request.param == "native":
        return _load(cache_root / "native", "native")
    return _load_march(cache_root, request.param)


def _experts(E, H, I, g, scale_lo=118, scale_hi=124):
    return dict(
        w13=torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g),
        s13=torch.randint(scale_lo, scale_hi, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g),
        b13=torch.randn(E, 2 * I, generator=g) * 0.3,
        w2=torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g),
        s2=torch.randint(scale_lo, scale_hi, (E, H, I // 32), dtype=torch.uint8, generator=g),
        b2=torch.randn(E, H, generator=g) * 0.3,
    )


def _routing(T, E, k, g, drop=0.2):
    w, ids = gk.route_reference(torch.randn(T, E, generator=g), k)
    ids = torch.where(torch.rand(T, k, generator=g) < drop, torch.full_like(ids, -1), ids)
    return w, ids


def _packed(native, p):
    """p's E2M1 blocks in the row-group layout the kernel reads (copies; p keeps the checkpoint order
    that moe_reference reads)."""
    return native.pack_experts(p["w13"]), native.pack_experts(p["w2"])


def _check(native, x, w, ids, p, bound, biases=True):
    b13, b2 = (p["b13"], p["b2"]) if biases else (None, None)
    want = gk.moe_reference(x, w, ids, p["w13"], p["s13"], b13, p["w2"], p["s2"], b2)
    assert torch.isfinite(want).all() and want.float().std() > 0
    out = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    w13, w2 = _packed(native, p)
    got = native.moe(x, w, ids, w13, p["s13"], b13, w2, p["s2"], b2, 1.702, 7.0, out=out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == x.dtype
    assert torch.isfinite(got).all()
    err = ((got.float() - want.float()).norm() / want.float().norm()).item()
    assert err <= bound, f"relative L2 error {err:.2e} above {bound:.0e}"
    tol = 1e-4 if x.dtype == torch.float32 else 0.1
    assert (got.float() - want.float()).abs().max() <= tol * want.float().abs().max()
    # rows whose ids are all -1 are exactly zero, like the reference
    dead = (ids < 0).all(dim=1)
    assert (got[dead] == 0).all()
    return err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,k", [(1, 4), (3, 1), (3, 4), (17, 4), (64, 4), (257, 1), (257, 4)])
def test_matches_reference(native, dtype, T, k):
    E, H, I = 7, 128, 96  # E not a power of two; 2I = 192 rows = 6 tiles of 32
    g = torch.Generator().manual_seed(1000 * T + k + (dtype == torch.bfloat16))
    p = _experts(E, H, I, g)
    codes = torch.cat([unpack_codes(p["w13"].unflatten(-1, (-1, 16))).flatten(),
                       unpack_codes(p["w2"].unflatten(-1, (-1, 16))).flatten()])
    assert torch.unique(codes).numel() == 16  # every E2M1 code, both zeros included
    # x * 4: pre-activations of std ~4, so both SwiGLU clamps (gate <= 7, |up| <= 7) are active
    x = (torch.randn(T, H, generator=g) * 4).to(dtype)
    w, ids = _routing(T, E, k, g)
    if T >= 17:
        h = x.float() @ dequantize(p["w13"][0], p["s13"][0]).t() + p["b13"][0]
        assert (h[:, 0::2] > 7).any() and (h[:, 1::2].abs() > 7).any()
    _check(native, x, w, ids, p, BOUNDS[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_inputs_run_in_chunks(native, monkeypatch, dtype):
    """More tokens than MOE_CHUNK_TOKENS: the kernel runs on consecutive chunks of tokens (its buffers
    bounded), and every row matches the reference, the chunks' seams and the short last chunk too."""
    calls = []
    fn = native._fn
    monkeypatch.setattr(native, "_fn", lambda *a: calls.append(a[3]) or fn(*a))
    monkeypatch.setattr(native_cpu, "MOE_CHUNK_TOKENS", 16)
    E, H, I = 7, 128, 96
    g = torch.Generator().manual_seed(4242 + (dtype == torch.bfloat16))
    p = _experts(E, H, I, g)
    x = (torch.randn(41, H, generator=g) * 4).to(dtype)
    w, ids = _routing(41, E, 4, g)
    _check(native, x, w, ids, p, BOUNDS[dtype])
    assert calls == [16, 16, 9]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,k", [(1, 4), (17, 4)])
def test_every_isa_matches_reference(any_isa, dtype, T, k):
    """The AVX2 and scalar builds too (bf16 activations: the AVX2 build's q16 path, the scalar build's
    float32 path)."""
    E, H, I = 5, 96, 64
    g = torch.Generator().manual_seed(77 + T)
    p = _experts(E, H, I, g)
    x = (torch.randn(T, H, generator=g) * 4).to(dtype)
    w, ids = _routing(T, E, k, g)
    _check(any_isa, x, w, ids, p, BOUNDS[dtype])


@pytest.fixture(scope="module", params=["x86-64-v3", "alderlake", "skylake-avx512", "cascadelake"])
def q16_build(request, cache_root):
    """The builds with a q16 path: AVX2 (vpmaddwd on 256-bit words), AVX2 + AVX-VNNI (vpdpwssd on
    them), AVX-512 (the nibble-table decode, vpmaddwd), AVX-512 + VNNI (vpdpwssd)."""
    n = _load_march(cache_root, request.param)
    assert n.features & native_cpu.FEATURE_Q16 and n.act_mode(torch.bfloat16) == native_cpu.MODE_Q16
    assert bool(n.features & native_cpu.FEATURE_VNNI) == (request.param in VNNI_MARCHES)
    return n


Q16_BOUND = 2e-4


@pytest.mark.parametrize("T,k,H,I", [(1, 4, 128, 96), (3, 1, 160, 96), (17, 4, 128, 224), (64, 4, 352, 96)])
def test_q16_matches_float32_reference(q16_build, T, k, H, I):
    """float32 in and out through the q16 mode: what the int16 quantization alone costs. Rows of
    whole and partial groups of 4 blocks (the AVX-512 decode's unit): 96 = 3 blocks, 160 = 4 + 1,
    224 = 4 + 3, 352 = 2 x 4 + 3."""
    E = 7
    g = torch.Generator().manual_seed(500 + T + k)
    p = _experts(E, H, I, g)
    x = torch.randn(T, H, generator=g) * 4
    x[0, :32] *= 1e-3  # blocks of very different magnitude: each gets its own int16 step
    x[-1, 32:64] = 0.0  # an all-zero block (step 0)
    w, ids = _routing(T, E, k, g)
    want = gk.moe_reference(x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"])
    out = torch.full_like(x, float("nan"))
    w13, w2 = _packed(q16_build, p)
    got = q16_build.moe(x, w, ids, w13, p["s13"], p["b13"], w2, p["s2"], p["b2"], 1.702, 7.0,
                        out=out, act_mode=native_cpu.MODE_Q16)
    err = ((got - want).norm() / want.norm()).item()
    assert err <= Q16_BOUND, f"relative L2 error {err:.2e} above {Q16_BOUND:.0e}"
    # and it is not the float32 path under another name: that one is ~100x closer
    f32 = q16_build.moe(x, w, ids, w13, p["s13"], p["b13"], w2, p["s2"], p["b2"], 1.702, 7.0,
                        act_mode=native_cpu.MODE_F32)
    assert ((f32 - want).norm() / want.norm()).item() < err


def test_q16_nan_propagates(q16_build):
    """A NaN activation reaches its token's output, as in float arithmetic; other tokens stay finite."""
    E, H, I = 4, 64, 64
    g = torch.Generator().manual_seed(9)
    p = _experts(E, H, I, g)
    x = torch.randn(3, H, generator=g)
    x[1, 40] = float("nan")
    w, ids = _routing(3, E, 2, g, drop=0.0)
    w13, w2 = _packed(q16_build, p)
    got = q16_build.moe(x.to(torch.bfloat16), w, ids, w13, p["s13"], p["b13"], w2, p["s2"], p["b2"], 1.702, 7.0)
    assert torch.isnan(got[1]).all() and torch.isfinite(got[[0, 2]]).all()


def test_no_biases(native):
    g = torch.Generator().manual_seed(7)
    p = _experts(5, 64, 64, g)
    x = torch.randn(9, 64, generator=g)
    w, ids = _routing(9, 5, 2, g)
    _check(native, x, w, ids, p, BOUNDS[torch.float32], biases=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [3, 40])  # 40 tokens on 3 experts: the bf16 tile-scratch path is tried too
@pytest.mark.parametrize("scale_zero", [True, False], ids=["with-0", "1-254"])
def test_extreme_scales(any_isa, dtype, T, scale_zero):
    """E8M0 scales 0 (2^-127, subnormal), 1, 253 and 254 (2^127) on whole block columns of w13; the
    activations of those columns are scaled by the inverse so every product is O(1) and finite.
    At 2^127 only E2M1 magnitudes <= 1.5 are used (2 * 2^127 overflows float32 in any kernel).
    Without the 0 column every scale is in [1, 254]: the AVX512_BF16 build's few-token path (the
    block scale applied after the sums, as a float 2^(s-127)) takes these rows; with it, the rows
    take the exact fallback."""
    E, H, I, k = 3, 256, 64, 2
    g = torch.Generator().manual_seed(11 + T + 100 * scale_zero)
    p = _experts(E, H, I, g)
    x = torch.randn(T, H, generator=g)
    # the few-token path's range (2^-100 <= |x| < 2^64; beyond it rows take the exact fallback): its
    # variant keeps every activation inside, so the products are far from O(1) (the 2^127 column's
    # are ~2^27 and dominate the result)
    cols = (((1, 0, 2.0 ** 126), (3, 1, 2.0 ** 125), (5, 253, 2.0 ** -125), (6, 254, 2.0 ** -126)) if scale_zero
            else ((3, 1, 2.0 ** 60), (5, 253, 2.0 ** -110), (6, 254, 2.0 ** -100)))
    for col, s, xs in cols:
        p["s13"][:, :, col] = s
        if s >= 253:
            blk = p["w13"][:, :, col * 16:(col + 1) * 16]
            p["w13"][:, :, col * 16:(col + 1) * 16] = blk & 0xBB  # magnitude bits 0-1 only: |v| <= 1.5
        # magnitudes in [1, 2) times the factor: normal numbers in float32 and bf16 alike
        mag = 1 + torch.rand(T, 32, generator=g)
        sign = torch.where(torch.rand(T, 32, generator=g) < 0.5, -1.0, 1.0)
        x[:, col * 32:(col + 1) * 32] = sign * mag * xs
    x = x.to(dtype)
    w, ids = _routing(T, E, k, g, drop=0.0)
    err = _check(any_isa, x, w, ids, p, BOUNDS[dtype])
    # the extreme columns matter: dropping them changes the result far beyond the bound
    p2 = {n: t.clone() for n, t in p.items()}
    heavy = 1 if scale_zero else 6  # a column whose products are O(1): scale 0, or 254
    p2["w13"][:, :, heavy * 16:(heavy + 1) * 16] = 0
    want2 = gk.moe_reference(x, w, ids, p2["w13"], p2["s13"], p2["b13"], p2["w2"], p2["s2"], p2["b2"])
    want = gk.moe_reference(x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"])
    assert ((want2.float() - want.float()).norm() / want.float().norm()).item() > 100 * max(err, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_scales_in_long_rows(any_isa, dtype):
    """Rows of 33 blocks (H = 1056), where the scale-range checks compare 32 or 64 scales at a time
    and a row's last compare overlaps or masks the one before: an extreme scale in the last block
    (0: subnormal weights) or the one before it (253) must still send its rows to the exact path.
    (With such activations on rows of ordinary scales the AVX2 build's q16 path is off by ~3e-2,
    before and after its check was vectorized: the int16 step of a 2^-125 block underflows.)"""
    E, H, I, k, T = 3, 1056, 64, 2, 5
    g = torch.Generator().manual_seed(33)
    p = _experts(E, H, I, g)
    x = torch.randn(T, H, generator=g)
    for col, s, xs in ((32, 0, 2.0 ** 126), (31, 253, 2.0 ** -125)):
        p["s13"][:, :, col] = s  # whole block columns, as test_extreme_scales: every product stays O(1)
        if s >= 253:
            p["w13"][:, :, col * 16:(col + 1) * 16] &= 0xBB  # |v| <= 1.5: no overflow at 2^126
        x[:, col * 32:(col + 1) * 32] = (1 + torch.rand(T, 32, generator=g)) * xs
    x = x.to(dtype)
    w, ids = _routing(T, E, k, g, drop=0.0)
    err = _check(any_isa, x, w, ids, p, BOUNDS[dtype])
    p2 = {n: t.clone() for n, t in p.items()}
    p2["w13"][:, :, 32 * 16:33 * 16] = 0  # without the scale-0 block the result moves far beyond the bound
    want2 = gk.moe_reference(x, w, ids, p2["w13"], p2["s13"], p2["b13"], p2["w2"], p2["s2"], p2["b2"])
    want = gk.moe_reference(x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"])
    assert ((want2.float() - want.float()).norm() / want.float().norm()).item() > 10 * BOUNDS[dtype]
    assert err <= BOUNDS[dtype]


@pytest.mark.parametrize("T,k", [(1, 4), (2, 4), (5, 1), (7, 4)])
def test_few_tokens_any_block_count(native, T, k):
    """Decode-sized calls (fewer than 8 tokens per expert) on rows of 10 and 7 blocks of 32: the
    AVX512_BF16 build reads 4 blocks per load, so rows end in a partial group (2 and 3 blocks), and
    the down projection's rows start at offsets that are not multiples of 64 bytes."""
    E, H, I = 6, 320, 224
    g = torch.Generator().manual_seed(500 + 10 * T + k)
    p = _experts(E, H, I, g)
    for dtype in (torch.bfloat16, torch.float32):
        x = (torch.randn(T, H, generator=g) * 4).to(dtype)
        w, ids = _routing(T, E, k, g, drop=0.1)
        _check(native, x, w, ids, p, BOUNDS[dtype])


def test_deterministic_across_thread_counts(native):
    g = torch.Generator().manual_seed(3)
    p = _experts(6, 96, 64, g)
    x = torch.randn(33, 96, generator=g).to(torch.bfloat16)
    w, ids = _routing(33, 6, 4, g)
    w13, w2 = _packed(native, p)
    args = (x, w, ids, w13, p["s13"], p["b13"], w2, p["s2"], p["b2"], 1.702, 7.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.moe(*args)
        torch.set_num_threads(2)
        two = native.moe(*args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output element has one owner and a fixed summation order


def test_bad_input_named(native):
    g = torch.Generator().manual_seed(5)
    p = _experts(4, 64, 64, g)
    x = torch.randn(2, 64, generator=g)
    w, ids = _routing(2, 4, 2, g, drop=0)
    args = [x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"], 1.702, 7.0]
    bad = ids.clone()
    bad[1, 0] = 4
    with pytest.raises(ValueError, match=r"topk_ids: expert id 4 outside \[-1, 4\)"):
        native.moe(x, w, bad, *args[3:])
    with pytest.raises(TypeError, match="w2_scale: expected dtype torch.uint8"):
        native.moe(*args[:7], p["s2"].float(), *args[8:])
    with pytest.raises(ValueError, match="w13_bias: expected shape"):
        native.moe(*args[:5], p["b13"][:, :-1], *args[6:])


# K/2 = 128, 80, 48, 112 bytes: 2 whole chunks, 1 + 16 bytes, none + 48 bytes, 1 + 48 bytes
@pytest.mark.parametrize("H", [256, 160, 96, 224])
def test_pack_experts_is_the_documented_layout(native, H):
    """Per group of 4 rows: the rows' 64-byte chunks interleaved, then their partial last chunks;
    `unpack_experts` inverts it, in place and copy agree, and a [E, N, K/32, 16] view packs alike."""
    g = torch.Generator().manual_seed(H)
    E, N, kb = 3, 8, H // 2
    b = torch.randint(0, 256, (E, N, kb), dtype=torch.uint8, generator=g)
    p = native.pack_experts(b)
    assert native.group_rows == 4 and native.chunk_bytes == 64
    full = kb // 64 * 64
    assert p.shape == b.shape and torch.equal(p, b) == (full == 0)  # rows under 64 bytes: the same order
    flat = p.view(E, N // 4, 4 * kb)
    for e, row, c in ((0, 0, 0), (1, 5, kb - 1), (2, 7, min(70, kb - 1)), (2, 2, 17), (0, 3, full)):
        if c >= kb:
            continue
        q, rr = divmod(row, 4)
        pos = (c // 64) * 256 + rr * 64 + c % 64 if c < full else 4 * full + rr * (kb - full) + (c - full)
        assert flat[e, q, pos] == b[e, row, c], (e, row, c)
    assert torch.equal(native.unpack_experts(p), b)
    inplace = b.clone()
    assert native.pack_experts(inplace, inplace=True).data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace, p)
    assert torch.equal(native.pack_experts(b.view(E, N, kb // 16, 16)).view(E, N, kb), p)
    with pytest.raises(ValueError, match="multiples of 4"):
        native.pack_experts(b[:, :6].contiguous())


def test_checkpoint_order_is_not_what_the_kernel_reads(native):
    """The negative control of the layout: the same call on blocks in the checkpoint order misses the
    reference by far (rows of 2 whole chunks, so the orders differ), packed it matches."""
    E, H, I, T = 4, 256, 128, 3
    g = torch.Generator().manual_seed(21)
    p = _experts(E, H, I, g)
    x = torch.randn(T, H, generator=g)
    w, ids = _routing(T, E, 2, g, drop=0.0)
    want = gk.moe_reference(x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"])
    wrong = native.moe(x, w, ids, p["w13"], p["s13"], p["b13"], p["w2"], p["s2"], p["b2"], 1.702, 7.0)
    assert ((wrong - want).norm() / want.norm()).item() > 0.1
    _check(native, x, w, ids, p, BOUNDS[torch.float32])


# ------------------------------------------------------------------------------ build and wiring
_BUILD_SCRIPT = """
import sys, torch
from gptoss_kernels import cpu
n = cpu.load(sys.argv[1])
print("BUILT" if n.built_here else "LOADED", n.path)
"""


def test_built_once_by_concurrent_processes(tmp_path):
    """Two processes starting together on an empty cache: one compiles, the other waits on the lock
    and loads that library."""
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["BUILT", "LOADED"]
    assert outs[0][1] == outs[1][1]
    libs = list(tmp_path.glob("*/gptoss_moe_cpu.so"))
    assert len(libs) == 1 and (libs[0].parent / "build.log").exists()
    # a third process finds it built
    third = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                           env=env, check=True)
    assert third.stdout.startswith("LOADED")


def _layer(E, H, I, g, expert_map=None):
    p = _experts(E, H, I, g)
    return SimpleNamespace(w13_weight=p["w13"], w13_weight_scale=p["s13"], w13_bias=p["b13"].to(torch.bfloat16),
                           w2_weight=p["w2"], w2_weight_scale=p["s2"], w2_bias=p["b2"].to(torch.bfloat16),
                           expert_map=expert_map, swiglu_alpha=1.702, swiglu_limit=7.0)


@pytest.mark.parametrize("use_ep", [False, True])
def test_method_uses_native_kernel_on_cpu(use_ep, monkeypatch, cache_root):
    from vllm_gptoss import moe_ops
    from vllm_gptoss.mxfp4_method import GptOssMxfp4MoEMethod

    monkeypatch.setenv("VLLM_GPTOSS_CACHE", str(cache_root))  # the plugin adds "native/"
    monkeypatch.setattr(moe_ops, "_native", None)
    monkeypatch.setattr(moe_ops, "_native_error", None)
    g = torch.Generator().manual_seed(21)
    emap = torch.tensor([-1, -1, 0, 1, 2], dtype=torch.int32) if use_ep else None
    layer = _layer(3 if use_ep else 5, 96, 64, g, emap)
    method = GptOssMxfp4MoEMethod(moe=None)
    method.process_weights_after_loading(layer)
    assert method.prepared is None and method.cpu_native is not None
    assert str(moe_ops._native.path).startswith(str(cache_root / "native"))
    x = torch.randn(11, 96, generator=g)
    w, ids = gk.route_reference(torch.randn(11, 5, generator=g), 2)
    local = emap[ids.long()] if use_ep else ids
    want = gk.moe_reference(x, w, local, layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
                            layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    got = method.apply(layer, x, w, ids, None, None)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", ["no_compiler", "switched_off"])
def test_fallback_to_torch_path(how, monkeypatch, tmp_path, caplog):
    """CXX=/nonexistent: one warning naming the missing compiler, then the torch path (correct).
    VLLM_GPTOSS_CPU_NATIVE=0: the torch path without a warning, nothing built."""
    from vllm_gptoss import moe_ops
    from vllm_gptoss.mxfp4_method import GptOssMxfp4MoEMethod

    monkeypatch.setenv("VLLM_GPTOSS_CACHE", str(tmp_path))
    monkeypatch.setattr(moe_ops, "_native", None)
    monkeypatch.setattr(moe_ops, "_native_error", None)
    if how == "no_compiler":
        monkeypatch.setenv("CXX", "/nonexistent/g++")
    else:
        monkeypatch.setenv("VLLM_GPTOSS_CPU_NATIVE", "0")
    g = torch.Generator().manual_seed(31)
    layers = [_layer(4, 64, 64, g) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="vllm_gptoss.moe_ops"):
        methods = []
        for layer in layers:
            m = GptOssMxfp4MoEMethod(moe=None)
            m.process_weights_after_loading(layer)
            methods.append(m)
    # ours only: run alone, this test is where vLLM is first imported, and it warns about Triton
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("vllm_gptoss")]
    assert all(m.cpu_native is None for m in methods)
    if how == "no_compiler":
        assert len(warnings) == 1 and "/nonexistent/g++" in warnings[0] and "torch path" in warnings[0]
    else:
        assert warnings == [] and not list(tmp_path.rglob("*.so"))
    x = torch.randn(5, 64, generator=g)
    w, ids = gk.route_reference(torch.randn(5, 4, generator=g), 2)
    layer = layers[0]
    want = gk.moe_reference(x, w, ids, layer.w13_weight, layer.w13_weight_scale, layer.w13_bias,
                            layer.w2_weight, layer.w2_weight_scale, layer.w2_bias)
    torch.testing.assert_close(methods[0].apply(layer, x, w, ids, None, None), want, rtol=1e-5, atol=1e-5)


def test_march_setting_reaches_the_build(monkeypatch, tmp_path):
    """VLLM_GPTOSS_CPU_MARCH=x86-64-v3 on an x86 CPU: the plugin's kernel is the AVX2 build (its own
    cached library beside the native one), and it computes the MoE; a bad value gives the one
    warning and the torch path, as a missing compiler does."""
    missing = MARCH_NEEDS["x86-64-v3"] - set(native_cpu._cpu_flags())
    if not X86 or missing:
        pytest.skip(f"runs the x86-64-v3 build: needs an x86 CPU with AVX2 and FMA (missing {sorted(missing)})")
    from vllm_gptoss import moe_ops

    monkeypatch.setenv("VLLM_GPTOSS_CACHE", str(tmp_path))
    monkeypatch.setattr(moe_ops, "_native", None)
    monkeypatch.setattr(moe_ops, "_native_error", None)
    monkeypatch.setenv("VLLM_GPTOSS_CPU_MARCH", "x86-64-v3")
    n = moe_ops.cpu_native_kernel()
    assert n is not None and n.isa == "avx2"
    g = torch.Generator().manual_seed(5)
    p = _experts(3, 64, 64, g)
    x = torch.randn(4, 64, generator=g).to(torch.bfloat16)
    w, ids = _routing(4, 3, 2, g)
    _check(n, x, w, ids, p, BOUNDS[torch.bfloat16])

    monkeypatch.setattr(moe_ops, "_native", None)
    monkeypatch.setattr(moe_ops, "_native_error", None)
    monkeypatch.setenv("VLLM_GPTOSS_CPU_MARCH", "no-such-cpu")
    assert moe_ops.cpu_native_kernel() is None
    assert "no-such-cpu" in str(moe_ops._native_error)


# ------------------------------------------------------------------ the MoE's AMX path (prefill)
# Experts with 8+ tokens of a bf16 call multiply on AMX tiles (moe_cpu.cpp, amx_tiles.h): the
# instructions on CPUs with AMX; on AVX512_BF16 CPUs without it, their software model, which runs the
# same layouts and loops around the tiles (the dequantized scratch tile as A, the activations in the
# pair-interleaved layout as B).
@pytest.fixture
def amx(cache_root):
    flags = set(native_cpu._cpu_flags())
    if {"amx_bf16", "amx_tile"} <= flags:
        n = _load(cache_root / "native", "native")
        assert n.features & native_cpu.FEATURE_AMX
    elif "avx512_bf16" in flags:
        n = native_cpu.load(cache_root / "native", emulate_amx=True)
        assert n.features & native_cpu.FEATURE_AMX_EMULATED and not n.features & native_cpu.FEATURE_AMX
    else:
        pytest.skip("the AMX path needs AMX, or AVX512_BF16 for its software model")
    n.enable_amx()
    assert n.amx
    yield n
    n.disable_amx()


@pytest.mark.parametrize("T,k", [(17, 4), (33, 4), (64, 4), (257, 1), (257, 4)])
def test_amx_matches_reference(amx, T, k):
    """Experts of 8 to ~200 tokens (groups of 16 tokens and a partial last one, 1 or 2 B tiles a
    step), ids -1, biases, both SwiGLU clamps: the reference's bf16 bound, the AMX path seen to run,
    and the same results as the AVX-512 path of the build up to bf16 rounding."""
    E, H, I = 5, 128, 96
    g = torch.Generator().manual_seed(7000 + 10 * T + k)
    p = _experts(E, H, I, g)
    x = (torch.randn(T, H, generator=g) * 4).to(torch.bfloat16)
    w, ids = _routing(T, E, k, g)
    counts = torch.bincount(ids[ids >= 0].long(), minlength=E)
    assert (counts >= 8).any()
    before = amx.amx_items()
    _check(amx, x, w, ids, p, BOUNDS[torch.bfloat16])
    assert amx.amx_items() > before  # the AMX path ran
    w13, w2 = _packed(amx, p)
    args = (x, w, ids, w13, p["s13"], p["b13"], w2, p["s2"], p["b2"], 1.702, 7.0)
    on = amx.moe(*args).float()
    amx.disable_amx()
    after = amx.amx_items()
    off = amx.moe(*args).float()
    assert amx.amx_items() == after  # switched off: the AVX-512 path
    assert ((on - off).norm() / off.norm()).item() <= 1e-2


@pytest.mark.parametrize("scale_zero", [True, False], ids=["with-0", "1-254"])
def test_amx_extreme_scales(amx, scale_zero):
    """test_extreme_scales on the AMX build with 40 tokens: the gate_up tiles with extreme scales take
    the exact in-register path, the down projection's the AMX path, in one call."""
    before = amx.amx_items()
    test_extreme_scales(amx, torch.bfloat16, 40, scale_zero)
    assert amx.amx_items() > before


def test_amx_refused_where_absent(cache_root):
    """A build without AMX tiles (the AVX2 one here) refuses the AMX path, naming why."""
    n = _load_march(cache_root, "x86-64-v3")
    assert not n.amx_built
    with pytest.raises(native_cpu.NativeUnavailable, match="no AMX tiles"):
        n.enable_amx()
    assert not n.amx


def test_amx_off_when_its_check_disagrees(amx, monkeypatch):
    """enable_amx's check (the AMX path against the AVX-512 one on a random MoE) failing leaves the
    path off, with the difference in the message."""
    amx.disable_amx()
    monkeypatch.setattr(type(amx), "_amx_disagreement", lambda self: 0.5)
    with pytest.raises(native_cpu.NativeUnavailable, match="disagrees.*0.5"):
        amx.enable_amx()
    assert not amx.amx
    g = torch.Generator().manual_seed(71)
    p = _experts(2, 64, 64, g)
    x = torch.randn(20, 64, generator=g).to(torch.bfloat16)
    w, ids = _routing(20, 2, 1, g, drop=0.0)
    before = amx.amx_items()
    _check(amx, x, w, ids, p, BOUNDS[torch.bfloat16])
    assert amx.amx_items() == before


@pytest.mark.parametrize("setting", [None, "0", "2"])
def test_amx_setting(setting, amx, monkeypatch, tmp_path):
    """VLLM_GPTOSS_CPU_AMX: unset (auto) turns the AMX path on where the build has it, 0 keeps it off,
    anything else is refused, naming the values."""
    from vllm_gptoss import moe_ops

    amx.disable_amx()
    monkeypatch.setattr(moe_ops, "_native", None)
    monkeypatch.setattr(moe_ops, "_native_error", None)
    monkeypatch.setattr(native_cpu, "load", lambda *a, **kw: amx)
    if setting is None:
        monkeypatch.delenv("VLLM_GPTOSS_CPU_AMX", raising=False)
    else:
        monkeypatch.setenv("VLLM_GPTOSS_CPU_AMX", setting)
    if setting == "2":
        with pytest.raises(ValueError, match=r"VLLM_GPTOSS_CPU_AMX='2': expected one of \['0', 'auto'\]"):
            moe_ops.cpu_native_kernel()
        return
    assert moe_ops.cpu_native_kernel() is amx
    assert amx.amx == (setting is None)


# ------------------------------------------------------------------------------ dense bf16 linear
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,N,K,bias", [(1, 200, 160, True), (3, 67, 2880 // 10, False), (5, 130, 40, True),
                                        (17, 64, 96, True), (2, 9, 7, False), (1, 1, 64, True),
                                        (2, 33, 96, True), (4, 70, 2880, False), (6, 5, 64, True),
                                        (7, 3, 32, False), (8, 100, 320, True), (9, 40, 64, True),
                                        (13, 130, 320, True), (40, 67, 64, False), (1, 70, 48, False),
                                        (2, 130, 208, True), (2, 10, 4096, True), (1, 6, 4096, False)])
def test_linear_matches_torch(any_isa, xdtype, T, N, K, bias):
    """`linear` against torch's float32 linear on the same bf16 weights: N not a multiple of the
    64-row items or the register blocks, K with and without a tail beyond whole 16-groups, 1 to 40
    tokens (all register-block widths). float32 x: products exact, sums reordered (rel. <= 1e-5);
    bf16 x: the output rounded to bf16 (rel. <= 1e-2). With AVX512_BF16, bf16 x with K a multiple
    of 32 takes the decode GEMV up to `gemv_max_tokens` (2) tokens (one stretch of rows a thread, N
    below the thread count or odd, K not a multiple of the chains), the GEMM above (token groups split
    evenly, 8-, 6- and 2-row tiles and single rows, row blocks of 64, a partial one, and threads with
    several blocks, which prefetch the next one); other K neither. Without it, 1-2 tokens with K a
    multiple of 16 take the float32 GEMV (row stretches as above, pieces of 64 rows, an odd count of
    16-groups), unless two tokens' fp32 activations pass 24 KiB (K = 4096): then, as for more tokens
    and other K, the tile.
    """
    g = torch.Generator().manual_seed(T * 1000 + N + K)
    w = torch.randn(N, K, generator=g).to(torch.bfloat16)
    b = torch.randn(N, generator=g) if bias else None
    x = (torch.randn(T, K, generator=g) * 3).to(xdtype)
    got = any_isa.linear(x, w, b)
    want = torch.nn.functional.linear(x.float(), w.float(), b)
    assert got.dtype == xdtype and got.shape == (T, N)
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err <= (1e-5 if xdtype == torch.float32 else 1e-2), err
    # leading dimensions are kept, like torch's linear
    assert any_isa.linear(x.reshape(1, T, K), w, b).shape == (1, T, N)


def test_linear_bad_input_named(native):
    w = torch.randn(8, 32).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"x: expected last dimension 32"):
        native.linear(torch.randn(2, 31), w)
    with pytest.raises(TypeError, match="weight: expected a 2-D bfloat16 tensor"):
        native.linear(torch.randn(2, 32), w.float())
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        native.linear(torch.randn(2, 32), w, torch.randn(7))


# ------------------------------------------------------------------------------ prefetch setting
def test_other_prefetch_build_gives_identical_results(native, cache_root):
    """The build for the other prefetch level (PREFETCH_HINTS: where the AVX512_BF16 decode loops
    prefetch weights) is a separate cached library whose decode loops use that hint, and computes
    bit-identical results: a prefetch changes no arithmetic."""
    other_level = "l1" if native.prefetch == "l2" else "l2"
    other = native_cpu.load(cache_root / "native", prefetch=other_level)
    assert other.prefetch == other_level and other.path != native.path
    if native.isa == "avx512_bf16":  # the loops that take the setting exist in this build
        import shutil

        if shutil.which("objdump"):
            t1 = {n.prefetch: subprocess.run(["objdump", "-d", str(n.path)], capture_output=True, text=True,
                                             check=True).stdout.count("prefetcht1") for n in (native, other)}
            # the l1 build keeps only the GEMM's next-block prefetches, which go to L2 in every build
            assert t1["l1"] < t1["l2"], t1
    g = torch.Generator().manual_seed(77)
    p = _experts(6, 256, 160, g)
    a13, a2 = _packed(native, p)
    for T in (1, 3, 40):  # the few-token (decode) path and the tile path
        x = (torch.randn(T, 256, generator=g) * 2).to(torch.bfloat16)
        w, ids = _routing(T, 6, 4, g)
        outs = [n.moe(x, w, ids, a13, p["s13"], p["b13"], a2, p["s2"], p["b2"], 1.702, 7.0) for n in (native, other)]
        assert torch.isfinite(outs[0]).all() and torch.equal(outs[0], outs[1]), T
    wl = torch.randn(200, 320, generator=g).to(torch.bfloat16)
    for T in (2, 7):  # the GEMV and the GEMM
        xl = torch.randn(T, 320, generator=g).to(torch.bfloat16)
        assert torch.equal(native.linear(xl, wl), other.linear(xl, wl)), T


@pytest.mark.parametrize("vendor,family,want", [("AuthenticAMD", 25, "l2"), ("AuthenticAMD", 26, "l1"),
                                                ("GenuineIntel", 6, "l1"), ("", -1, "l1")])
def test_default_prefetch_per_cpu(monkeypatch, vendor, family, want):
    monkeypatch.setattr(native_cpu, "_cpu_vendor_family", lambda: (vendor, family))
    assert native_cpu.default_prefetch() == want


def test_this_cpu_is_read():
    vendor, family = native_cpu._cpu_vendor_family()
    if X86 and os.path.exists("/proc/cpuinfo"):
        assert vendor in ("AuthenticAMD", "GenuineIntel", "HygonGenuine") and family > 0


def test_bad_prefetch_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"prefetch: expected one of \['l1', 'l2'\] or None, found 'l3'"):
        native_cpu.load(tmp_path, prefetch="l3")
    from vllm_gptoss import moe_ops

    monkeypatch.setenv("VLLM_GPTOSS_CPU_PREFETCH", "L3")
    with pytest.raises(ValueError, match=r"VLLM_GPTOSS_CPU_PREFETCH='L3': expected one of \['auto', 'l1', 'l2'\]"):
        moe_ops.cpu_prefetch_setting()
    monkeypatch.setenv("VLLM_GPTOSS_CPU_PREFETCH", " L2 ")
    assert moe_ops.cpu_prefetch_setting() == "l2"
    monkeypatch.setenv("VLLM_GPTOSS_CPU_PREFETCH", "auto")
    assert moe_ops.cpu_prefetch_setting() is None
    monkeypatch.delenv("VLLM_GPTOSS_CPU_PREFETCH")
    assert moe_ops.cpu_prefetch_setting() is None
