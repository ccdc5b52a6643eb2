"""What the model reads: request messages rendered exactly as the harmony spec renders them.

Ground truth: oss-harmony's own renderer (`render_conversation_for_completion`) on the conversation
built here by hand from `Message` objects, the way OpenAI's harmony documentation writes it
(system message with the date and effort; instructions and `namespace functions` tools in the
developer message; per assistant turn: analysis, then a commentary preamble, then one
`commentary to=functions.NAME <|constrain|>json` call per tool call (vLLM's legacy rewrite of that
header applies only under VLLM_GPTOSS_LEGACY_TOOL_CALL_HEADERS=1: rendering.py); tool results authored by
`functions.NAME` to the assistant; past analysis dropped once a final answer followed it, kept
inside a tool loop still running). Compared token id for token id with the prompt vLLM actually
used: `return_token_ids` for chat completions, the engine's request log (`--enable-log-requests`,
debug level) for the Responses API. The live server is the harmony modules' shared one
(conftest.py), which logs requests that way for this module.

Each case also says whether stock vLLM 0.32 (its own functions, run in this process) renders it
differently; that is asserted too, so the README table's claims are checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    ToolDescription,
    load_harmony_encoding,
)

from gptoss_dev.fixture import corpus

DATE = corpus.FIXTURE_DATE
ENC = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Local time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
}
CHAT_TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
RESP_TOOLS = [{"type": "function", **WEATHER}, {"type": "function", **TIME}]


# --- the expected conversation, written as the harmony docs write it ------------------------------


def system(effort: ReasoningEffort | None = None) -> Message:
    content = SystemContent.new().with_conversation_start_date(DATE)
    if effort is not None:
        content = content.with_reasoning_effort(effort)
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer(instructions: str | None = None, tools: bool = False) -> Message:
    content = DeveloperContent.new()
    if instructions is not None:
        content = content.with_instructions(instructions)
    if tools:
        content = content.with_function_tools(
            [ToolDescription.new(t["name"], t["description"], parameters=t["parameters"]) for t in (WEATHER, TIME)]
        )
    return Message.from_role_and_content(Role.DEVELOPER, content)


def user(text: str) -> Message:
    return Message.from_role_and_content(Role.USER, text)


def analysis(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")


def preamble(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary")


def final(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final")


def call(name: str, args: str) -> Message:
    return (
        Message.from_role_and_content(Role.ASSISTANT, args)
        .with_channel("commentary")
        .with_recipient(f"functions.{name}")
        .with_content_type("<|constrain|>json")
    )


def result(name: str, text: str) -> Message:
    return (
        Message.from_author_and_content(Author.new(Role.TOOL, f"functions.{name}"), text)
        .with_channel("commentary")
        .with_recipient("assistant")
    )


def render(messages: list[Message]) -> list[int]:
    ids = ENC.render_conversation_for_completion(Conversation.from_messages(messages), Role.ASSISTANT)
    # Only with VLLM_GPTOSS_LEGACY_TOOL_CALL_HEADERS=1 (rendering.py, point 2): past tool-call
    # headers in vLLM's legacy form, rewritten by vLLM's own function.
    from vllm.entrypoints.openai.parser import harmony_utils

    from vllm_gptoss.harmony import rendering

    return harmony_utils._use_legacy_tool_call_headers(ids) if rendering.LEGACY_TOOL_CALL_HEADERS else ids


def tc(id_: str, name: str, args: dict) -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


OSLO = json.dumps({"city": "Oslo"})
LIMA = json.dumps({"city": "Lima"})
UTC = json.dumps({"tz": "UTC"})


@dataclass
class Case:
    name: str
    request: dict  # body fields besides model (chat: messages/tools/...; Responses: input/...)
    expected: list[Message]
    stock_differs: bool  # does stock vLLM 0.32 render it differently?
    extra: dict = field(default_factory=dict)


CHAT_CASES = [
    Case("plain_user", {"messages": [{"role": "user", "content": "Hi there."}]},
         [system(), user("Hi there.")], False),
    Case("system_instructions",
         {"messages": [{"role": "system", "content": "Answer in one word."},
                       {"role": "user", "content": "Capital of France?"}]},
         [system(), developer("Answer in one word."), user("Capital of France?")], False),
    Case("developer_and_tools_and_effort",
         {"messages": [{"role": "developer", "content": "Use tools when useful."},
                       {"role": "user", "content": "Weather in Oslo?"}],
          "tools": CHAT_TOOLS, "reasoning_effort": "high"},
         [system(ReasoningEffort.HIGH), developer("Use tools when useful.", tools=True),
          user("Weather in Oslo?")], False),
    Case("list_content_parts",
         {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                       {"role": "user", "content": [{"type": "text", "text": "Two "},
                                                    {"type": "text", "text": "parts."}]}]},
         [system(), developer("Be brief."), user("Two parts.")], True),
    Case("preamble_reasoning_tool_call",  # the order measured in the issue
         {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                       {"role": "assistant", "content": "Let me check.", "reasoning": "Need weather.",
                        "tool_calls": [tc("c1", "get_weather", {"city": "Oslo"})]},
                       {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Weather in Oslo?"), analysis("Need weather."),
          preamble("Let me check."), call("get_weather", OSLO), result("get_weather", '{"temp": 3}')],
         True),
    Case("reasoning_content_field_tool_call",
         {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                       {"role": "assistant", "content": None, "reasoning_content": "Need weather.",
                        "tool_calls": [tc("c1", "get_weather", {"city": "Oslo"})]},
                       {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Weather in Oslo?"), analysis("Need weather."),
          call("get_weather", OSLO), result("get_weather", '{"temp": 3}')],
         True),  # vLLM renames reasoning_content; differs by the past call's header
    Case("parallel_tool_calls",
         {"messages": [{"role": "user", "content": "Weather in Oslo and Lima, and the time?"},
                       {"role": "assistant", "content": "", "reasoning": "Three lookups.",
                        "tool_calls": [tc("a", "get_weather", {"city": "Oslo"}),
                                       tc("b", "get_weather", {"city": "Lima"}),
                                       tc("c", "get_time", {"tz": "UTC"})]},
                       {"role": "tool", "tool_call_id": "a", "content": "3C"},
                       {"role": "tool", "tool_call_id": "b", "content": "19C"},
                       {"role": "tool", "tool_call_id": "c", "content": "12:00"}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Weather in Oslo and Lima, and the time?"),
          analysis("Three lookups."), call("get_weather", OSLO), call("get_weather", LIMA),
          call("get_time", UTC), result("get_weather", "3C"), result("get_weather", "19C"),
          result("get_time", "12:00")],
         True),  # the past calls' headers
    Case("past_reasoning_dropped_after_final",
         {"messages": [{"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": "4.", "reasoning": "Simple sum."},
                       {"role": "user", "content": "And 3+3?"}]},
         [system(), user("2+2?"), final("4."), user("And 3+3?")], False),
    Case("tool_loop_keeps_its_reasoning",
         {"messages": [{"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": "4.", "reasoning": "Simple sum."},
                       {"role": "user", "content": "Weather in Lima?"},
                       {"role": "assistant", "reasoning": "Call the tool.",
                        "tool_calls": [tc("w", "get_weather", {"city": "Lima"})]},
                       {"role": "tool", "tool_call_id": "w", "content": "19C"}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("2+2?"), final("4."), user("Weather in Lima?"),
          analysis("Call the tool."), call("get_weather", LIMA), result("get_weather", "19C")],
         True),  # the past call's header
    Case("finished_tool_loop_drops_reasoning",
         {"messages": [{"role": "user", "content": "Weather in Lima?"},
                       {"role": "assistant", "reasoning": "Call the tool.",
                        "tool_calls": [tc("w", "get_weather", {"city": "Lima"})]},
                       {"role": "tool", "tool_call_id": "w", "content": "19C"},
                       {"role": "assistant", "reasoning": "Report it.", "content": "19C in Lima."},
                       {"role": "user", "content": "Thanks!"}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Weather in Lima?"), call("get_weather", LIMA),
          result("get_weather", "19C"), final("19C in Lima."), user("Thanks!")],
         True),  # the past call's header
    Case("thinking_field_alias",
         {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                       {"role": "assistant", "thinking": "Need weather.",
                        "tool_calls": [tc("c1", "get_weather", {"city": "Oslo"})]},
                       {"role": "tool", "tool_call_id": "c1", "content": "3C"}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Weather in Oslo?"), analysis("Need weather."),
          call("get_weather", OSLO), result("get_weather", "3C")],
         True),
    Case("tool_result_named_not_by_id",
         {"messages": [{"role": "user", "content": "Time in UTC?"},
                       {"role": "assistant", "tool_calls": [tc("t1", "get_time", {"tz": "UTC"})]},
                       {"role": "tool", "tool_call_id": "unknown-id", "name": "get_time",
                        "content": "12:00"}],
          "tools": CHAT_TOOLS},
         [system(), developer(tools=True), user("Time in UTC?"), call("get_time", UTC),
          result("get_time", "12:00")],
         True),
]

def preamble_request(**phase) -> dict:
    """A Responses tool loop whose assistant message before the call is a preamble; `phase` marks
    it as one (or, left out, the function call after it must)."""
    return {"input": [{"type": "message", "role": "user", "content": "Weather in Oslo?"},
                      {"type": "reasoning", "id": "rs_1", "summary": [],
                       "content": [{"type": "reasoning_text", "text": "Need weather."}]},
                      {"type": "message", "role": "assistant", **phase,
                       "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
                      {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": OSLO},
                      {"type": "function_call_output", "call_id": "c1", "output": "3C"}],
            "tools": RESP_TOOLS}  # fmt: skip


PREAMBLE_EXPECTED = [system(), developer(tools=True), user("Weather in Oslo?"), analysis("Need weather."),
                     preamble("Let me check."), call("get_weather", OSLO), result("get_weather", "3C")]

RESPONSES_CASES = [
    Case("responses_instructions_effort",
         {"instructions": "Answer briefly.", "input": "Capital of Peru?", "reasoning": {"effort": "low"}},
         [system(ReasoningEffort.LOW), developer("Answer briefly."), user("Capital of Peru?")], False),
    Case("responses_preamble_phase_commentary", preamble_request(phase="commentary"), PREAMBLE_EXPECTED, True),
    # no phase: the function call after it makes it a preamble
    Case("responses_preamble_inferred", preamble_request(), PREAMBLE_EXPECTED, True),
    Case("responses_multipart_user",
         {"input": [{"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Two "},
                                 {"type": "input_text", "text": "parts."}]}]},
         [system(), user("Two parts.")], True),
    Case("responses_previous_input_messages_chat_format",  # vLLM's own history field
         {"input": "And 3+3?",
          "previous_input_messages": [
              {"role": "user", "content": "Weather in Lima?"},
              {"role": "assistant", "reasoning": "Call the tool.", "content": "Checking.",
               "tool_calls": [tc("w", "get_weather", {"city": "Lima"})]},
              {"role": "tool", "name": "get_weather", "content": "19C"},
              {"role": "assistant", "content": "19C in Lima."}]},
         [system(), user("Weather in Lima?"), preamble("Checking."), call("get_weather", LIMA),
          result("get_weather", "19C"), final("19C in Lima."), user("And 3+3?")], True),
    Case("responses_past_reasoning_dropped",
         {"input": [{"type": "message", "role": "user", "content": "2+2?"},
                    {"type": "reasoning", "id": "rs_1", "summary": [],
                     "content": [{"type": "reasoning_text", "text": "Simple sum."}]},
                    {"type": "message", "role": "assistant",
                     "content": [{"type": "output_text", "text": "4.", "annotations": []}]},
                    {"type": "message", "role": "user", "content": "And 3+3?"}]},
         [system(), user("2+2?"), final("4."), user("And 3+3?")], False),
]


# --- stock vLLM 0.32's rendering of the same request, in this process ------------------------------


_USE_OURS = False  # the in-process unit tests below switch these helpers to rendering.py


def _stock(name):
    from vllm.entrypoints.openai.parser import harmony_utils as hu
    from vllm.entrypoints.openai.responses import harmony as rh

    from vllm_gptoss.harmony import rendering

    mod = rh if name.startswith("response") else hu
    stock = rendering.STOCK.get(name, getattr(mod, name))
    if not _USE_OURS:
        return stock
    rendering.STOCK.setdefault(name, stock)
    ours = {"parse_chat_inputs_to_harmony_messages": "chat_messages_to_harmony"}.get(name, name)
    return getattr(rendering, ours)


def stock_chat_prompt(body: dict) -> list[int]:
    """What vLLM's `OnlineRenderer._make_request_with_harmony` renders (same calls, same order)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.parser import harmony_utils as hu

    req = ChatCompletionRequest.model_validate({"model": "m", **body})
    instructions, msgs = hu.extract_instructions_from_messages(list(req.messages))
    messages = hu.build_harmony_preamble(
        instructions=instructions, tools=req.tools, reasoning_effort=req.reasoning_effort,
        with_custom_tools=req.tools is not None,
    )
    messages += _stock("parse_chat_inputs_to_harmony_messages")(msgs)
    return _stock("render_for_completion")(messages)


def stock_responses_prompt(body: dict) -> list[int]:
    """What vLLM's `OnlineRenderer._render_responses_with_harmony` renders for a fresh request."""
    from openai.types.responses import ResponseFunctionToolCall
    from vllm.entrypoints.openai.parser import harmony_utils as hu
    from vllm.entrypoints.openai.responses import harmony as rh
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    req = ResponsesRequest.model_validate({"model": "m", **body})
    inp = req.input
    instructions = req.instructions
    if instructions is None and isinstance(inp, list):
        instructions, inp = hu.extract_instructions_from_messages(inp)
    messages = hu.build_harmony_preamble(
        instructions=instructions, tools=req.tools or None,
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
    )
    # construct_harmony_previous_input_messages calls rh.response_previous_input_to_harmony, which
    # our hook replaces once any earlier test in this process registered the plugin: call it with
    # the function this helper is asked for (stock, or ours under _USE_OURS)
    patched = rh.response_previous_input_to_harmony
    rh.response_previous_input_to_harmony = _stock("response_previous_input_to_harmony")
    try:
        messages += rh.construct_harmony_previous_input_messages(req)
    finally:
        rh.response_previous_input_to_harmony = patched
    if isinstance(inp, str):
        messages.append(hu.get_user_message(inp))
    else:
        prev = []
        for item in inp:
            m = _stock("response_input_to_harmony")(item, prev)
            if m is not None:
                messages.append(m)
            if isinstance(item, ResponseFunctionToolCall):
                prev.append(item)
    return _stock("render_for_completion")(messages)


# --- unit: our functions against the oracle, no server --------------------------------------------


def test_cases_build_valid_oracles():
    """Every expected conversation renders (guards the table below against typos)."""
    for case in CHAT_CASES + RESPONSES_CASES:
        assert ENC.decode(render(case.expected)).endswith("<|start|>assistant"), case.name


@pytest.mark.parametrize("case", CHAT_CASES, ids=lambda c: c.name)
def test_stock_vllm_differs_where_the_table_says(case, monkeypatch):
    monkeypatch.setenv(corpus.DATE_ENV, DATE)
    stock = stock_chat_prompt(case.request)
    assert (stock != render(case.expected)) == case.stock_differs, ENC.decode(stock)


@pytest.mark.parametrize("case", RESPONSES_CASES, ids=lambda c: c.name)
def test_stock_vllm_responses_differs_where_the_table_says(case, monkeypatch):
    monkeypatch.setenv(corpus.DATE_ENV, DATE)
    stock = stock_responses_prompt(case.request)
    assert (stock != render(case.expected)) == case.stock_differs, ENC.decode(stock)


@pytest.mark.parametrize("case", CHAT_CASES + RESPONSES_CASES, ids=lambda c: c.name)
def test_ours_in_process_is_the_harmony_rendering(case, monkeypatch):
    """rendering.py's functions in vLLM's call sequence (the live tests below check the hooks)."""
    monkeypatch.setenv(corpus.DATE_ENV, DATE)
    monkeypatch.setattr(sys.modules[__name__], "_USE_OURS", True)
    from vllm.entrypoints.openai.parser import harmony_utils as hu

    from vllm_gptoss.harmony import rendering

    rendering.STOCK.setdefault("parse_chat_input_to_harmony_message", hu.parse_chat_input_to_harmony_message)
    if "previous_input_messages" in case.request:
        from vllm.entrypoints.openai.responses import harmony as rh

        rendering.STOCK.setdefault("response_previous_input_to_harmony", rh.response_previous_input_to_harmony)
        monkeypatch.setattr(rh, "response_previous_input_to_harmony", rendering.response_previous_input_to_harmony)
    build = stock_chat_prompt if "messages" in case.request else stock_responses_prompt
    got, want = build(case.request), render(case.expected)
    assert got == want, _diff(got, want)


# --- live server: the prompt vLLM actually used ---------------------------------------------------


# `server`: the harmony modules' shared live server (conftest.py): --enable-log-requests, debug level.


def _diff(got: list[int], want: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"first difference at token {i}:\n got: {ENC.decode(got[i:])!r}\nwant: {ENC.decode(want[i:])!r}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CHAT_CASES, ids=lambda c: c.name)
def test_chat_prompt_is_the_harmony_rendering(server, case):
    with server.client_http(timeout=300) as c:
        r = c.post("/v1/chat/completions", json={
            "model": server.served_name, "max_tokens": 1, "temperature": 0,
            "return_token_ids": True, **case.request})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()["prompt_token_ids"]
    want = render(case.expected)
    assert got == want, _diff(got, want)


_LOG_RE = r"Request (\S*{tag}\S*) details: prompt: .*?, prompt_token_ids: \[([0-9, ]*)\]"


@pytest.mark.slow
@pytest.mark.parametrize("case", RESPONSES_CASES, ids=lambda c: c.name)
def test_responses_prompt_is_the_harmony_rendering(server, case):
    with server.client_http(timeout=300) as c:
        r = c.post("/v1/responses", json={
            "model": server.served_name, "max_output_tokens": 1, "temperature": 0,
            **case.request})  # fmt: skip
    assert r.status_code == 200, r.text
    tag = r.json()["id"]  # vLLM logs the engine request as "<response id>_<turn>"
    pattern = _LOG_RE.format(tag=re.escape(tag))
    for _ in range(20):  # the server's log line may land a moment after the response
        found = re.findall(pattern, server.log_path.read_text(errors="replace"))
        if found:
            break
        time.sleep(0.5)
    assert found, f"no request log line for {tag}:\n{server.log_tail()}"
    got = [int(t) for t in found[0][1].split(",") if t.strip()]
    want = render(case.expected)
    assert got == want, _diff(got, want)


def test_legacy_tool_call_header_switch(monkeypatch):
    """Past tool calls: harmony's header by default; vLLM's legacy one with the switch (read at import)."""
    from vllm_gptoss.envs import LEGACY_TOOL_CALL_HEADERS
    from vllm_gptoss.harmony import rendering

    msgs = [system(), developer(tools=True), user("Weather in Lima?"), call("get_weather", LIMA),
            result("get_weather", "19C")]
    harmony_form = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    legacy_form = "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
    monkeypatch.setattr(rendering, "LEGACY_TOOL_CALL_HEADERS", False)
    text = ENC.decode(rendering.render_for_completion(list(msgs)))
    assert harmony_form in text and legacy_form not in text, text
    monkeypatch.setattr(rendering, "LEGACY_TOOL_CALL_HEADERS", True)
    text = ENC.decode(rendering.render_for_completion(list(msgs)))
    assert legacy_form in text and harmony_form not in text, text
    for value, expected in (("1", "True"), ("0", "False")):
        out = subprocess.run([sys.executable, "-c", "from vllm_gptoss.harmony import rendering; "
                              "print(rendering.LEGACY_TOOL_CALL_HEADERS)"],
                             env={**os.environ, LEGACY_TOOL_CALL_HEADERS: value}, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr[-2000:]
