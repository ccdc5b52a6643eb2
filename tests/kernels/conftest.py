"""Kernel tests run on the CPU in Triton's interpreter: TRITON_INTERPRET must be set before the
kernels module (gptoss_kernels.fused_moe_triton, imported lazily on first use) creates its kernels.
Set GPTOSS_KERNELS_TEST_CUDA=1 on a GPU machine to run the same tests compiled on CUDA."""

import os

import pytest
import torch

ON_CUDA = os.environ.get("GPTOSS_KERNELS_TEST_CUDA") == "1" and torch.cuda.is_available()
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # also set by tests/conftest.py, for runs of the whole suite


@pytest.fixture
def device():
    return "cuda" if ON_CUDA else "cpu"
