"""vllm_gptoss.huge_pages: large CPU weights are marked for transparent huge pages before they are
written (the kernel's VmFlags `hg` on their memory), small or non-CPU tensors are not, and the
switch and the THP modes where asking is pointless leave memory alone. Whether the kernel then finds
free 2 MiB pages is up to its memory state, so that is measured by the benchmark, not asserted here."""

import sys

import pytest
import torch

from vllm_gptoss import huge_pages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="madvise and /proc/self/smaps are Linux's")


def _vm_flags(addr: int) -> set[str]:
    """VmFlags of the mapping holding address `addr` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.fixture
def madvise_mode(monkeypatch):
    monkeypatch.delenv("VLLM_GPTOSS_CPU_HUGE_PAGES", raising=False)
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "madvise")


def test_large_tensor_marked_before_its_pages_are_written(madvise_mode):
    t = torch.empty(24 << 20, dtype=torch.uint8)
    asked = huge_pages.advise(t)
    # the whole 2 MiB pages inside the tensor: at least 22 of its 24 MiB
    assert asked % huge_pages.HUGE_PAGE == 0 and 22 << 20 <= asked <= 24 << 20
    middle = t.data_ptr() + t.nbytes // 2
    assert "hg" in _vm_flags(middle)
    t.fill_(7)  # the contents are what is written, whatever the page size
    assert int(t[:: 1 << 20].min()) == 7 == int(t[-1])


def test_small_meta_and_switched_off_are_not_asked(madvise_mode, monkeypatch):
    assert huge_pages.advise(torch.empty(1 << 20, dtype=torch.uint8)) == 0
    assert huge_pages.advise(torch.empty(32 << 20, dtype=torch.uint8, device="meta")) == 0
    monkeypatch.setenv("VLLM_GPTOSS_CPU_HUGE_PAGES", "0")
    # above glibc's largest mmap threshold (32 MiB): a fresh mapping, never heap memory advised before
    t = torch.empty(64 << 20, dtype=torch.uint8)
    assert huge_pages.advise(t) == 0
    assert "hg" not in _vm_flags(t.data_ptr() + t.nbytes // 2)


@pytest.mark.parametrize("mode", ["always", "never", ""])
def test_other_thp_modes_are_left_alone(monkeypatch, mode):
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: mode)
    assert huge_pages.advise(torch.empty(24 << 20, dtype=torch.uint8)) == 0


def test_thp_mode_parsed(tmp_path, monkeypatch):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    monkeypatch.setattr(huge_pages, "THP_ENABLED", str(f))
    huge_pages.thp_mode.cache_clear()
    try:
        assert huge_pages.thp_mode() == "madvise"
        huge_pages.thp_mode.cache_clear()
        f.write_text("[always] madvise never\n")
        assert huge_pages.thp_mode() == "always"
    finally:
        huge_pages.thp_mode.cache_clear()


def test_module_parameters_asked(madvise_mode):
    m = torch.nn.Linear(2048, 2048, bias=True)  # 16 MiB weight, 8 KiB bias
    assert huge_pages.advise_module(m) >= 14 << 20
