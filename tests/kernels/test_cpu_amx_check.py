"""benchmarks/cpu_amx_check.sh, the lent GPU machine's one-call CPU check, in its QUICK dry run here
(small shapes): it must run end to end and write what a session reads back (cpu.txt, one JSON per
A/B with our build and torch_bf16 in it), so that a lease is not spent finding a broken script."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the native kernels' builds are x86")
def test_quick_dry_run(tmp_path):
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/cpu_amx_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Model name" in (tmp_path / "cpu.txt").read_text()
    for name in ("T64_2threads", "T512_2threads", "T512_allcores"):
        assert "rc=0" in (tmp_path / f"ab_{name}.log").read_text(), name
        res = json.loads((tmp_path / f"ab_{name}.json").read_text())
        assert {"WORKTREE", "torch_bf16"} <= set(res["variants"]), name
        assert all(v["median_gb_per_s"] > 0 for v in res["variants"].values())
