"""Installs our harmony serving into vLLM's OpenAI server, as post-import hooks.

vLLM 0.32 hard-wires its own harmony parser for every model with ``model_type == "gpt_oss"``
(``ParserManager._compose_parser`` returns ``vllm.parser.harmony.HarmonyParser`` whenever a
reasoning or tool parser is configured). `register` therefore installs, from the table in
`vllm_gptoss.vllm_compat.harmony_hooks` (where every patch names the vLLM function it touches):

1. our `vllm_parsers.HarmonyServingParser` where vLLM would compose its built-in one;
2. our reasoning parser under ``openai_gptoss`` / ``vllm_gptoss`` and our tool parser under
   ``openai`` / ``vllm_gptoss``, so the standard flags reach our classes;
3. harmony prompt rendering by `rendering.py`, raw harmony on request (`raw.py`) and the
   reasoning budget (`budget.py`).

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

from ..envs import HARMONY_PARSER as PARSER_ENV
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
    from .. import vllm_compat

    for module, patch in vllm_compat.harmony_hooks():
        when_imported(module, patch)


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
