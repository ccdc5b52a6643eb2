"""The one place where our harmony parser is hooked into vLLM's OpenAI server.

vLLM 0.32 hard-wires its own harmony parser for every model with ``model_type == "gpt_oss"``:
``vllm.parser.parser_manager.ParserManager._compose_parser`` returns
``vllm.parser.harmony.HarmonyParser`` whenever a reasoning or tool parser is configured, ignoring
which classes the managers hold (vllm-api.md section 6). Chat completions (streamed and not), the
Responses API and request rendering all get their parser class from there. `register` therefore:

1. wraps ``ParserManager._compose_parser`` so that, where vLLM would return its built-in
   ``HarmonyParser``, it returns `vllm_parsers.HarmonyServingParser` (a subclass of it, with the
   same reasoning/tool parser classes and strict level vLLM chose);
2. registers our reasoning parser under ``openai_gptoss`` and ``vllm_gptoss`` and our tool parser
   under ``openai`` and ``vllm_gptoss`` (overwriting vLLM's entries), so the standard flags
   ``--reasoning-parser openai_gptoss --tool-call-parser openai --enable-auto-tool-choice`` and
   vLLM's per-arch default reasoning parser for ``GptOssForCausalLM`` reach our classes.

It is import-light and idempotent: vLLM modules are patched when (and if) the process imports them,
through a post-import hook, so engine-core and worker processes pay nothing for it.

``VLLM_GPTOSS_HARMONY_PARSER=builtin`` keeps vLLM's built-in parser (for comparisons).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

PARSER_ENV = "VLLM_GPTOSS_HARMONY_PARSER"
REASONING_NAMES = ("openai_gptoss", "vllm_gptoss")
TOOL_NAMES = ("openai", "vllm_gptoss")
_ADAPTERS = "vllm_gptoss.harmony.vllm_parsers"

_lock = threading.Lock()
_registered = False


def use_builtin() -> bool:
    return os.environ.get(PARSER_ENV, "").strip().lower() == "builtin"


def register() -> None:
    """Install the hooks (cheap, idempotent, no CUDA, no heavy imports)."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
    if use_builtin():
        logger.info("vllm-gptoss: %s=builtin, keeping vLLM's harmony parser", PARSER_ENV)
        return
    when_imported("vllm.reasoning", _register_reasoning_parser)
    when_imported("vllm.tool_parsers", _register_tool_parser)
    when_imported("vllm.parser.parser_manager", _patch_parser_manager)


# --- what is patched ---------------------------------------------------------------------------


def _register_reasoning_parser(mod) -> None:
    manager = mod.ReasoningParserManager
    for name in REASONING_NAMES:
        manager.reasoning_parsers.pop(name, None)  # drop a cached built-in class
        manager.register_lazy_module(name, _ADAPTERS, "GptOssHarmonyReasoningParser")


def _register_tool_parser(mod) -> None:
    manager = mod.ToolParserManager
    for name in TOOL_NAMES:
        manager.tool_parsers.pop(name, None)
        manager.register_lazy_module(name, _ADAPTERS, "GptOssHarmonyToolParser")


def _patch_parser_manager(mod) -> None:
    manager = mod.ParserManager
    if getattr(manager, "_vllm_gptoss_patched", False):
        return
    original = manager._compose_parser.__func__

    def _compose_parser(cls, *args, **kwargs):
        parser_cls = original(cls, *args, **kwargs)
        if parser_cls is None or not kwargs.get("is_harmony", False):
            return parser_cls
        from vllm.parser.harmony import HarmonyParser

        if parser_cls is not HarmonyParser:
            return parser_cls
        from .vllm_parsers import HarmonyServingParser

        return HarmonyServingParser.configured_like(parser_cls)

    manager._compose_parser = classmethod(_compose_parser)
    manager._vllm_gptoss_patched = True


# --- post-import hooks (the standard meta-path technique, as in wrapt) -------------------------

_pending: dict[str, list[Callable]] = {}


def when_imported(name: str, hook: Callable) -> None:
    """Run `hook(module)` now if `name` is imported, else right after its first import."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    _pending.setdefault(name, []).append(hook)
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._busy: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, fullname)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for hook in _pending.pop(self._name, []):
            try:
                hook(module)
            except Exception:  # noqa: BLE001 - a failed hook must not break vLLM's import
                logger.exception("vllm-gptoss: hook on %s failed", self._name)

    def __getattr__(self, item):
        return getattr(self._loader, item)
