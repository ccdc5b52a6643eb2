"""Everything the plugin registers with vLLM, in one place."""

from __future__ import annotations

MODEL_ARCH = "GptOssForCausalLM"
MODEL_CLASS = "vllm_gptoss.model:GptOssForCausalLM"


def register_all() -> None:
    from vllm import ModelRegistry

    # Same arch name as the built-in: keeps vLLM's per-arch hooks (reasoning-parser default,
    # cudagraph mode, LoRA interleave handling) while our class replaces the built-in one.
    ModelRegistry.register_model(MODEL_ARCH, MODEL_CLASS)
    # Importing the module runs @register_quantization_config.
    from . import mxfp4_method  # noqa: F401
    # Harmony parser for the OpenAI server (post-import hooks only; nothing heavy imported here).
    from .harmony import hooks

    hooks.register()
