"""Request side, in process: reasoning effort from every dialect, server default, bad requests,
and the hook that puts our parser where vLLM's server looks for its harmony parser."""

from __future__ import annotations

import subprocess
import sys

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.parser import harmony_utils as hu
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.exceptions import VLLMValidationError

from vllm_gptoss.harmony import effort
from gptoss_dev.malformations import TOOLS
from gptoss_dev.stock_compare import EncodingTokenizer, parser_classes

_, OURS = parser_classes()
TOK = EncodingTokenizer()
USER = {"role": "user", "content": "What is 2+2?"}


def rendered_system_and_developer(req: ChatCompletionRequest) -> tuple[str, str | None]:
    """Render the way vLLM's `_make_request_with_harmony` does (after adjust_request)."""
    instructions, rest = hu.extract_instructions_from_messages(list(req.messages))
    msgs = hu.build_harmony_preamble(
        instructions=instructions, tools=req.tools, reasoning_effort=req.reasoning_effort
    )
    msgs.extend(hu.parse_chat_inputs_to_harmony_messages(rest))
    text = hu.get_encoding().decode(hu.render_for_completion(msgs))
    parts = text.split("<|start|>")
    system = next(p for p in parts if p.startswith("system"))
    developer = next((p for p in parts if p.startswith("developer")), None)
    return system, developer


def adjusted(**body) -> ChatCompletionRequest:
    req = ChatCompletionRequest(model="m", **body)
    return OURS(TOK, req.tools).adjust_request(req)


@pytest.mark.parametrize("level", effort.EFFORTS)
def test_every_dialect_sets_the_system_message(level, monkeypatch):
    monkeypatch.delenv(effort.DEFAULT_ENV, raising=False)
    dialects = {
        "field": adjusted(messages=[USER], reasoning_effort=level),
        "kwargs": adjusted(messages=[USER], chat_template_kwargs={"reasoning_effort": level}),
        "system": adjusted(messages=[{"role": "system", "content": f"Reasoning: {level}"}, USER]),
        "system-parts": adjusted(
            messages=[
                {"role": "system", "content": [{"type": "text", "text": f"Be brief.\nReasoning: {level}"}]},
                USER,
            ]
        ),
    }
    for name, req in dialects.items():
        system, developer = rendered_system_and_developer(req)
        assert f"Reasoning: {level}" in system, name
        assert developer is None or "Reasoning:" not in developer, name
    # The instructions around the line survive.
    _, developer = rendered_system_and_developer(dialects["system-parts"])
    assert "Be brief." in developer


def test_precedence_field_then_kwargs_then_system_then_default(monkeypatch):
    monkeypatch.setenv(effort.DEFAULT_ENV, "low")
    sys_high = {"role": "system", "content": "Reasoning: high"}
    assert adjusted(messages=[USER]).reasoning_effort == "low"  # server default
    assert adjusted(messages=[sys_high, USER]).reasoning_effort == "high"
    req = adjusted(messages=[sys_high, USER], chat_template_kwargs={"reasoning_effort": "medium"})
    assert req.reasoning_effort == "medium"
    req = adjusted(
        messages=[sys_high, USER], chat_template_kwargs={"reasoning_effort": "medium"}, reasoning_effort="low"
    )
    assert req.reasoning_effort == "low"
    assert req.messages == [USER]  # the "Reasoning:" line never reaches the model as text


def test_server_default_reaches_the_rendered_prompt(monkeypatch):
    monkeypatch.setenv(effort.DEFAULT_ENV, "high")
    system, _ = rendered_system_and_developer(adjusted(messages=[USER]))
    assert "Reasoning: high" in system
    monkeypatch.delenv(effort.DEFAULT_ENV)
    system, _ = rendered_system_and_developer(adjusted(messages=[USER]))
    assert "Reasoning: medium" in system  # harmony's own default


def test_bad_server_default_fails_at_startup(monkeypatch):
    monkeypatch.setenv(effort.DEFAULT_ENV, "extreme")
    with pytest.raises(ValueError, match=effort.DEFAULT_ENV):
        OURS(TOK)  # vLLM instantiates the parser class once at start-up


@pytest.mark.parametrize(
    "body, param",
    [
        ({"reasoning_effort": "minimal"}, "reasoning_effort"),
        ({"chat_template_kwargs": {"reasoning_effort": "max"}}, "chat_template_kwargs.reasoning_effort"),
        ({"messages": [{"role": "system", "content": "Reasoning: turbo"}, USER]}, "messages[0].content"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_requests_name_the_parameter(body, param, monkeypatch):
    monkeypatch.delenv(effort.DEFAULT_ENV, raising=False)
    body = {"messages": [USER], **body}
    with pytest.raises(VLLMValidationError) as err:
        adjusted(**body)
    assert err.value.parameter.startswith(param)


def test_responses_request_effort_and_tools(monkeypatch):
    monkeypatch.delenv(effort.DEFAULT_ENV, raising=False)
    req = ResponsesRequest(input="hi", instructions="Answer tersely.\nReasoning: low")
    OURS(TOK).adjust_request(req)
    assert req.reasoning.effort == "low" and req.instructions == "Answer tersely."
    req = ResponsesRequest(input="hi", chat_template_kwargs={"reasoning_effort": "high"})
    OURS(TOK).adjust_request(req)
    assert req.reasoning.effort == "high"
    bad = ResponsesRequest(input="hi", tools=[{"type": "function", "name": "f", "parameters": {"type": "array"}}])
    with pytest.raises(VLLMValidationError) as err:
        OURS(TOK, bad.tools).adjust_request(bad)
    assert err.value.parameter == "tools[0].parameters"


def test_valid_tools_pass(monkeypatch):
    monkeypatch.delenv(effort.DEFAULT_ENV, raising=False)
    req = adjusted(messages=[USER], tools=TOOLS, tool_choice="auto")
    assert req.tools[0].function.name == "get_weather"


HOOK_SCRIPT = r"""
import sys
from vllm_gptoss.harmony import hooks
hooks.register()
# Our registration imports nothing heavy: the hooks wait for vLLM to import these modules.
heavy = [m for m in ("vllm.parser.parser_manager", "vllm.tool_parsers", "vllm.reasoning", "torch")
         if m in sys.modules]
assert not heavy, heavy
import vllm_gptoss
vllm_gptoss.register()  # the plugin entry point (model, quantization, then harmony.hooks.register())
from vllm.parser.parser_manager import ParserManager
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.parser.harmony import HarmonyParser
from vllm_gptoss.harmony.vllm_parsers import (
    GptOssHarmonyReasoningParser, GptOssHarmonyToolParser, HarmonyServingParser)
for name in ("openai_gptoss", "vllm_gptoss"):
    assert ReasoningParserManager.get_reasoning_parser(name) is GptOssHarmonyReasoningParser
for name in ("openai", "vllm_gptoss"):
    assert ToolParserManager.get_tool_parser(name) is GptOssHarmonyToolParser
cls = ParserManager.get_parser(tool_parser_name="openai", reasoning_parser_name="openai_gptoss",
                               enable_auto_tools=True, is_harmony=True)
assert cls is HarmonyServingParser and issubclass(cls, HarmonyParser), cls
assert cls.tool_parser_cls is GptOssHarmonyToolParser
other = ParserManager.get_parser(reasoning_parser_name="deepseek_r1", is_harmony=False)
assert other is not None and not issubclass(other, HarmonyServingParser)
vllm_gptoss.register()  # idempotent
print("OK")
"""


def test_plugin_registration_hooks_the_server_parser():
    r = subprocess.run([sys.executable, "-c", HOOK_SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_builtin_switch_keeps_vllm_parser():
    script = HOOK_SCRIPT.split("from vllm_gptoss.harmony.vllm_parsers")[0] + (
        "cls = ParserManager.get_parser(tool_parser_name='openai', reasoning_parser_name='openai_gptoss',"
        " enable_auto_tools=True, is_harmony=True)\nassert cls is HarmonyParser, cls\nprint('OK')\n"
    )
    import os

    env = dict(os.environ, VLLM_GPTOSS_HARMONY_PARSER="builtin")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
