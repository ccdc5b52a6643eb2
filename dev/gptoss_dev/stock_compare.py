"""Run vLLM's built-in harmony parser and ours on the same token ids; write STOCK_VS_OURS.md.

    python -m gptoss_dev.stock_compare            # print the markdown table
    python -m gptoss_dev.stock_compare --write    # rewrite STOCK_VS_OURS.md

Both parsers are driven through the calls vLLM's chat-completions server makes: ``parse`` for a
non-streamed response and ``parse_delta`` token by token for a streamed one. tests/harmony use the
same helpers, and check that the committed table is what this module computes.
"""

from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass

from .malformations import MALFORMATIONS, TOOLS, Malformation

# The table is documentation of the runtime parser, so it lives beside it.
TABLE_PATH = pathlib.Path(__file__).resolve().parents[2] / "vllm_gptoss" / "harmony" / "STOCK_VS_OURS.md"


class EncodingTokenizer:
    """The bits of a tokenizer the parsers call, over the bundled harmony encoding."""

    def __init__(self):
        from vllm_gptoss.harmony.parser import default_encoding

        self.encoding = default_encoding()[0]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.encoding.decode(list(ids))

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def get_vocab(self) -> dict[str, int]:
        return {}


def parser_classes():
    """(stock, ours): vLLM's HarmonyParser and ours, each with the gpt-oss reasoning/tool parsers."""
    from vllm.parser.harmony import HarmonyParser
    from vllm.reasoning.gptoss_reasoning_parser import GptOssReasoningParser
    from vllm.tool_parsers.gptoss_tool_parser import GptOssToolParser

    from vllm_gptoss.harmony.vllm_parsers import (
        GptOssHarmonyReasoningParser,
        GptOssHarmonyToolParser,
        HarmonyServingParser,
    )

    class Stock(HarmonyParser):
        reasoning_parser_cls = GptOssReasoningParser
        tool_parser_cls = GptOssToolParser

    class Ours(HarmonyServingParser):
        reasoning_parser_cls = GptOssHarmonyReasoningParser
        tool_parser_cls = GptOssHarmonyToolParser

    return Stock, Ours


def chat_request(offers_tools: bool, **extra):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = {"model": "gpt-oss", "messages": [{"role": "user", "content": "hi"}], **extra}
    if offers_tools:
        body.setdefault("tools", TOOLS)
    return ChatCompletionRequest(**body)


@dataclass
class Outcome:
    reasoning: str | None = None
    content: str | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()
    error: str | None = None

    def as_cell(self) -> str:
        if self.error:
            return f"**exception** `{self.error[:70]}`"
        parts = []
        if self.reasoning is not None:
            parts.append(f"reasoning={self.reasoning!r}")
        if self.content is not None:
            parts.append(f"content={self.content!r}")
        for name, args in self.tool_calls:
            parts.append(f"tool_call={name}({args})")
        return "<br>".join(p.replace("|", "\\|") for p in parts) or "(nothing)"


def run_parse(parser_cls, token_ids, request, tokenizer) -> Outcome:
    """Non-streamed: what `chat_completion_full_generator` gets from `parser.parse`."""
    try:
        parser = parser_cls(tokenizer, request.tools)
        reasoning, content, calls = parser.parse(
            "", request, enable_auto_tools=True, model_output_token_ids=list(token_ids)
        )
    except Exception as e:  # noqa: BLE001 - recording what stock does
        return Outcome(error=f"{type(e).__name__}: {e}")
    return Outcome(
        reasoning, content, tuple((c.name, c.arguments) for c in (calls or []))
    )


def run_stream(parser_cls, token_ids, request, tokenizer, chunks=None) -> Outcome:
    """Streamed: `parse_delta` per chunk (default one token), deltas joined like a client does."""
    ids = list(token_ids)
    if chunks is None:
        chunks = [1] * len(ids)
    reasoning, content, calls = [], [], {}
    try:
        parser = parser_cls(tokenizer, request.tools)
        pos = 0
        for i, n in enumerate(chunks):
            piece = ids[pos : pos + n]
            pos += n
            last = i == len(chunks) - 1
            d = parser.parse_delta("", piece, request, finished=last)
            if d is None:
                continue
            if d.reasoning:
                reasoning.append(d.reasoning)
            if d.content:
                content.append(d.content)
            for tc in d.tool_calls or []:
                name, args = calls.get(tc.index, ("", ""))
                fn = tc.function
                calls[tc.index] = (
                    name + (fn.name or "") if fn else name,
                    args + (fn.arguments or "") if fn else args,
                )
    except Exception as e:  # noqa: BLE001
        return Outcome(error=f"{type(e).__name__}: {e}")
    return Outcome(
        "".join(reasoning) or None,
        "".join(content) or None,
        tuple(calls[k] for k in sorted(calls)),
    )


def expected(m: Malformation) -> Outcome:
    return Outcome(m.reasoning, m.content, m.tool_calls)


def truncated_reasoning_case() -> tuple[str, list[int]]:
    """max_tokens ran out inside the reasoning: no end token, no final channel."""
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    text = "<|channel|>analysis<|message|>Let me think about this carefully"
    return "Let me think about this carefully", enc.encode(text, allowed_special="all")


@dataclass(frozen=True)
class Case:
    """A raw output that is not in the fixture's corpus (no trigger): the regressions of issue 12.

    `tools`: the function names the request offers (None: no tools). `want`: what the client must
    get; `counted_as`: the recovery kinds our parser counts.
    """

    kind: str
    completion: str
    tools: tuple[str, ...] | None
    want: Outcome
    counted_as: tuple[str, ...]


_W = ("get_weather",)
EXTRA_CASES: tuple[Case, ...] = (
    # max_tokens inside a header: what was complete before it stands, no fragment, no tool call.
    Case("truncated_header: ` to`", " to", _W, Outcome(), ("truncated_header",)),
    Case(
        "truncated_header: channel name",
        "<|channel|>analysis<|message|>Check first.<|end|><|start|>assistant<|channel|>comment",
        None,
        Outcome(reasoning="Check first."),
        ("truncated_header",),
    ),
    Case(
        "truncated_header: tool header",
        "<|channel|>analysis<|message|>Check first.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>comment",
        _W,
        Outcome(reasoning="Check first."),
        ("truncated_header",),
    ),
    # A turn of another role after the reply: the model runs on and invents the user's next
    # message (and answers it); none of that is the reply.
    Case(
        "foreign_turn: invented user turn",
        "<|channel|>analysis<|message|>Answer about Oslo.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Yes, it is sunny in Oslo.<|end|>"
        "<|start|>user<|message|>And tomorrow?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Tomorrow it rains.<|return|>",
        None,
        Outcome(reasoning="Answer about Oslo.", content="Yes, it is sunny in Oslo."),
        ("foreign_turn",),
    ),
    # Here a tool call closed with <|end|>, then an
    # invented tool result and an answer built on it): only the call is the reply.
    Case(
        "foreign_turn: invented tool result",
        "<|channel|>analysis<|message|>Check the weather in Bergen.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Bergen"}<|end|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 21}<|end|>'
        "<|start|>assistant<|channel|>final<|message|>It is 21 degrees in Bergen.<|return|>",
        _W,
        Outcome(reasoning="Check the weather in Bergen.", tool_calls=(("get_weather", '{"city": "Bergen"}'),)),
        ("foreign_turn",),
    ),
    # Control tokens inside a header that never gets its <|message|>: never text.
    Case(
        "repeated <|channel|>, no <|message|>",
        "<|channel|>final<|channel|>The answer is 4.<|return|>",
        None,
        Outcome(content="The answer is 4."),
        ("missing_message", "stray_token"),
    ),
    Case(
        "lone <|constrain|>",
        "<|channel|>final<|message|>Four.<|end|><|start|>assistant<|constrain|><|return|>",
        None,
        Outcome(content="Four."),
        ("missing_message",),
    ),
    Case(
        "<|constrain|> then arguments, no <|message|>",
        '<|channel|>commentary to=functions.get_weather <|constrain|>{"city": "Oslo"}<|call|>',
        _W,
        Outcome(tool_calls=(("get_weather", '{"city": "Oslo"}'),)),
        ("missing_message",),
    ),
    # Tool names: only what the request offered.
    Case(
        "arguments glued to the name, no <|message|>",
        '<|channel|>commentary to=functions.get_weather{"city": "Oslo"}<|call|>',
        _W,
        Outcome(tool_calls=(("get_weather", '{"city": "Oslo"}'),)),
        ("missing_message",),
    ),
    Case(
        "empty tool name",
        "<|channel|>commentary to=functions.<|message|>{}<|call|>",
        _W,
        Outcome(),
        ("tool_not_offered",),
    ),
    Case(
        "tool not offered",
        '<|channel|>commentary to=functions.search <|constrain|>json<|message|>{"q": "x"}<|call|>',
        _W,
        Outcome(),
        ("tool_not_offered",),
    ),
    Case(
        "tool call, no tools offered",
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
        None,
        Outcome(),
        ("tool_not_offered",),
    ),
    Case(
        "glued json, no tools offered",
        '<|channel|>commentary to=functions.get_weatherjson<|message|>{"city": "Oslo"}<|call|>',
        None,
        Outcome(),
        ("tool_not_offered",),
    ),
    Case(
        "a real tool named to_json",
        "<|channel|>commentary to=functions.to_json<|message|>{}<|call|>",
        ("to_json", "to_"),
        Outcome(tool_calls=(("to_json", "{}"),)),
        (),
    ),
)


def tools_for(names: tuple[str, ...] | None) -> list[dict] | None:
    """Chat-completions tools offering these function names (argument schema: any object)."""
    if names is None:
        return None
    params = {"type": "object", "properties": {}}
    return [{"type": "function", "function": {"name": n, "parameters": params}} for n in names]


def case_request(case: Case):
    tools = tools_for(case.tools)
    return chat_request(False, tools=tools) if tools else chat_request(False)


def table() -> str:
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    tok = EncodingTokenizer()
    stock, ours = parser_classes()
    rows = [
        "| kind | raw model output | stock vLLM 0.32 (non-streamed) | stock vLLM 0.32 (streamed) "
        "| vllm-gptoss (both) |",
        "|---|---|---|---|---|",
    ]
    cases = [(m.kind, m.completion, m.offers_tools) for m in MALFORMATIONS]
    reasoning_so_far, trunc_ids = truncated_reasoning_case()
    cases.append(("max_tokens inside reasoning", enc.decode(trunc_ids), False))
    cases = [(k, t, chat_request(tools)) for k, t, tools in cases]
    cases += [(c.kind, c.completion, case_request(c)) for c in EXTRA_CASES]
    for kind, text, req in cases:
        ids = enc.encode(text, allowed_special="all")
        s_full = run_parse(stock, ids, req, tok)
        s_stream = run_stream(stock, ids, req, tok)
        o_full = run_parse(ours, ids, req, tok)
        o_stream = run_stream(ours, ids, req, tok)
        ours_cell = o_full.as_cell() if o_full == o_stream else "MISMATCH"
        raw = text.replace("|", "\\|")
        label = kind.replace("|", "\\|")
        rows.append(
            f"| {label} | `{raw}` | {s_full.as_cell()} | {s_stream.as_cell()} | {ours_cell} |"
        )
    head = (
        "# Harmony malformations: stock vLLM vs vllm-gptoss\n\n"
        "Generated by `python -m gptoss_dev.stock_compare --write` (vLLM "
        f"{_vllm_version()}): the same token ids through vLLM's built-in `HarmonyParser` and ours, "
        "as the chat-completions server calls them (`parse` for non-streamed, `parse_delta` one "
        "token at a time for streamed), with `--reasoning-parser openai_gptoss --tool-call-parser "
        "openai`. Tool-call rows offer a `get_weather` tool. The rows after `max_tokens inside "
        "reasoning` are not in the fixture's corpus; those with tools offer the names in "
        "`EXTRA_CASES`.\n\n"
    )
    return head + "\n".join(rows) + "\n"


def _vllm_version() -> str:
    try:
        from vllm import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "?"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    text = table()
    if "--write" in argv:
        TABLE_PATH.write_text(text)
        print(f"wrote {TABLE_PATH}")
    else:
        print(text)


if __name__ == "__main__":
    main()


