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

3. replaces vLLM's harmony prompt rendering with `rendering.py` (chat and Responses input as the
   harmony spec renders it), and wraps the chat/Responses serving classes for raw harmony on
   request (`raw.py`) and the engine config / harmony request adjustment for the reasoning
   budget (`budget.py`); each hook below names the vLLM 0.32 file and function it wraps.

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
    when_imported("vllm.entrypoints.openai.responses.protocol", _patch_responses_tool_choice)
    # Prompt rendering (rendering.py). Order matters when the modules are already imported:
    # the defining modules first, so their originals are what rendering.STOCK keeps.
    for module in _RENDER_HOOKS:
        when_imported(module, _patch_rendering)
    # Raw harmony on request (raw.py): wraps OpenAIServingChat.create_chat_completion /
    # chat_completion_full_generator / chat_completion_stream_generator
    # (vllm/entrypoints/openai/chat_completion/serving.py) and OpenAIServingResponses.
    # create_responses / responses_full_generator (vllm/entrypoints/openai/responses/serving.py).
    when_imported("vllm.entrypoints.openai.chat_completion.serving", _patch_raw_chat)
    when_imported("vllm.entrypoints.openai.responses.serving", _patch_raw_responses)
    # Reasoning budget (budget.py): EngineArgs.create_engine_config (vllm/engine/arg_utils.py)
    # adds our logits processor to gpt-oss engines; OnlineRenderer.adjust_harmony_request
    # (vllm/renderers/online_renderer.py, run on every harmony request before its sampling
    # params are built) moves `thinking_token_budget` into vllm_xargs.
    when_imported("vllm.engine.arg_utils", _patch_engine_args)
    when_imported("vllm.renderers.online_renderer", _patch_budget_request)


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


# Harmony prompt rendering (vLLM 0.32): module -> names replaced by rendering.py's functions.
# - parser/harmony_utils.py: parse_chat_inputs_to_harmony_messages (chat messages -> harmony
#   messages) and render_for_completion (messages -> prompt ids; also imported by name below);
# - responses/harmony.py: response_input_to_harmony (one Responses input item) and
#   response_previous_input_to_harmony (one `previous_input_messages` entry);
# - renderers/online_renderer.py (OnlineRenderer._make_request_with_harmony,
#   _render_responses_with_harmony, render_responses_harmony_messages) and
#   responses/context.py (HarmonyContext.render_for_completion, later turns of a tool loop)
#   import those names into their own namespace, so they are replaced there too.
_RENDER_HOOKS = {
    "vllm.entrypoints.openai.parser.harmony_utils": (
        "parse_chat_inputs_to_harmony_messages", "render_for_completion"),
    "vllm.entrypoints.openai.responses.harmony": (
        "response_input_to_harmony", "response_previous_input_to_harmony"),
    "vllm.renderers.online_renderer": (
        "parse_chat_inputs_to_harmony_messages", "render_for_completion",
        "response_input_to_harmony"),
    "vllm.entrypoints.openai.responses.context": ("render_for_completion",),
}  # fmt: skip
_OURS = {
    "parse_chat_inputs_to_harmony_messages": "chat_messages_to_harmony",
    "render_for_completion": "render_for_completion",
    "response_input_to_harmony": "response_input_to_harmony",
    "response_previous_input_to_harmony": "response_previous_input_to_harmony",
}


def _patch_rendering(mod) -> None:
    from . import rendering

    if mod.__name__.endswith("harmony_utils"):  # kept: user/system/developer stay vLLM's
        rendering.STOCK.setdefault(
            "parse_chat_input_to_harmony_message", mod.parse_chat_input_to_harmony_message
        )
    for name in _RENDER_HOOKS[mod.__name__]:
        current = getattr(mod, name, None)
        if current is None:
            logger.warning("vllm-gptoss: %s.%s not found; prompt rendering hook skipped",
                           mod.__name__, name)
            continue
        ours = getattr(rendering, _OURS[name])
        if current is not ours:
            rendering.STOCK.setdefault(name, current)
            setattr(mod, name, ours)


def _patch_responses_tool_choice(mod) -> None:
    """Name the tool in the 400 for a Responses ``tool_choice`` that is not offered.

    vLLM 0.32 entrypoints/openai/responses/protocol.py: ``ResponsesRequest.check_tool_usage`` (a
    pydantic before-validator) calls the module-level ``_resolve_named_tool_choice(tool_name,
    tools)``, which says "Tool choice 'function' not found" for any unknown name. The validator
    looks the function up at call time, so wrapping the module attribute is enough.
    """
    original = getattr(mod, "_resolve_named_tool_choice", None)
    if original is None or getattr(original, "_vllm_gptoss", False):
        return
    from vllm.exceptions import VLLMValidationError

    def _resolve_named_tool_choice(tool_name, tools):
        try:
            return original(tool_name, tools)
        except VLLMValidationError as e:
            if "not found" not in str(e):  # e.g. an ambiguous namespaced name: keep vLLM's words
                raise
            from . import metrics, request_checks

            err = request_checks.tool_choice_not_offered(tool_name, tools)
            metrics.record_rejection(err.parameter)
            raise err from e

    _resolve_named_tool_choice._vllm_gptoss = True
    mod._resolve_named_tool_choice = _resolve_named_tool_choice


def _patch_raw_chat(mod) -> None:
    from . import raw

    raw.patch_chat(mod.OpenAIServingChat)


def _patch_raw_responses(mod) -> None:
    from . import raw

    raw.patch_responses(mod.OpenAIServingResponses)


def _patch_engine_args(mod) -> None:
    cls = mod.EngineArgs
    if getattr(cls, "_vllm_gptoss_budget", False):
        return
    original = cls.create_engine_config

    def create_engine_config(self, *args, **kwargs):
        config = original(self, *args, **kwargs)
        from . import budget

        budget.add_to_engine_config(config)
        return config

    cls.create_engine_config = create_engine_config
    cls._vllm_gptoss_budget = True


def _patch_budget_request(mod) -> None:
    cls = mod.OnlineRenderer
    if getattr(cls, "_vllm_gptoss_budget", False):
        return
    original = cls.adjust_harmony_request

    def adjust_harmony_request(self, request):
        from . import budget

        budget.apply(request)
        return original(self, request)

    cls.adjust_harmony_request = adjust_harmony_request
    cls._vllm_gptoss_budget = True


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
