import os

# vLLM on this machine is the CPU build; tests never touch a GPU.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# The Triton kernels run in Triton's interpreter on the CPU. TRITON_INTERPRET must be set before
# anything imports triton (vLLM does, when test modules of other folders are collected): triton
# decides at import time whether its own @jit library functions (tl.sort, ...) are interpreted.
# GPTOSS_KERNELS_TEST_CUDA=1 on a GPU machine runs the kernel tests compiled instead.
if os.environ.get("GPTOSS_KERNELS_TEST_CUDA") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
