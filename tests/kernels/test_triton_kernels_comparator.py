"""The same-run comparator of benchmarks/gpu_moe.py: OpenAI's triton_kernels, as vendored in the
CUDA wheel vllm==0.32.0 and called the way vLLM 0.32's TRITON MXFP4 backend calls it
(benchmarks/triton_kernels_moe.py), against `moe_reference` on the same experts and routing.

Where triton_kernels comes from: benchmarks/.third_party (what `bash benchmarks/fetch_triton_kernels.sh`
extracts), $GPTOSS_TRITON_KERNELS, or else this test fetches it once into
$VLLM_GPTOSS_CACHE (default ~/.cache/vllm-gptoss): a 326 MB wheel download the first time, then
cached (wheel and extracted folder). GPTOSS_NO_FETCH=1 forbids the download; the test is then
skipped, naming why. In the interpreter the Hopper swizzled layouts are not used (no CUDA target:
StridedLayout, the `tl.dot_scaled` path); harness shims are listed in triton_kernels_moe.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptoss_kernels import moe_reference, route

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import triton_kernels_moe as tkm  # noqa: E402

ON_CUDA = os.environ.get("TRITON_INTERPRET") != "1"
BOUND = 1.5e-2  # bf16, as fused_moe's (test_fused_moe.py)


def _cache_dir() -> Path:
    return Path(os.environ.get("VLLM_GPTOSS_CACHE", Path.home() / ".cache" / "vllm-gptoss")) / "triton_kernels-vllm-0.32.0"


@pytest.fixture(scope="module")
def tk_path():
    found = tkm.find() or tkm.find(_cache_dir())
    if found is None:
        if os.environ.get("GPTOSS_NO_FETCH") == "1":
            pytest.skip("triton_kernels not extracted (benchmarks/fetch_triton_kernels.sh) and GPTOSS_NO_FETCH=1")
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "fetch_triton_kernels.sh"), str(_cache_dir())],
                              capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "PYTHON": sys.executable})
        found = tkm.find(_cache_dir())
        if found is None:
            pytest.skip(f"could not fetch triton_kernels from the vllm==0.32.0 wheel: {proc.stderr[-600:]}")
    return found


def _experts(E, H, I, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    b13 = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=g)
    b2 = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=g)
    s13 = torch.randint(119, 125, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
    s2 = torch.randint(119, 125, (E, H, I // 32), dtype=torch.uint8, generator=g)
    bias13 = (torch.randn(E, 2 * I, generator=g) * 0.5).to(torch.bfloat16)
    bias2 = (torch.randn(E, H, generator=g) * 0.5).to(torch.bfloat16)
    return tuple(t.to(device) for t in (b13, s13, bias13, b2, s2, bias2))


def _rel(out, ref):
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written"
    return ((out.float().cpu() - ref.float().cpu()).norm() / ref.float().cpu().norm()).item()


@pytest.mark.parametrize("T,drop", [(1, False), (5, True), (17, False)])
def test_triton_kernels_matches_reference(device, tk_path, T, drop):
    E, H, I, k = 8, 64, 96, 4  # I = 96: padded to 128 as vLLM pads this backend's expert width
    experts = _experts(E, H, I, device)
    moe = tkm.TritonKernelsMoE(*experts, tk_path=tk_path)
    assert moe.I_padded == 128 and moe.describe()["api"] == tkm.EXPECTED_API
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16).to(device)
    tw, ti = route(torch.randn(T, E, generator=g).to(device), k)
    if drop:
        ti[0] = -1  # a token on no expert of this rank
        ti[2, 1] = -1
    out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=device)
    moe(x, tw, ti, out=out)
    ref = moe_reference(x.float(), tw, ti, *experts)
    assert _rel(out, ref) <= BOUND
    if drop:
        assert out[0].abs().max().item() == 0.0


def test_triton_kernels_routing_from_logits(device, tk_path):
    """Its routing() (what serving runs) picks the experts and weights `route` picks."""
    E, H, I, k, T = 8, 64, 64, 4, 9
    experts = _experts(E, H, I, device, seed=1)
    moe = tkm.TritonKernelsMoE(*experts, tk_path=tk_path)
    logits = torch.randn(T, E).to(device)
    x = torch.randn(T, H).to(torch.bfloat16).to(device)
    out = moe.experts(x, moe.routing_from_logits(logits, k))
    tw, ti = route(logits, k)
    assert _rel(out, moe_reference(x.float(), tw, ti, *experts)) <= BOUND
