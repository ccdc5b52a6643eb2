"""Transparent huge pages for the large weights that CPU decoding streams (Linux).

Why: at decode every weight is read once per token from DRAM. On 4 KiB pages the CPU's hardware
prefetchers stop at every page boundary and each page costs a TLB walk; on 2 MiB pages they run on.
Measured on AMD Zen 4 (BENCHMARKS.md, same process, calls interleaved, weights from DRAM): the native
decode GEMV on qkv-shaped bf16 weights 1.18x faster with 2 threads and 1.46x with 1; the one-token
MXFP4 MoE 1.06-1.12x. Most Linux distributions set transparent huge pages to `madvise` (only memory
that asks gets them), and torch's CPU allocator does not ask. So we do: madvise(MADV_HUGEPAGE) on the
2 MiB-aligned interior of each large weight's memory, *before its pages are first written* (the
loader's writes then fault in huge pages; pages already present would be left to khugepaged's slow
background scan). With THP `always` nothing needs asking, with `never` nothing can be: no call then.
The memory and its contents are the same; only the page size changes. VLLM_GPTOSS_CPU_HUGE_PAGES=0
switches this off.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

import torch

from .envs import CPU_HUGE_PAGES as CPU_HUGE_PAGES_ENV

logger = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MIN_BYTES = 4 << 20  # smaller tensors span at most one whole huge page: not worth a system call
MADV_HUGEPAGE = 14  # linux/mman.h
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: always / madvise / never ("" where unknown)."""
    try:
        with open(THP_ENABLED) as f:
            text = f.read()  # e.g. "always [madvise] never"
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


@functools.cache
def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def enabled() -> bool:
    return (sys.platform == "linux" and os.environ.get(CPU_HUGE_PAGES_ENV, "1").strip() != "0"
            and thp_mode() == "madvise")


def advise(t: torch.Tensor) -> int:
    """Ask for huge pages under tensor `t`'s memory; returns the bytes asked for (0: not asked: not
    a CPU tensor, under MIN_BYTES, switched off, THP not in `madvise` mode, or the call failed).
    Call it before the tensor's pages are first written."""
    if t.device.type != "cpu" or t.nbytes < MIN_BYTES or not enabled():
        return 0
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
    if end <= start:
        return 0
    if _madvise()(start, end - start, MADV_HUGEPAGE) != 0:
        logger.debug("vllm-gptoss: madvise(MADV_HUGEPAGE) failed: %s", os.strerror(ctypes.get_errno()))
        return 0
    return end - start


def copy_on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` in fresh memory asked for huge pages before it is written (where advise() asks):
    how the benchmarks give their weights the placement the plugin's loader gives a model's."""
    out = torch.empty_like(t)
    advise(out)
    return out.copy_(t)


def advise_module(module: torch.nn.Module) -> int:
    """advise() every parameter of `module`; returns the bytes asked for."""
    total = sum(advise(p.data) for p in module.parameters())
    if total:
        logger.info("vllm-gptoss: %.2f GiB of weights on transparent huge pages (%s=0 switches it off)",
                    total / 2**30, CPU_HUGE_PAGES_ENV)
    return total
