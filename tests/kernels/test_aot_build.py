"""Every Triton kernel variant the package can launch, built ahead of time for every NVIDIA target
vLLM serves gpt-oss on (sm_75 in fp16; sm_80, 86, 89, 90, 100, 120 in bf16 and fp16), with the
ptxas in the triton wheel: no GPU needed. `gptoss_kernels.aot` records the launches of the real
host code (`route`, `fused_moe`: align, GEMM1, GEMM2; the cast is a torch op, not a kernel) for
each target and both weight layouts (checkpoint byte order, K16) and compiles each distinct
variant. A variant that does not build fails the test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_kernels import capability as cap
from gptoss_kernels import moe as moe_mod

pytestmark = pytest.mark.slow
KERNELS = str(Path(__file__).resolve().parents[2] / "kernels")


def _clean_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", cap.FAST_DEQUANT_ENV)}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # really compile, never a cache hit
    env["PYTHONPATH"] = KERNELS + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    out = tmp / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "gptoss_kernels.aot", "--dtype", "bf16", "fp16", "--json", str(out)],
                          env=_clean_env(tmp), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"ahead-of-time build failed:\n{proc.stderr[-8000:]}"
    print(proc.stdout)
    return json.loads(out.read_text())["rows"]


def _expected_tile_configs(monkeypatch) -> set[tuple]:
    """Every tile config `_pick_config` can return on a GPU (interpreter off), as (BM, BN, BK, SPLIT_K)."""
    monkeypatch.setattr(moe_mod, "_interpreting", lambda: False)
    cfgs = {moe_mod._pick_config(rows, slots) for rows in (1, 16, 17, 48, 49, 1000) for slots in (4, 16, 17, 4096)}
    return {(c.block_m, c.block_n, c.block_k, c.split_k) for c in cfgs}


def test_every_target_and_dtype_builds(built, monkeypatch):
    targets = {f"sm_{a}{b}" for a, b in cap.BUILD_TARGETS}
    assert {r["target"] for r in built} == targets
    want_cfgs = _expected_tile_configs(monkeypatch)
    for a, b in cap.BUILD_TARGETS:
        t = f"sm_{a}{b}"
        dtypes = {r["dtype"] for r in built if r["target"] == t}
        assert dtypes == ({"fp16"} if (a, b) < cap.BF16_MIN_CAPABILITY else {"bf16", "fp16"}), (t, dtypes)
        for d in dtypes:
            rows = [r for r in built if r["target"] == t and r["dtype"] == d]
            assert {r["kernel"] for r in rows} >= {"_route_kernel", "_gemm1_kernel", "_gemm2_kernel"}, (t, d)
            gemm2 = {(r["constexprs"]["BLOCK_M"], r["constexprs"]["BLOCK_N"], r["constexprs"]["BLOCK_K"],
                      r["constexprs"]["SPLIT_K"]) for r in rows if r["kernel"] == "_gemm2_kernel"}
            assert gemm2 == want_cfgs, (t, d, gemm2, want_cfgs)  # each config, split-K on and off
            # the dequantization each GEMM was built with is the capability rule's for that target
            want = cap.kernel_variant((a, b), {"bf16": __import__("torch").bfloat16,
                                               "fp16": __import__("torch").float16}[d]).dequant
            assert {r["constexprs"]["DEQUANT"] for r in rows if r["kernel"].startswith("_gemm")} == {want}, (t, d)
            # both weight layouts (checkpoint byte order and K16), for both GEMMs
            for kern in ("_gemm1_kernel", "_gemm2_kernel"):
                assert {r["constexprs"]["K16"] for r in rows if r["kernel"] == kern} == {False, True}, (t, d, kern)
    assert any(r["kernel"] == "_align_kernel" for r in built)


def test_hopper_kernels_do_not_spill(built):
    for r in built:
        if r["target"] == "sm_90":
            assert r["spill_bytes"] == 0, r
            if r["kernel"].startswith("_gemm"):
                assert r["registers"] <= 255 and (r["ptx_mma"] or r["ptx_wgmma"]), r


def test_the_build_check_catches_sm90_only_ptx_on_ampere(tmp_path):
    """The failure this test exists for: the sm_90 dequantization (mul.rn.bf16x2) built for sm_80."""
    code = (
        "import torch, gptoss_kernels.aot as a, gptoss_kernels.capability as cap\n"
        "a.SHAPES, a.TOKENS = a.SHAPES[:1], (1,)\n"
        "cap.kernel_variant = lambda cc, dt: cap.KernelVariant(True, cap.DEQUANT_PTX_MUL, 'forced')\n"
        "import gptoss_kernels.moe as m; m.kernel_variant = cap.kernel_variant\n"
        "item = [i for i in a.plan((8, 0), {'bf16': torch.bfloat16}, log=lambda s: None) if i['kernel'] == '_gemm1_kernel'][0]\n"
        "print(a._compile_one(item).get('error', 'BUILT'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "does not build" in proc.stdout and "sm_90" in proc.stdout, proc.stdout


def test_persistent_prefill_grid_builds(tmp_path):
    """The persistent grid of issue 14 part 3 (not pick_config's default yet, so the sweep above does
    not build it): the prefill variants benchmarks/gpu_moe.py times, both GEMMs and both layouts, for
    sm_90 (wgmma, no spills) and sm_80 (the fma.rn.bf16x2 dequantization)."""
    code = (
        "import json, torch, gptoss_kernels.aot as a\n"
        "from gptoss_kernels.moe import TileConfig\n"
        "a.SHAPES = a.SHAPES[:1]\n"
        "cfgs = [TileConfig(64, 128, 64, 4, 4, persistent=2), TileConfig(128, 128, 64, 8, 3, persistent=1)]\n"
        "rows = a.build([(9, 0), (8, 0)], {'bf16': torch.bfloat16}, jobs=2, log=lambda s: None, configs={4096: cfgs})\n"
        "print(json.dumps([{k: r.get(k) for k in ('kernel', 'target', 'constexprs', 'spill_bytes', 'registers',\n"
        "                   'ptx_wgmma', 'ptx_mma', 'error')} for r in rows], default=str))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [r for r in json.loads(proc.stdout.strip().splitlines()[-1]) if r["kernel"].startswith("_gemm")]
    assert not [r for r in rows if r.get("error")], [r["error"] for r in rows if r.get("error")]
    built = {(r["target"], r["kernel"], r["constexprs"]["BLOCK_M"], r["constexprs"]["K16"]) for r in rows
             if r["constexprs"]["PERSISTENT"]}
    assert built == {(t, k, bm, k16) for t in ("sm_90", "sm_80") for k in ("_gemm1_kernel", "_gemm2_kernel")
                     for bm in (64, 128) for k16 in (False, True)}, built
    for r in rows:
        assert r["spill_bytes"] == 0 and r["registers"] <= 255, r
        assert r["ptx_wgmma"] if r["target"] == "sm_90" else r["ptx_mma"], r
