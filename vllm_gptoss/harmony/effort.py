"""Reasoning effort for gpt-oss requests: one value from every dialect users send.

The harmony system message carries ``Reasoning: low|medium|high``. vLLM's gpt-oss path reads only
the request field (chat: ``reasoning_effort``; Responses: ``reasoning.effort``) and ignores
``chat_template_kwargs`` (vLLM PR#30482) and a system message that says ``Reasoning: high`` (the
form in the model card and the transformers example), which otherwise lands in the developer
instructions as plain text. `apply` resolves the effort, first match wins:

1. the request field (``reasoning_effort`` / ``reasoning.effort``);
2. ``chat_template_kwargs["reasoning_effort"]``;
3. a line ``Reasoning: <effort>`` in the leading system/developer message (or Responses
   ``instructions``), which is removed from the instructions;
4. the server default, env ``VLLM_GPTOSS_REASONING_EFFORT`` (low|medium|high);
5. harmony's own default (medium),

and writes it into the request field, where vLLM's harmony renderer puts it in the system message.
A value that is not low/medium/high is a 400 naming the parameter it came from.
"""

from __future__ import annotations

import os
import re
from typing import Any

EFFORTS = ("low", "medium", "high")
from ..envs import REASONING_EFFORT as DEFAULT_ENV

_LINE_RE = re.compile(r"^[ \t]*Reasoning:[ \t]*([A-Za-z_-]+)[ \t]*\.?[ \t]*$", re.MULTILINE)


def _invalid(value: Any, parameter: str) -> Exception:
    from vllm.exceptions import VLLMValidationError

    return VLLMValidationError(
        f"{parameter}={value!r} is not a gpt-oss reasoning effort; expected one of "
        f"{', '.join(EFFORTS)}.",
        parameter=parameter,
        value=value,
    )


def server_default() -> str | None:
    """The server-wide default from the environment; ValueError (at start-up) if invalid."""
    raw = os.environ.get(DEFAULT_ENV, "").strip().lower()
    if not raw:
        return None
    if raw not in EFFORTS:
        raise ValueError(
            f"{DEFAULT_ENV}={raw!r} is not a gpt-oss reasoning effort; expected one of "
            f"{', '.join(EFFORTS)}."
        )
    return raw


def _check(value: Any, parameter: str) -> str:
    if not isinstance(value, str) or value.lower() not in EFFORTS:
        raise _invalid(value, parameter)
    return value.lower()


def strip_effort_line(text: str) -> tuple[str | None, str]:
    """(effort named by a ``Reasoning: X`` line or None, the text without that line)."""
    m = _LINE_RE.search(text)
    if m is None:
        return None, text
    rest = (text[: m.start()] + text[m.end() :]).strip("\n")
    return m.group(1), rest


def _system_effort(messages: list, parameter: str) -> str | None:
    """Find and remove a ``Reasoning: X`` line in a leading system/developer message."""
    if not messages:
        return None
    first = messages[0]
    getter = first.get if isinstance(first, dict) else lambda k, d=None: getattr(first, k, d)
    if getter("role") not in ("system", "developer"):
        return None
    content = getter("content")
    found = None
    if isinstance(content, str):
        found, rest = strip_effort_line(content)
        if found is not None:
            if rest.strip():
                _set(first, "content", rest)
            else:
                del messages[0]
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if not isinstance(text, str):
                continue
            found, rest = strip_effort_line(text)
            if found is not None:
                _set(part, "text", rest)
                break
    if found is None:
        return None
    return _check(found, f"{parameter}[0].content (Reasoning: line)")


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


def apply(request: Any) -> str | None:
    """Resolve the effort of a chat-completions or Responses request in place; returns it."""
    is_responses = hasattr(request, "input") and not hasattr(request, "messages")
    kwargs = getattr(request, "chat_template_kwargs", None) or {}

    if is_responses:
        reasoning = getattr(request, "reasoning", None)
        field = getattr(reasoning, "effort", None) if reasoning is not None else None
        field_name = "reasoning.effort"
    else:
        field = getattr(request, "reasoning_effort", None)
        field_name = "reasoning_effort"

    from_field = _check(field, field_name) if field is not None else None
    from_kwargs = (
        _check(kwargs["reasoning_effort"], "chat_template_kwargs.reasoning_effort")
        if kwargs.get("reasoning_effort") is not None
        else None
    )
    # Always take the line out of the instructions, even when a field wins: the model must not
    # read a contradicting "Reasoning:" line in its developer message.
    from_system = None
    if is_responses:
        instructions = getattr(request, "instructions", None)
        if isinstance(instructions, str):
            found, rest = strip_effort_line(instructions)
            if found is not None:
                from_system = _check(found, "instructions (Reasoning: line)")
                request.instructions = rest if rest.strip() else None
        elif isinstance(getattr(request, "input", None), list):
            from_system = _system_effort(request.input, "input")
    else:
        messages = getattr(request, "messages", None)
        if isinstance(messages, list):
            from_system = _system_effort(messages, "messages")

    effort = from_field or from_kwargs or from_system or server_default()
    if effort is None:
        return None
    if is_responses:
        reasoning = getattr(request, "reasoning", None)
        if reasoning is None:
            from openai.types.shared import Reasoning

            request.reasoning = Reasoning(effort=effort)
        else:
            reasoning.effort = effort
    else:
        request.reasoning_effort = effort
    return effort
