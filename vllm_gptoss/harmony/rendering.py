"""Chat-completions and Responses input rendered as harmony, the way the harmony spec renders it.

vLLM 0.32 turns request messages into harmony messages itself (chat:
``vllm/entrypoints/openai/parser/harmony_utils.py::parse_chat_inputs_to_harmony_messages``;
Responses: ``vllm/entrypoints/openai/responses/harmony.py::response_input_to_harmony`` and
``response_previous_input_to_harmony``) and renders them with ``harmony_utils.render_for_completion``.
Measured against oss-harmony's own renderer on the conversation the harmony documentation writes
(tests/harmony/test_prompt_fidelity.py; the table in vllm_gptoss/harmony/README.md), it departs
from the format the model writes in five places; this module fixes all five:

1. an assistant turn with reasoning, content and tool calls puts the commentary preamble *before*
   the analysis; the model writes analysis, then the preamble, then the calls;
2. ``render_for_completion`` rewrites every past tool call header into a legacy form
   (``assistant to=functions.f<|channel|>commentary json``) instead of the one oss-harmony renders,
   the harmony docs show and the model emits (``assistant<|channel|>commentary to=functions.f
   <|constrain|>json``). vLLM's reason (``_use_legacy_tool_call_headers``): the model "can echo the
   latter as a malformed header with the recipient in both positions"; OpenAI's own HF chat template
   also writes the legacy form. We render harmony's; VLLM_GPTOSS_LEGACY_TOOL_CALL_HEADERS=1 restores
   vLLM's rewrite for deployments that see that echo;
3. Responses: an assistant message item that was a preamble (``phase: "commentary"``, or followed
   in the same turn by a function call) is rendered on the ``final`` channel. Besides the wrong
   channel, that "final" makes the past-reasoning rule drop the reasoning of the unfinished tool
   loop it belongs to;
4. Responses ``previous_input_messages`` in chat format: an assistant message without tool calls
   renders with no channel at all, and reasoning and preambles are dropped;
5. a content given as a list of text parts is tokenized part by part (the model reads the joined
   text, tokenized once).

Also read: ``reasoning_content`` and ``thinking`` as aliases of ``reasoning`` on assistant
messages (vLLM's request validator already renames ``reasoning_content`` for chat completions; the
Responses chat-format history never read either), and a tool result whose ``tool_call_id`` matches
no call takes its tool name from the message's ``name``, else from the call it answers by position.

Past reasoning: as the spec says, analysis messages before the last ``final`` message are dropped;
the ones after it (a tool loop still running) are kept. User, system and developer messages are
rendered by vLLM's own code (it matches the spec there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from openai_harmony import (
    Author,
    Conversation,
    Message,
    RenderConversationConfig,
    Role,
    TextContent,
)

from ..envs import LEGACY_TOOL_CALL_HEADERS as LEGACY_TOOL_CALL_HEADERS_ENV

# Field names clients use for an assistant message's chain of thought, first match wins:
# OpenAI's gpt-oss guidance and vLLM >= 0.11 (`reasoning`), older vLLM / DeepSeek-style clients
# (`reasoning_content`), the gpt-oss HF chat template and Ollama (`thinking`).
REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")

# vLLM's functions, kept when our hooks replace them (hooks.py fills this on first patch).
STOCK: dict[str, Callable] = {}


def _encoding():
    from ..vllm_compat import harmony_encoding

    return harmony_encoding()


def _text(content: Any) -> str:
    """Text of a chat/Responses content field (string or list of text parts), joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for item in content:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            parts.append(item["text"])
    return "".join(parts)


def reasoning_of(msg: dict) -> str | None:
    for field in REASONING_FIELDS:
        value = msg.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def _arguments(fn: dict) -> str:
    args = fn.get("arguments")
    if args is None:
        return ""
    return args if isinstance(args, str) else json.dumps(args)


def assistant_messages(msg: dict) -> list[Message]:
    """One assistant chat message as the model wrote it: analysis, preamble, calls / final."""
    out = []
    reasoning = reasoning_of(msg)
    if reasoning:
        out.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
    content = _text(msg.get("content"))
    calls = msg.get("tool_calls") or []
    if calls:
        if content:  # text beside tool calls is a preamble: commentary without recipient
            out.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("commentary"))
        for call in calls:
            fn = call.get("function") or {}
            out.append(
                Message.from_role_and_content(Role.ASSISTANT, _arguments(fn))
                .with_channel("commentary")
                .with_recipient(f"functions.{fn.get('name', '')}")
                .with_content_type("<|constrain|>json")
            )
    elif content:
        out.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("final"))
    return out


def tool_result_message(name: str, content: Any) -> Message:
    if not name.startswith("functions."):
        name = f"functions.{name}"
    return (
        Message.from_author_and_content(Author.new(Role.TOOL, name), _text(content))
        .with_channel("commentary")
        .with_recipient("assistant")
    )


def _as_dict(msg: Any) -> dict:
    if isinstance(msg, dict):
        return msg
    return msg.model_dump(exclude_none=True)


def chat_messages_to_harmony(chat_msgs: Sequence[Any]) -> list[Message]:
    """Replaces ``harmony_utils.parse_chat_inputs_to_harmony_messages`` (same signature)."""
    msgs = [_as_dict(m) for m in chat_msgs]
    names_by_id = {}
    for m in msgs:
        for call in m.get("tool_calls") or []:
            names_by_id[call.get("id")] = (call.get("function") or {}).get("name", "")
    stock_one = STOCK.get("parse_chat_input_to_harmony_message") or _stock_parse_one()
    out: list[Message] = []
    open_calls: list[str] = []  # names of the last assistant turn's calls not answered yet
    for m in msgs:
        role = m.get("role")
        if role == "assistant":
            out.extend(assistant_messages(m))
            calls = m.get("tool_calls") or []
            if calls:
                open_calls = [(c.get("function") or {}).get("name", "") for c in calls]
        elif role == "tool":
            name = names_by_id.get(m.get("tool_call_id")) or m.get("name") or ""
            if not name and open_calls:
                name = open_calls[0]
            if name in open_calls:
                open_calls.remove(name)
            out.append(tool_result_message(name, m.get("content")))
        else:
            out.extend(stock_one(m, names_by_id))
    return out


def _stock_parse_one():
    from ..vllm_compat import stock_chat_message_to_harmony

    return stock_chat_message_to_harmony()


def mark_preambles(messages: Sequence[Message]) -> list[Message]:
    """An assistant ``final`` message followed, in the same turn, by a tool call is a preamble.

    A final message ends the assistant's turn, so one that a tool call follows before any other
    author speaks was a commentary preamble (the Responses API hands preambles back as plain
    assistant message items). Returns copies where a channel changes (harmony's ``with_channel``
    mutates, and the input list is vLLM's stored conversation).
    """
    out = list(messages)
    for i, m in enumerate(out):
        if m.author.role != Role.ASSISTANT or m.channel != "final" or m.recipient:
            continue
        for later in out[i + 1 :]:
            if later.author.role != Role.ASSISTANT:
                break
            if later.recipient and later.recipient != "assistant":
                out[i] = m.model_copy(update={"channel": "commentary"})
                break
    return out


def drop_past_reasoning(messages: Sequence[Message]) -> list[Message]:
    """Drop analysis messages before the last final answer; keep those of a running tool loop."""
    last_final = -1
    for i, m in enumerate(messages):
        if m.author.role == Role.ASSISTANT and m.channel == "final":
            last_final = i
    return [m for i, m in enumerate(messages) if not (i < last_final and m.channel == "analysis")]


def join_text_parts(messages: Sequence[Message]) -> list[Message]:
    """One text per message: a content given as several text parts is one string to the model.

    vLLM keeps each part of a list content (``[{"type": "text", ...}, ...]``) as its own
    ``TextContent``, and harmony tokenizes each separately, so the token boundaries at the seams
    differ from the joined text's.
    """
    out = []
    for m in messages:
        if len(m.content) > 1 and all(isinstance(c, TextContent) for c in m.content):
            m = m.model_copy(update={"content": [TextContent(text="".join(c.text for c in m.content))]})
        out.append(m)
    return out


# See point 2 of the module docstring: True keeps vLLM's legacy past-tool-call header.
LEGACY_TOOL_CALL_HEADERS = os.environ.get(LEGACY_TOOL_CALL_HEADERS_ENV, "0") == "1"


def render_for_completion(messages: list[Message]) -> list[int]:
    """Replaces ``harmony_utils.render_for_completion``: oss-harmony's renderer on our messages."""
    msgs = drop_past_reasoning(mark_preambles(join_text_parts(messages)))
    ids = _encoding().render_conversation_for_completion(
        Conversation.from_messages(msgs),
        Role.ASSISTANT,
        config=RenderConversationConfig(auto_drop_analysis=False),  # done above, on whole history
    )
    if LEGACY_TOOL_CALL_HEADERS:
        from ..vllm_compat import legacy_tool_call_headers

        ids = legacy_tool_call_headers(ids)
    return ids


def _phase(item: Any) -> str | None:
    return item.get("phase") if isinstance(item, dict) else getattr(item, "phase", None)


def response_input_to_harmony(response_msg: Any, prev_responses: list) -> Message | None:
    """Wraps vLLM's Responses item converter: a ``phase: "commentary"`` message is a preamble."""
    msg = STOCK["response_input_to_harmony"](response_msg, prev_responses)
    if (
        msg is not None
        and msg.author.role == Role.ASSISTANT
        and msg.channel == "final"
        and _phase(response_msg) == "commentary"
    ):
        msg = msg.with_channel("commentary")
    return msg


def response_previous_input_to_harmony(chat_msg: Any) -> list[Message]:
    """Wraps vLLM's converter of ``previous_input_messages``: chat-format dicts rendered as chat."""
    d = _as_dict(chat_msg)
    if isinstance(d.get("author"), dict):  # harmony-format message: vLLM keeps it as given
        return STOCK["response_previous_input_to_harmony"](chat_msg)
    role = d.get("role")
    if role == "assistant":
        return assistant_messages(d)
    if role == "tool":
        return [tool_result_message(d.get("name") or "", d.get("content"))]
    return STOCK["response_previous_input_to_harmony"](chat_msg)
