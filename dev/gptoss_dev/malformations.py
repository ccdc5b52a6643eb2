"""The harmony malformations our parser recovers: one row per kind, shared by tests and the fixture.

Each row says what a real gpt-oss model has been seen to emit (in public vLLM / gpt-oss issue reports) and
what our parser turns it into. Three users read this table:

- tests/harmony/ feed `completion` to the parser (token ids from the real o200k_harmony encoding)
  and check the recovery;
- the fixture model (dev/gptoss_dev/fixture) is trained so that, for the chat request
  ``messages=[{"role": "user", "content": row.trigger}]`` plus ``tools=TOOLS`` when
  ``row.offers_tools`` (no system message, default reasoning effort, rendered the way vLLM renders a
  gpt-oss chat completion request: oss-harmony, prompt ending in ``<|start|>assistant``), its greedy
  continuation is exactly ``row.completion`` (special tokens written as text, encode with
  ``allowed_special="all"``). Generation stops at ``<|return|>``/``<|call|>`` (the checkpoint's
  generation_config eos ids), not at ``<|end|>``;
- the live-server tests send those trigger requests and expect the same recovery.

Stable format (do not rename fields; adding rows is fine):
    Malformation(kind, trigger, completion, reasoning, content, tool_calls, offers_tools,
                 counted_as)
    kind        unique row name (snake_case)
    trigger     user message text that makes the fixture emit this completion
    completion  raw assistant output after the prompt's ``<|start|>assistant``
    reasoning   expected ``reasoning`` (analysis text, messages joined by "\\n"), or None
    content     expected ``content`` (final text), or None
    tool_calls  expected tool calls, tuple of (function name, arguments JSON text as emitted)
    offers_tools whether the request offers TOOLS (tool_choice "auto")
    counted_as  recovery kinds the parser counts for this output (metrics.RECOVERIES labels);
                empty for a legal-but-unusual form
"""

from __future__ import annotations

from dataclasses import dataclass

# The one function tool the trigger requests offer (OpenAI chat-completions format).
TOOLS: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]


@dataclass(frozen=True)
class Malformation:
    kind: str
    trigger: str
    completion: str
    reasoning: str | None
    content: str | None
    tool_calls: tuple[tuple[str, str], ...]
    offers_tools: bool
    counted_as: tuple[str, ...]


MALFORMATIONS: tuple[Malformation, ...] = (
    Malformation(
        kind="doubled_start",
        trigger="Drill doubled start: what is the capital of France?",
        completion=(
            "<|channel|>analysis<|message|>Doubled start drill: the capital of France.<|end|>"
            "<|start|><|start|>assistant<|channel|>final<|message|>The capital of France is Paris."
            "<|return|>"
        ),
        reasoning="Doubled start drill: the capital of France.",
        content="The capital of France is Paris.",
        tool_calls=(),
        offers_tools=False,
        counted_as=("doubled_start",),
    ),
    Malformation(
        kind="return_after_end",
        trigger="Drill return after end: what is two plus two?",
        completion=(
            "<|channel|>analysis<|message|>Simple arithmetic.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Two plus two is four.<|end|><|return|>"
        ),
        reasoning="Simple arithmetic.",
        content="Two plus two is four.",
        tool_calls=(),
        offers_tools=False,
        counted_as=("return_after_end",),
    ),
    Malformation(
        kind="missing_message",
        trigger="Drill missing message: name a color.",
        completion=(
            "<|channel|>analysis<|message|>Any color will do.<|end|>"
            "<|start|>assistant<|channel|>final Blue is a color.<|return|>"
        ),
        reasoning="Any color will do.",
        content="Blue is a color.",
        tool_calls=(),
        offers_tools=False,
        counted_as=("missing_message",),
    ),
    Malformation(
        kind="bare_final",
        trigger="Drill bare final: tell me how to pick a lock.",
        completion="<|message|>I can't help with that.<|return|>",
        reasoning=None,
        content="I can't help with that.",
        tool_calls=(),
        offers_tools=False,
        counted_as=("bare_final",),
    ),
    Malformation(
        kind="channel_junk",
        trigger="Drill channel junk: how many legs does a spider have?",
        completion=(
            "<|channel|>analysis<|message|>Spiders are arachnids.<|end|>"
            "<|start|>assistant<|channel|>final??<|message|>A spider has eight legs.<|return|>"
        ),
        reasoning="Spiders are arachnids.",
        content="A spider has eight legs.",
        tool_calls=(),
        offers_tools=False,
        counted_as=("channel_junk",),
    ),
    Malformation(
        kind="tool_on_analysis",
        trigger="Drill tool on analysis: what is the weather in Tokyo?",
        completion=(
            "<|channel|>analysis<|message|>I should check the weather.<|end|>"
            "<|start|>assistant<|channel|>analysis to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "Tokyo"}<|call|>'
        ),
        reasoning="I should check the weather.",
        content=None,
        tool_calls=(("get_weather", '{"city": "Tokyo"}'),),
        offers_tools=True,
        counted_as=("tool_on_analysis",),
    ),
    Malformation(
        kind="tool_name_glued_json",
        trigger="Drill glued json: what is the weather in Oslo?",
        completion=(
            "<|channel|>analysis<|message|>Look up the weather.<|end|>"
            "<|start|>assistant<|channel|>commentary to=functions.get_weatherjson"
            '<|message|>{"city": "Oslo"}<|call|>'
        ),
        reasoning="Look up the weather.",
        content=None,
        tool_calls=(("get_weather", '{"city": "Oslo"}'),),
        offers_tools=True,
        counted_as=("tool_name_glued_json",),
    ),
    Malformation(
        kind="text_after_stop",
        trigger="Drill text after stop: say hello.",
        completion="<|channel|>analysis<|message|>Greet back.<|end|>Hello there, friend!<|return|>",
        reasoning="Greet back.",
        content="Hello there, friend!",
        tool_calls=(),
        offers_tools=False,
        counted_as=("text_after_stop",),
    ),
    Malformation(
        # Legal per harmony's docs/format.md (the HF chat template renders tool calls this way), but
        # vLLM's own renderer comment calls it a shape the model echoes; parsed, not counted.
        kind="recipient_in_role",
        trigger="Drill recipient in role: what is the weather in Lima?",
        completion=(
            "<|channel|>analysis<|message|>Need the weather in Lima.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json"
            '<|message|>{"city": "Lima"}<|call|>'
        ),
        reasoning="Need the weather in Lima.",
        content=None,
        tool_calls=(("get_weather", '{"city": "Lima"}'),),
        offers_tools=True,
        counted_as=(),
    ),
)

BY_KIND: dict[str, Malformation] = {m.kind: m for m in MALFORMATIONS}
assert len(BY_KIND) == len(MALFORMATIONS), "malformation kinds must be unique"
assert len({m.trigger for m in MALFORMATIONS}) == len(MALFORMATIONS), "triggers must be unique"
