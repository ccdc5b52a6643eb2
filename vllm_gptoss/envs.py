"""Every environment variable vllm-gptoss reads, in one place: each name is defined here once and
imported where it is read; `ENV_VARS` (name -> what it does) is what README's table documents and
what `declare()` adds to vLLM's table, so that setting them is not flagged as unknown (vLLM warns
about unknown `VLLM_*` variables, or refuses them with strict validation).
"""

from __future__ import annotations

import os
from pathlib import Path

DISABLE = "VLLM_GPTOSS_DISABLE"
STRICT_VLLM_VERSION = "VLLM_GPTOSS_STRICT_VLLM_VERSION"
TRITON_MOE = "VLLM_GPTOSS_TRITON_MOE"
CPU_NATIVE = "VLLM_GPTOSS_CPU_NATIVE"
CPU_DENSE_GEMV = "VLLM_GPTOSS_CPU_DENSE_GEMV"
CPU_PREFETCH = "VLLM_GPTOSS_CPU_PREFETCH"
CPU_HUGE_PAGES = "VLLM_GPTOSS_CPU_HUGE_PAGES"
CPU_MARCH = "VLLM_GPTOSS_CPU_MARCH"
CPU_AMX = "VLLM_GPTOSS_CPU_AMX"
HARMONY_PARSER = "VLLM_GPTOSS_HARMONY_PARSER"
LEGACY_TOOL_CALL_HEADERS = "VLLM_GPTOSS_LEGACY_TOOL_CALL_HEADERS"
REASONING_EFFORT = "VLLM_GPTOSS_REASONING_EFFORT"
THINKING_BUDGET = "VLLM_GPTOSS_THINKING_BUDGET"
MAX_N = "VLLM_GPTOSS_MAX_N"
CACHE = "VLLM_GPTOSS_CACHE"
FIXTURE_THREADS = "VLLM_GPTOSS_FIXTURE_THREADS"

ENV_VARS = {
    DISABLE: "1/true: the plugin registers nothing; vLLM's built-in gpt-oss code runs",
    STRICT_VLLM_VERSION: "1: refuse to register on a vLLM release other than the tested one "
                         "(default: one warning naming both versions)",
    TRITON_MOE: "0: use the torch MXFP4 MoE path on CUDA instead of the fused Triton kernels",
    CPU_NATIVE: "0: no native (C++) CPU kernels: the torch MXFP4 MoE path, and vLLM's own GEMMs for the bf16 layers",
    CPU_DENSE_GEMV: "0: keep vLLM-CPU's oneDNN GEMM for the attention projections and lm_head on AVX-512 "
                    "CPUs (default auto: AVX512_BF16 without AMX, the native GEMV / GEMM up to 256 tokens, torch's "
                    "linear for more; AVX-512 without AVX512_BF16, the native GEMM for every call; on layers of "
                    ">= 1 MiB; 1: also on AMX CPUs; all: as 1, and smaller layers too)",
    CPU_PREFETCH: "l1|l2: the cache the native decode loops (AVX-512 few-token MoE, dense GEMVs) prefetch "
                  "weights into (default auto: l2 on AMD family 25, Zen 3 / Zen 4, l1 elsewhere; results are the same)",
    CPU_MARCH: "gcc -march for the native CPU kernels (default native: this CPU's instructions); another "
               "CPU's value runs that CPU's code path (e.g. skylake-avx512, x86-64-v3), for benchmarks or where "
               "a VM reports instructions it does not run; a separate cached build each",
    CPU_AMX: "0: keep the native MoE's AVX512_BF16 dot products for experts with 8+ tokens of a call on AMX "
             "CPUs (default auto: there they multiply on AMX tiles, after a check against the AVX-512 path at load)",
    CPU_HUGE_PAGES: "0: do not ask Linux for transparent huge pages under the model's large CPU weights "
                    "(default: asked where THP is in `madvise` mode; decoding streams them faster)",
    HARMONY_PARSER: "builtin: keep vLLM's own HarmonyParser in the server instead of ours",
    LEGACY_TOOL_CALL_HEADERS: "1: render past tool calls in prompts with vLLM's legacy header "
                              "(`assistant to=functions.f<|channel|>commentary json`) instead of harmony's",
    REASONING_EFFORT: "low|medium|high: server-wide default reasoning effort for gpt-oss",
    THINKING_BUDGET: "N: server-wide default thinking_token_budget (analysis tokens per turn) for gpt-oss",
    MAX_N: "largest `n` (choices per chat request) the harmony server accepts (default 16)",
    CACHE: "directory for the fixture model and built native kernels (default ~/.cache/vllm-gptoss)",
    FIXTURE_THREADS: "torch threads used to train the tiny harmony fixture model (development side)",
}


def cache_root() -> Path:
    """VLLM_GPTOSS_CACHE, else ~/.cache/vllm-gptoss."""
    return Path(os.environ.get(CACHE) or Path.home() / ".cache" / "vllm-gptoss")


def declare() -> None:
    from .vllm_compat import declare_env_variables

    declare_env_variables(ENV_VARS)
