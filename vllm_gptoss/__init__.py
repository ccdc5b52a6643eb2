"""vLLM plugin for OpenAI's gpt-oss models.

`register()` is the `vllm.general_plugins` entry point: vLLM calls it in every process (API server,
engine core, workers, the registry's inspection subprocess). It must stay cheap, idempotent and must
not initialise CUDA: it only records names and lazy import paths.

Set VLLM_GPTOSS_DISABLE=1 to switch the plugin off (vLLM's built-in gpt-oss code then runs).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

from .envs import DISABLE as DISABLE_ENV
_registered = False


def plugin_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def register() -> None:
    global _registered
    if _registered:
        return
    from . import envs

    envs.declare()  # also when disabled: VLLM_GPTOSS_DISABLE itself must not be flagged as unknown
    if plugin_disabled():
        logger.info("vllm-gptoss: disabled by %s", DISABLE_ENV)
        return
    from . import registration

    from .vllm_compat import check_vllm_version

    check_vllm_version()  # one warning outside the tested range (or a refusal, by a switch)
    registration.register_all()
    _registered = True
