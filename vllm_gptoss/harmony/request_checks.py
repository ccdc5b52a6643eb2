"""Request checks of the harmony server: a bad request gets a 400 naming the field, before anything runs.

vLLM 0.32 leaves several bad requests to the engine, whose checks run only once the response has
started (``engine_client.generate`` is a lazy generator, so a streamed request has already sent
HTTP 200), or to no check at all. Everything here runs in the parser's ``adjust_request``
(vllm_parsers.py), which vLLM calls while rendering the prompt (``OnlineRenderer.adjust_harmony_request``,
before ``StreamingResponse`` exists) for chat completions and Responses, streamed or not. A
`VLLMValidationError` raised there reaches vLLM's own exception handler, which answers a 400 in
OpenAI's error shape with ``param`` set (``serve/exception_handling/error_response.py``).

- **Structured output.** For gpt-oss, vLLM wraps every constraint (``response_format``, Responses
  ``text.format``, the ``structured_outputs`` extension, named/required ``tool_choice``) into a
  harmony structural tag. The engine's ``auto`` backend tries xgrammar on it and, when xgrammar
  refuses, falls back to guidance, which cannot read this tag format (``KeyError: 'triggers'``): the
  user saw "Invalid grammar specification: 'triggers'" and never the reason. Here each user-given
  constraint is compiled alone by xgrammar (naming its field, with xgrammar's own reason), and then
  the final tag is checked by vLLM's own ``validate_xgrammar_grammar``, the check the engine runs
  first, so a constraint that cannot compile never starts a stream.
- ``top_logprobs`` above the server's ``--max-logprobs`` (default 20, OpenAI's limit), ``n`` outside
  ``1..VLLM_GPTOSS_MAX_N``, two function tools with one name, an empty ``messages`` list.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from typing import Any

from vllm.exceptions import VLLMValidationError

from ..envs import MAX_N as MAX_N_ENV
DEFAULT_MAX_N = 16  # each choice is a full sequence in the batch; OpenAI itself caps n at 128
OPENAI_MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs is the same

# xgrammar prefixes its C++ errors with "[hh:mm:ss] /project/cpp/file.cc:123: ".
_XGR_PREFIX = re.compile(r"^\s*(\[[0-9:]+\]\s*)?\S+\.(cc|h|cpp):\d+:\s*")


def max_n() -> int:
    """The server-wide bound for ``n`` (ValueError on a bad setting: raised at server start-up)."""
    raw = os.environ.get(MAX_N_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_N
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_N_ENV} must be a positive integer; found {raw!r}")
    return value


def _reason(exc: BaseException) -> str:
    """The compiler's own words: the chained cause if vLLM wrapped it, minus xgrammar's prefix."""
    while isinstance(exc, VLLMValidationError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc.args[0]) if isinstance(exc, VLLMValidationError) and exc.args else str(exc)
    text = " ".join(_XGR_PREFIX.sub("", line).strip() for line in text.strip().splitlines())
    return text.strip() or type(exc).__name__


# --- structured output -----------------------------------------------------------------------


def constraint_sources(request: Any) -> list[tuple[str, str, Any]]:
    """(param, kind, spec) for each constraint the user gave, kind in json/regex/grammar."""
    out: list[tuple[str, str, Any]] = []
    fmt = getattr(request, "response_format", None)  # chat completions
    if fmt is not None and getattr(fmt, "type", None) == "json_schema":
        js = getattr(fmt, "json_schema", None)
        schema = getattr(js, "json_schema", None) if js is not None else None
        if schema is not None:
            out.append(("response_format.json_schema.schema", "json", schema))
    text = getattr(request, "text", None)  # Responses
    tfmt = getattr(text, "format", None) if text is not None else None
    if tfmt is not None and getattr(tfmt, "type", None) == "json_schema":
        schema = getattr(tfmt, "schema_", None)
        if schema is not None:
            out.append(("text.format.schema", "json", schema))
    so = getattr(request, "structured_outputs", None)  # vLLM's extension
    if so is not None:
        for kind in ("json", "regex", "grammar"):
            spec = getattr(so, kind, None)
            if spec is not None:
                out.append((f"structured_outputs.{kind}", kind, spec))
    return out


def compile_constraint(kind: str, spec: Any, param: str) -> None:
    """Compile one constraint with xgrammar (grammar level, as vLLM's validation does)."""
    import xgrammar as xgr

    from ..vllm_compat import structured_output_checks

    vllm_checks = structured_output_checks()

    what = {"json": "JSON schema", "regex": "regex", "grammar": "grammar"}[kind]
    try:
        if kind == "json":
            if isinstance(spec, str):
                try:
                    spec = json.loads(spec)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not valid JSON ({e})") from e
            if not isinstance(spec, (dict, bool)):
                raise ValueError(f"expected a JSON object, found {type(spec).__name__}")
            vllm_checks.check_json_nesting(spec)
            xgr.Grammar.from_json_schema(json.dumps(spec))
        elif kind == "regex":
            vllm_checks.compile_regex_with_timeout(xgr.Grammar.from_regex, spec)
        elif vllm_checks.grammar_is_likely_lark(spec):
            xgr.Grammar.from_lark(spec)
        else:
            xgr.Grammar.from_ebnf(spec)
    except Exception as e:  # noqa: BLE001 - any compiler failure is the request's fault
        raise VLLMValidationError(
            f"{param}: the {what} could not be compiled by the structured-output backend "
            f"(xgrammar): {_reason(e)}",
            parameter=param,
        ) from e


def _tool_schemas(request: Any) -> list[tuple[str, Any]]:
    out = []
    for i, tool in enumerate(getattr(request, "tools", None) or []):
        fn = getattr(tool, "function", None)
        if fn is not None:
            out.append((f"tools[{i}].function.parameters", getattr(fn, "parameters", None)))
        elif getattr(tool, "type", None) == "function":
            out.append((f"tools[{i}].parameters", getattr(tool, "parameters", None)))
    return [(p, s) for p, s in out if s is not None]


def check_final_constraint(request: Any, sources: list[tuple[str, str, Any]]) -> None:
    """The constraint vLLM will send to the engine (after adjust_request) must compile."""
    params = getattr(request, "structured_outputs", None)
    if params is None:
        return
    from vllm.sampling_params import SamplingParams

    from ..vllm_compat import structured_output_checks

    try:
        # A copy: validate_xgrammar_grammar rewrites `choice` into `grammar` in place.
        structured_output_checks().validate_xgrammar_grammar(SamplingParams(structured_outputs=replace(params)))
        return
    except Exception as e:  # noqa: BLE001
        failure = e
    # Name the part that fails: the user's constraint, else a tool schema, else tool_choice.
    for param, kind, spec in sources:
        compile_constraint(kind, spec, param)
    for param, schema in _tool_schemas(request):
        compile_constraint("json", schema, param)
    param = sources[0][0] if sources else "tool_choice"
    raise VLLMValidationError(
        f"{param}: the structured-output constraint could not be compiled by the structured-output "
        f"backend (xgrammar): {_reason(failure)}",
        parameter=param,
    ) from failure


# --- everything else -------------------------------------------------------------------------


def _max_logprobs(model_config: Any) -> int:
    value = getattr(model_config, "max_logprobs", None)
    return OPENAI_MAX_TOP_LOGPROBS if value is None else int(value)


def check_top_logprobs(request: Any, model_config: Any = None) -> None:
    value = getattr(request, "top_logprobs", None)
    if value is None or value == 0:
        return
    bound = _max_logprobs(model_config)
    if bound == -1:  # --max-logprobs -1: the whole vocabulary is allowed
        return
    if value == -1 or value > bound:
        found = "-1 (the whole vocabulary)" if value == -1 else str(value)
        raise VLLMValidationError(
            f"top_logprobs must be an integer from 0 to {bound} on this server "
            f"(its --max-logprobs; OpenAI's limit is {OPENAI_MAX_TOP_LOGPROBS}); found {found}.",
            parameter="top_logprobs",
            value=value,
        )


def check_n(request: Any) -> None:
    if not hasattr(request, "n"):
        return  # Responses has no n
    n = 1 if request.n is None else request.n
    bound = max_n()
    if not 1 <= n <= bound:
        raise VLLMValidationError(
            f"n must be an integer from 1 to {bound} on this server ({MAX_N_ENV}); found {n}.",
            parameter="n",
            value=n,
        )


def function_tools(tools: Any):
    """(index, field path, tool fields) of each function tool, in either API's shape: chat
    completions nest them (`tools[i].function.name`), Responses does not (`tools[i].name`)."""
    for i, tool in enumerate(tools or []):
        fn = getattr(tool, "function", None)
        if fn is not None:
            yield i, f"tools[{i}].function", fn
        elif getattr(tool, "type", None) == "function":
            yield i, f"tools[{i}]", tool


def check_unique_tool_names(request: Any) -> None:
    seen: dict[str, str] = {}
    for _, path, fn in function_tools(getattr(request, "tools", None)):
        name, where = getattr(fn, "name", None), f"{path}.name"
        if not isinstance(name, str):
            continue
        if name in seen:
            raise VLLMValidationError(
                f"{where}: function names must be unique (the model calls a tool by its name); "
                f"found {name!r} again, already used by {seen[name]}.",
                parameter=where,
                value=name,
            )
        seen[name] = where


def check_messages(request: Any) -> None:
    messages = getattr(request, "messages", None)
    if messages is not None and len(messages) == 0:
        raise VLLMValidationError(
            "messages must be a non-empty array of messages; found [].", parameter="messages"
        )


def check_request(request: Any, model_config: Any = None) -> list[tuple[str, str, Any]]:
    """All checks that look at the request as the user sent it (before vLLM rewrites it).

    Returns the user's structured-output constraints for `check_final_constraint`.
    """
    check_messages(request)
    check_n(request)
    check_top_logprobs(request, model_config)
    check_unique_tool_names(request)
    sources = constraint_sources(request)
    for param, kind, spec in sources:
        compile_constraint(kind, spec, param)
    return sources


def tool_choice_not_offered(tool_name: str, tools: list[Any]) -> VLLMValidationError:
    """The 400 for a Responses ``tool_choice`` naming a function that is not in ``tools``."""

    def field(tool, key):
        return tool.get(key) if isinstance(tool, dict) else getattr(tool, key, None)

    offered = [n for n in (field(t, "name") for t in tools or []) if isinstance(n, str)]
    return VLLMValidationError(
        f"tool_choice names the function {tool_name!r}, which is not among the offered tools "
        f"(found: {', '.join(repr(n) for n in offered) or 'none'}).",
        parameter="tool_choice",
        value=tool_name,
    )
