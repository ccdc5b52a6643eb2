"""Hand a checkpoint tensor's file pages back to the kernel once it has been copied into its parameter.

vLLM's default ("lazy") loader maps each safetensors shard and yields tensors that read from that
mapping; the pages they touch stay in this process's RSS until the shard is closed. At gpt-oss-20b
the last shard holds the embedding and the lm_head, so while it loads ~2.3 GB of clean file pages sit
beside the model's ~13.4 GiB: that made the peak RSS (15.7-15.8 GiB) ~1 GiB higher than what stays
resident (BENCHMARKS.md, "Where the resident memory went"), on a checkpoint of 4.6 GB shards more.

`release(t)` unmaps the tensor's pages from this process now (madvise MADV_DONTNEED), only when they
lie in a private mapping of a `.safetensors` file, found in /proc/self/maps. The pages stay in the
page cache (a restart reads the checkpoint from memory as before; MADV_PAGEOUT would evict them) and
a later read of the tensor faults them back in from the file. Only pages this process wrote to would
lose the writes (a private mapping's copies), and nothing writes to a checkpoint tensor the loader has
copied. Anonymous memory (another loader's heap tensors) is never touched. Anywhere else (not Linux,
no such mapping) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys

import torch

logger = logging.getLogger(__name__)

MADV_DONTNEED = 4  # linux/mman.h
_PAGE = mmap.PAGESIZE
_MIN_BYTES = 1 << 20  # smaller tensors: not worth a system call
_state: dict = {"libc": None, "disabled": sys.platform != "linux"}


def _safetensors_mappings() -> list[tuple[int, int]]:
    """[start, end) of this process's private mappings of .safetensors files."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].rstrip().endswith(".safetensors") and parts[1][3] == "p":
                lo, hi = parts[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def _in_safetensors_mapping(lo: int, hi: int) -> bool:
    # read afresh every time (~1 ms, once per tensor of >= 1 MiB): a remembered range could by now
    # be a closed shard's, its addresses reused by the heap, where MADV_DONTNEED would zero live data
    return any(a <= lo and hi <= b for a, b in _safetensors_mappings())


def release(t: torch.Tensor) -> bool:
    """Unmap the whole pages of a checkpoint tensor's bytes if they lie in a private mapping of a
    .safetensors file. Returns whether it did."""
    if _state["disabled"] or t.device.type != "cpu" or not t.is_contiguous():
        return False
    start = t.data_ptr()
    lo = -(-start // _PAGE) * _PAGE
    hi = (start + t.numel() * t.element_size()) // _PAGE * _PAGE
    if hi - lo < _MIN_BYTES or not _in_safetensors_mapping(lo, hi):
        return False
    if _state["libc"] is None:
        _state["libc"] = ctypes.CDLL(None, use_errno=True)
    if _state["libc"].madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) != 0:
        _state["disabled"] = True  # not expected on Linux; then the pages go when the shard is closed
        logger.warning("vllm-gptoss: madvise(MADV_DONTNEED) on a checkpoint mapping failed (errno %d); its "
                       "pages stay mapped until each shard is closed", ctypes.get_errno())
        return False
    return True
