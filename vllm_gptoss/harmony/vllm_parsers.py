"""Our harmony parser in vLLM's parser classes (imported only where vLLM serves; see hooks.py).

`HarmonyServingParser` subclasses vLLM's built-in `vllm.parser.harmony.HarmonyParser`, so every
``isinstance`` check in vLLM's chat-completions and Responses code still holds, and replaces all of
its parsing with `parser.HarmonyStreamParser`:

- ``parse`` (non-streamed) runs the very same delta path as ``parse_delta`` over all tokens and
  joins the deltas, so a streamed response concatenates to the non-streamed one by construction;
- ``process_chunk`` / ``flush`` feed the Responses API (`HarmonyContext`) with the same segments
  and completed messages the built-in produced, but repaired;
- ``adjust_request`` resolves reasoning effort (effort.py), rejects bad requests with a 400 naming
  the field (bad tool schemas here, everything else in request_checks.py), then keeps vLLM's
  structural-tag handling (tool_choice required/named, response_format) and
  seals every JSON part of the tag against harmony control-token text (`seal_json_content`).

Routing (chat completions): ``analysis`` -> ``reasoning``; ``final``, or ``commentary`` without a
recipient -> ``content``; any ``functions.*`` recipient on any channel -> ``tool_calls``; built-in
tool recipients (browser, python) are not chat-completions output and are skipped, as in vLLM.
Messages of one kind are joined with "\\n", as vLLM does.

The two manager-registered classes subclass vLLM's `GptOssReasoningParser` / `GptOssToolParser`
(vLLM's `HarmonyParser.__init__` insists on that) and behave like them in the engine core.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from openai_harmony import Message, Role
from vllm.exceptions import VLLMValidationError

from ..vllm_compat import harmony_parser_api, reasoning_parser_model_config

from . import effort, metrics, request_checks
from .parser import FUNCTIONS_PREFIX, Event, HarmonyStreamParser, ParsedMessage, make_parser

_api = harmony_parser_api()  # vLLM 0.32's parser classes (vllm_compat.py says from where)
DeltaFunctionCall, DeltaMessage, DeltaToolCall, FunctionCall = (
    _api.DeltaFunctionCall, _api.DeltaMessage, _api.DeltaToolCall, _api.FunctionCall)
ChunkResult, HarmonyParser, Segment = _api.ChunkResult, _api.HarmonyParser, _api.Segment
GptOssReasoningParser, GptOssToolParser = _api.GptOssReasoningParser, _api.GptOssToolParser
make_tool_call_id = _api.make_tool_call_id


class GptOssHarmonyReasoningParser(GptOssReasoningParser):
    """`--reasoning-parser openai_gptoss` (and `vllm_gptoss`) with the plugin installed.

    The output is parsed by `HarmonyServingParser`; this class declares the capability and keeps
    the built-in's engine-core behaviour (reasoning never gates structured output: the harmony
    structural tag already covers the analysis channel).
    """


class GptOssHarmonyToolParser(GptOssToolParser):
    """`--tool-call-parser openai` (and `vllm_gptoss`) with the plugin installed."""


def tool_names(tools: Any) -> frozenset[str] | None:
    """Offered function names from chat-completions or Responses tools (None: no tools)."""
    if not tools:
        return None
    return frozenset(name for _, _, fn in request_checks.function_tools(tools)
                     if isinstance(name := getattr(fn, "name", None), str))


def validate_tools(request: Any) -> None:
    """400 for a function tool whose parameters schema is not a JSON-schema object."""
    for _, path, fn in request_checks.function_tools(getattr(request, "tools", None)):
        params, where = getattr(fn, "parameters", None), f"{path}.parameters"
        if params is None:
            continue
        kind = params.get("type", "object") if isinstance(params, dict) else type(params).__name__
        if not isinstance(params, dict) or kind != "object":
            raise VLLMValidationError(
                f"{where} must be a JSON schema of type 'object' (the harmony tool signature is "
                f"an object of named arguments); found type {kind!r}.",
                parameter=where,
            )


# Harmony's control tokens as text. xgrammar's TokenizerInfo sees no special tokens in o200k_harmony,
# so it matches these by their characters, which a JSON string admits: a constrained final message
# or tool call could run on as `{"a": "...<|end|><|start|>assistant...` and never close. Excluding
# them from JSON content keeps every ordinary string (escapes included) and closes that door.
HARMONY_CONTROL_TEXT = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                        "<|return|>", "<|call|>")


def seal_json_content(structural_tag: str) -> str:
    """An xgrammar structural tag (JSON) with HARMONY_CONTROL_TEXT excluded from every JSON part."""
    tag = json.loads(structural_tag)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and "json_schema" in node:
                node["excludes"] = sorted(set(node.get("excludes") or ()) | set(HARMONY_CONTROL_TEXT))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tag)
    return json.dumps(tag)


def _category(channel: str, recipient: str | None) -> str:
    if recipient is not None and recipient.startswith(FUNCTIONS_PREFIX):
        return "tool"
    if recipient is not None and recipient != "assistant":
        return "ignore"  # built-in tools (browser.*, python, ...)
    if channel == "analysis":
        return "reasoning"
    return "content"  # final, or commentary preamble


def _to_harmony_message(m: ParsedMessage) -> Message:
    msg = Message.from_role_and_content(Role.ASSISTANT, m.text).with_channel(m.channel)
    if m.recipient is not None:
        msg = msg.with_recipient(m.recipient)
    if m.content_type is not None:
        ct = m.content_type
        msg = msg.with_content_type("<|constrain|>json" if ct == "json" else ct)
    return msg


class HarmonyServingParser(HarmonyParser):
    """vLLM's `HarmonyParser`, parsing with our never-raising `HarmonyStreamParser`."""

    def __init__(self, tokenizer, tools=None, *args, **kwargs):
        super().__init__(tokenizer, tools, *args, **kwargs)
        effort.server_default()  # fail at start-up (validate_parser_tokenizer) on a bad default
        request_checks.max_n()  # likewise for a bad VLLM_GPTOSS_MAX_N
        # The request's function names; none offered is the empty set (not "unknown"): then no
        # output is a tool call (the parser drops and counts it as tool_not_offered).
        self._tool_names = tool_names(tools) or frozenset()
        self._stream: HarmonyStreamParser | None = None
        self._num_fed = 0
        self._reset_delta_state()

    @classmethod
    def configured_like(cls, builtin: type[HarmonyParser]) -> type[HarmonyServingParser]:
        """Copy what vLLM's ParserManager set on the built-in class (flags of this server)."""
        cls.reasoning_parser_cls = builtin.reasoning_parser_cls
        cls.tool_parser_cls = builtin.tool_parser_cls
        cls.tool_strict_level = builtin.tool_strict_level
        return cls

    # --- our parser ----------------------------------------------------------------------------
    @property
    def stream(self) -> HarmonyStreamParser:
        if self._stream is None:
            self._stream = make_parser(self._tool_names, on_recovery=metrics.record)
        return self._stream

    def _reset_delta_state(self) -> None:
        self._tool_index = -1
        self._seen = {"reasoning": False, "content": False}
        self._pending_sep: str | None = None  # "\n" owed before the next reasoning/content text

    def _feed(self, token_ids: Sequence[int], finished: bool) -> list[Event]:
        events = self.stream.process_many(token_ids)
        self._num_fed += len(token_ids)
        if finished:
            events.extend(self.stream.finish())
        return events

    # --- chat completions ------------------------------------------------------------------------
    def _wants_tools(self, request) -> bool:
        if self.tool_parser is not None:
            return True
        choice = getattr(request, "tool_choice", None)
        return choice == "required" or (choice is not None and not isinstance(choice, str))

    def _delta_from_events(self, events: list[Event], request) -> DeltaMessage | None:
        content, reasoning = [], []
        tool_deltas: list[DeltaToolCall] = []
        want_reasoning = self.reasoning_parser is not None
        want_tools = self._wants_tools(request)
        for ev in events:
            cat = _category(ev.channel, ev.recipient)
            if ev.started:
                if cat in self._seen and self._seen[cat]:
                    self._pending_sep = cat
                if cat == "tool" and want_tools:
                    self._tool_index += 1
                    name = ev.recipient[len(FUNCTIONS_PREFIX) :]
                    tool_deltas.append(
                        DeltaToolCall(
                            id=make_tool_call_id(),
                            type="function",
                            index=self._tool_index,
                            function=DeltaFunctionCall(name=name, arguments=""),
                        )
                    )
            if not ev.delta:
                continue
            if cat in ("reasoning", "content"):
                out = reasoning if cat == "reasoning" else content
                if cat == "reasoning" and not want_reasoning:
                    continue
                if self._pending_sep == cat:
                    out.append("\n")
                    self._pending_sep = None
                self._seen[cat] = True
                out.append(ev.delta)
            elif cat == "tool" and want_tools and self._tool_index >= 0:
                last = tool_deltas[-1] if tool_deltas else None
                if last is not None and last.index == self._tool_index:
                    last.function.arguments = (last.function.arguments or "") + ev.delta
                else:
                    tool_deltas.append(
                        DeltaToolCall(
                            index=self._tool_index,
                            function=DeltaFunctionCall(arguments=ev.delta),
                        )
                    )
        if not content and not reasoning and not tool_deltas:
            return None
        delta = DeltaMessage()
        if content:
            delta.content = "".join(content)
        if reasoning:
            delta.reasoning = "".join(reasoning)
        if tool_deltas:
            delta.tool_calls = tool_deltas
        if not getattr(request, "include_reasoning", True):
            delta.reasoning = None
            if not delta.content and not delta.tool_calls:
                return None
        return delta

    def parse_delta(
        self,
        delta_text: str,
        delta_token_ids: list[int],
        request,
        prompt_token_ids: list[int] | None = None,
        *,
        finished: bool,
    ) -> DeltaMessage | None:
        events = self._feed(delta_token_ids, finished)
        return self._delta_from_events(events, request)

    def parse(
        self,
        model_output: str,
        request,
        enable_auto_tools: bool = False,
        model_output_token_ids: Sequence[int] = (),
    ) -> tuple[str | None, str | None, list[FunctionCall] | None]:
        events = self._feed(list(model_output_token_ids), finished=True)
        delta = self._delta_from_events(events, request)
        self._reset_delta_state()
        if delta is None:
            return None, None, None
        calls: list[FunctionCall] = []
        for tc in delta.tool_calls:
            if tc.function is None:
                continue
            if tc.function.name is not None:
                calls.append(FunctionCall(id=tc.id, name=tc.function.name, arguments=""))
            if calls and tc.function.arguments:
                calls[-1].arguments += tc.function.arguments
        return delta.reasoning or None, delta.content or None, calls or None

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        if self._stream is not None and self._num_fed == len(token_ids):
            return self._stream.reasoning_tokens
        p = make_parser(self._tool_names)
        p.process_many(token_ids)
        p.finish()
        return p.reasoning_tokens

    # --- Responses API (HarmonyContext) ----------------------------------------------------------
    def _segments(self, events: list[Event]) -> list[Segment]:
        segments = []
        for ev in events:
            if ev.message is not None:
                segments.append(
                    Segment(ev.channel, ev.recipient, "", _to_harmony_message(ev.message))
                )
            elif ev.delta:
                segments.append(Segment(ev.channel, ev.recipient, ev.delta, None))
        return segments

    def process_chunk(self, token_ids: Sequence[int]) -> ChunkResult:
        before = self.stream.reasoning_tokens
        events = self._feed(list(token_ids), finished=False)
        return ChunkResult(self._segments(events), self.stream.reasoning_tokens - before)

    def flush(self) -> list[Segment]:
        segments = self._segments(self.stream.finish())
        self._stream = None  # the next turn (after a tool result) starts a fresh message
        self._num_fed = 0
        return segments

    # --- request side ----------------------------------------------------------------------------
    def adjust_request(self, request):
        # Every check raises VLLMValidationError (a 400 naming the field) before the stream exists.
        try:
            effort.apply(request)
            validate_tools(request)
            model_config = reasoning_parser_model_config(self._reasoning_parser)
            sources = request_checks.check_request(request, model_config)
            try:
                request = super().adjust_request(request)
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, VLLMValidationError) or not sources:
                    raise
                raise VLLMValidationError(f"{sources[0][0]}: {e}", parameter=sources[0][0]) from e
            params = getattr(request, "structured_outputs", None)
            if params is not None and getattr(params, "structural_tag", None):
                params.structural_tag = seal_json_content(params.structural_tag)
            request_checks.check_final_constraint(request, sources)  # what the engine will compile
        except VLLMValidationError as e:
            metrics.record_rejection(e.parameter)
            raise
        return request
