"""Every environment variable vllm-gptoss reads, in one place.

vLLM warns about (or, with strict validation, refuses) unknown `VLLM_*` variables; `declare()` adds
ours to vLLM's table so that setting them is not flagged.
"""

from __future__ import annotations

import os

ENV_VARS = {
    "VLLM_GPTOSS_DISABLE": "1/true: the plugin registers nothing; vLLM's built-in gpt-oss code runs",
    "VLLM_GPTOSS_TRITON_MOE": "0: use the torch MXFP4 MoE path on CUDA instead of the fused Triton kernels",
    "VLLM_GPTOSS_CPU_NATIVE": "0: use the torch MXFP4 MoE path on the CPU instead of the native (C++) kernel",
    "VLLM_GPTOSS_HARMONY_PARSER": "builtin: keep vLLM's own HarmonyParser in the server instead of ours",
    "VLLM_GPTOSS_REASONING_EFFORT": "low|medium|high: server-wide default reasoning effort for gpt-oss",
    "VLLM_GPTOSS_THINKING_BUDGET": "N: server-wide default thinking_token_budget (analysis tokens per turn) for gpt-oss",
    "VLLM_GPTOSS_MAX_N": "largest `n` (choices per chat request) the harmony server accepts (default 16)",
    "VLLM_GPTOSS_CACHE": "directory for the fixture model and built native kernels (default ~/.cache/vllm-gptoss)",
    "VLLM_GPTOSS_FIXTURE_THREADS": "torch threads used to train the tiny harmony fixture model",
}


def declare() -> None:
    try:
        from vllm import envs
    except ImportError:
        return
    table = getattr(envs, "environment_variables", None)
    if isinstance(table, dict):
        for name in ENV_VARS:
            table.setdefault(name, lambda name=name: os.environ.get(name))
