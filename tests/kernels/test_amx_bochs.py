"""scripts/amx_bochs: the MoE's AMX path on the real instructions of Bochs's Sapphire Rapids model.

The check itself is run by hand (root, debootstrap, a Linux build, Bochs: 4-8 minutes the first
time; BENCHMARKS.md has its result). Here its dry run, which writes the same cases and runs the same
guest program on the tiles' software model, so that a broken harness fails in CI rather than on the
day someone runs the check; and its verdict, which must fail on a failed, missing or crashed case.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_kernels import cpu as native_cpu

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "scripts/amx_bochs/run.py"


def _run_module():
    spec = importlib.util.spec_from_file_location("amx_bochs_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_passes(tmp_path):
    if "avx512_bf16" not in native_cpu._cpu_flags():
        pytest.skip("the cases' host outputs and the tiles' software model need AVX512_BF16")
    proc = subprocess.run([sys.executable, str(RUN), "--dry-run", "--work", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = [ln for ln in proc.stdout.splitlines() if ln.startswith("CASE ")]
    assert len(cases) == len(_run_module().CASES) and all(ln.endswith(" PASS") for ln in cases)
    # every case ran the AMX path with the switch on and never with it off
    for ln in cases:
        items = next(f for f in ln.split() if f.startswith("amx_items="))
        on, off = map(int, items.removeprefix("amx_items=").split("/"))
        assert on > 0 and off == 0, ln
    assert "GUEST features=" in proc.stdout and "amx_permission=1" in proc.stdout


def test_verdict_fails_on_bad_console():
    run = _run_module()
    n = len(run.CASES)
    good = ("GUEST features=59 (AMX instructions: 1) amx_permission=1 threads=4\n"
            + "".join(f"CASE c{i} x PASS\n" for i in range(n)) + f"GUEST RESULT PASS ({n} cases)\n")
    assert run.verdict(good) == 0
    # the software model passes the dry run only
    model = good.replace("(AMX instructions: 1)", "(AMX instructions: 0)")
    assert run.verdict(model) == 1 and run.verdict(model, instructions=False) == 0
    assert run.verdict(good.replace("CASE c0 x PASS", "CASE c0 x FAIL")) == 1
    assert run.verdict(good.replace("CASE c0 x PASS\n", "")) == 1  # a case missing
    assert run.verdict(good.replace("GUEST RESULT PASS", "GUEST RESULT FAIL")) == 1
    assert run.verdict("".join(good.splitlines(keepends=True)[:3]) + "Kernel panic - not syncing\n") == 1


def test_guest_builds_with_the_library_flags(tmp_path):
    """The guest's compile command is the library's own (build_command), made static: same -O, -march,
    OpenMP and defines, so the check runs the code a user's build runs."""
    run = _run_module()
    lib = native_cpu.build_command(native_cpu.SOURCES, tmp_path / "x.so", march="sapphirerapids")
    guest = run.guest_command(tmp_path / "g", "sapphirerapids", emulate=False)
    flags = lambda cmd: {a for a in cmd if a.startswith(("-O", "-march", "-f", "-D", "-std"))}  # noqa: E731
    assert flags(guest) == flags(lib) - {"-fPIC"}
    assert "-static" in guest and "-shared" not in guest
    assert str(native_cpu.SOURCES[0]) in guest and str(RUN.parent / "guest.cpp") in guest
