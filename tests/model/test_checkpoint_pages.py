"""checkpoint_pages.release: a checkpoint tensor's pages mapped from a .safetensors shard are unmapped
once copied (RSS drops, the values read back unchanged); heap memory, small tensors and non-contiguous
views are left alone."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_gptoss import checkpoint_pages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="madvise on /proc/self/maps mappings: Linux only")


def _rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_mapped_pages_are_released_and_still_read_right(tmp_path):
    g = torch.Generator().manual_seed(5)
    big = torch.randn(16 << 20, generator=g)  # 64 MiB
    path = tmp_path / "model-00001-of-00001.safetensors"
    save_file({"big": big, "small": torch.randn(1000, generator=g)}, str(path))
    with safe_open(str(path), framework="pt") as f:
        t = f.get_tensor("big")
        assert torch.equal(t, big)  # every page read: resident, mapped from the file
        before = _rss_file_bytes()
        assert checkpoint_pages.release(t)
        dropped = before - _rss_file_bytes()
        assert dropped >= 48 << 20, f"only {dropped / 2**20:.1f} MiB of file pages released"
        assert torch.equal(t, big)  # faulted back in from the file
        small = f.get_tensor("small")
        assert not checkpoint_pages.release(small)  # under 1 MiB: no system call
        assert not checkpoint_pages.release(t[::2])  # not contiguous


def test_heap_memory_is_left_alone():
    x = torch.randn(8 << 20)
    y = x.clone()
    assert not checkpoint_pages.release(x)
    assert torch.equal(x, y)
