"""Which NVIDIA GPUs the fused MoE kernels run on, and which E2M1 dequantization each one gets.

One rule, read by `pick_config` (so the config it returns is exactly what `fused_moe` launches on
that device), by the plugin's MXFP4 method (to stop loading with a message naming the GPU instead of
failing at the first forward) and by the ahead-of-time build test (`gptoss_kernels.aot`, which
compiles every variant for every target with the ptxas that ships in the triton wheel).

The rule, and why:
- sm_75 (Turing: T4) and newer: the kernels need `tl.dot` on tensor cores (fp16 MMA exists from
  sm_75); older GPUs are refused. On sm_75 only fp16 and fp32 activations: bf16 has neither tensor
  cores nor conversion instructions there (`cvt.*.bf16` needs sm_80), so bf16 is refused with the way
  out (`--dtype float16`).
- bf16 on sm_90 and newer (H100/H200, B200, RTX 50xx): the inline-PTX dequantization with
  `mul.rn.bf16x2` (exists from sm_90 on; on an H200 it took the 120b layer at T=1 from 88.2 to
  78.7 us, BENCHMARKS.md).
- bf16 on sm_80 to sm_89 (A100, A10, L4, RTX 30xx/40xx): the same bit trick with the product done by
  `fma.rn.bf16x2 a, b, -0.0` (sm_80 has bf16x2 FMA but no bf16x2 multiply; adding -0.0 leaves every
  product, signed zeros included, unchanged, and bf16 FMA keeps subnormals: it has no .ftz form).
- fp16 and fp32 activations on any supported GPU, and every dtype in Triton's interpreter: the plain
  dequantization (integer bit moves to fp16, then a float32 multiply by the scale), which compiles
  everywhere.
`GPTOSS_KERNELS_FAST_DEQUANT=0` forces the plain dequantization; `=fma` forces the sm_80 sequence on
any sm_80+ GPU (to check it on a Hopper machine).
"""

from __future__ import annotations

import dataclasses
import os

import torch

# dequantization variants (a constexpr of the GEMM kernels)
DEQUANT_PLAIN = 0
DEQUANT_PTX_MUL = 1  # mul.rn.bf16x2, sm_90+
DEQUANT_PTX_FMA = 2  # fma.rn.bf16x2 with a -0.0 addend, sm_80+
DEQUANT_NAMES = {DEQUANT_PLAIN: "plain", DEQUANT_PTX_MUL: "ptx-mul.bf16x2", DEQUANT_PTX_FMA: "ptx-fma.bf16x2"}

MIN_CAPABILITY = (7, 5)
BF16_MIN_CAPABILITY = (8, 0)
FAST_DEQUANT_ENV = "GPTOSS_KERNELS_FAST_DEQUANT"

# every target the ahead-of-time build test compiles for (sm_75 only in fp16/fp32, by the rule above)
BUILD_TARGETS = ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0))


@dataclasses.dataclass(frozen=True)
class KernelVariant:
    supported: bool
    dequant: int  # DEQUANT_*; meaningful when supported
    reason: str  # why not supported (names the way out), or what was picked

    @property
    def dequant_name(self) -> str:
        return DEQUANT_NAMES[self.dequant]


def _fmt(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def kernel_variant(capability: tuple[int, int] | None, dtype: torch.dtype) -> KernelVariant:
    """The variant of the fused kernels for a GPU of `capability` (major, minor) running activations
    of `dtype`. `capability` None means Triton's interpreter (CPU tests): plain dequantization."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return KernelVariant(False, DEQUANT_PLAIN, f"activations must be bf16, fp16 or fp32, found {dtype}")
    if capability is None:
        return KernelVariant(True, DEQUANT_PLAIN, "Triton interpreter: plain dequantization")
    cc = tuple(capability)
    if cc < MIN_CAPABILITY:
        return KernelVariant(False, DEQUANT_PLAIN,
                             f"the fused MXFP4 MoE kernels need compute capability {_fmt(MIN_CAPABILITY)} "
                             f"(Turing) or newer, found {_fmt(cc)}")
    if dtype == torch.bfloat16 and cc < BF16_MIN_CAPABILITY:
        return KernelVariant(False, DEQUANT_PLAIN,
                             f"bf16 needs compute capability {_fmt(BF16_MIN_CAPABILITY)} or newer, found "
                             f"{_fmt(cc)}: serve with --dtype float16")
    want = os.environ.get(FAST_DEQUANT_ENV, "1").strip().lower()
    if dtype != torch.bfloat16 or want == "0":
        return KernelVariant(True, DEQUANT_PLAIN, "plain dequantization")
    if want == "fma" or cc < (9, 0):
        return KernelVariant(True, DEQUANT_PTX_FMA, f"{_fmt(cc)} bf16: inline-PTX fma.rn.bf16x2 dequantization")
    return KernelVariant(True, DEQUANT_PTX_MUL, f"{_fmt(cc)} bf16: inline-PTX mul.rn.bf16x2 dequantization")


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for Triton's interpreter (tensors on the CPU)."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))
