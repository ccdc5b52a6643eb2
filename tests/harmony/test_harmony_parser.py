"""Our harmony parser alone (no server): oracle agreement, malformations, streaming equality.

The oracle is oss-harmony (import name openai_harmony): its renderer makes the well-formed inputs
and its parsers (`parse_messages_from_completion_tokens`, `StreamableParser`) say what they mean.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from openai_harmony import Message, Role, StreamableParser
from parser_harness import ENC, OURS, STOCK, TOK, examples, ids_of

from vllm_gptoss.harmony import metrics
from gptoss_dev.malformations import MALFORMATIONS, Malformation
from vllm_gptoss.harmony.parser import (
    RECOVERY_KINDS,
    HarmonyStreamParser,
    SpecialTokens,
    make_parser,
    parse_completion,
)
from gptoss_dev.stock_compare import (
    TABLE_PATH,
    Outcome,
    chat_request,
    expected,
    run_parse,
    run_stream,
    table,
    truncated_reasoning_case,
)

# --- special tokens come from the encoding, by name -------------------------------------------


def test_special_tokens_looked_up_by_name():
    s = SpecialTokens.from_encoding(ENC)
    for name, tid in [
        ("<|start|>", s.start),
        ("<|end|>", s.end),
        ("<|message|>", s.message),
        ("<|channel|>", s.channel),
        ("<|constrain|>", s.constrain),
        ("<|return|>", s.return_),
        ("<|call|>", s.call),
    ]:
        assert ENC.decode([tid]) == name
        assert ENC.is_special_token(tid)
    # The stop tokens the library declares for assistant actions are our message terminators.
    assert set(ENC.stop_tokens_for_assistant_actions()) == {s.return_, s.call}


def test_missing_special_token_is_a_clear_error():
    with pytest.raises(ValueError, match="<\\|channel\\|>"):
        SpecialTokens.from_lookup(lambda name: None if name == "<|channel|>" else 1)


# --- well-formed input: agree with oss-harmony -------------------------------------------------

_words = st.text(
    alphabet=st.characters(
        codec="utf-8", categories=("L", "N", "P", "Zs", "S"), exclude_characters="<|>"
    ),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s != "")

TOOL_NAMES = ["get_weather", "lookup", "search_docs", "x"]
_tool = st.sampled_from(TOOL_NAMES)
# The request offers every name the generated calls use (a call to a name not offered is dropped).
OFFERED = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
    for n in TOOL_NAMES
]


@st.composite
def assistant_turn(draw):
    """A well-formed completion: analysis / preamble / final messages, maybe ending in a call."""
    msgs = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["analysis", "preamble"]))
        text = draw(_words)
        channel = "analysis" if kind == "analysis" else "commentary"
        msgs.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel))
    end = draw(st.sampled_from(["final", "call", "builtin"]))
    if end == "final":
        msgs.append(Message.from_role_and_content(Role.ASSISTANT, draw(_words)).with_channel("final"))
    elif end == "call":
        args = json.dumps({draw(st.sampled_from(["city", "q"])): draw(_words)}, ensure_ascii=False)
        channel = draw(st.sampled_from(["commentary", "analysis"]))
        msgs.append(
            Message.from_role_and_content(Role.ASSISTANT, args)
            .with_channel(channel)
            .with_recipient("functions." + draw(_tool))
            .with_content_type("<|constrain|>json")
        )
    else:
        msgs.append(
            Message.from_role_and_content(Role.ASSISTANT, '{"query": "' + draw(_words) + '"}')
            .with_channel("analysis")
            .with_recipient("browser.search")
        )
    return msgs


def render_completion(msgs: list[Message]) -> list[int]:
    """Token ids the model emits after the prompt's `<|start|>assistant`."""
    s = SpecialTokens.from_encoding(ENC)
    ids: list[int] = []
    for m in msgs:
        ids.extend(ENC.render(m))
    prefix = [s.start] + ENC.encode("assistant")
    assert ids[: len(prefix)] == prefix
    ids = ids[len(prefix) :]
    # The library ends a tool call with <|call|> already; a final answer the model ends with
    # <|return|> (the renderer writes <|end|>, the form stored in history).
    if ids[-1] == s.end:
        ids[-1] = s.return_
    assert ids[-1] in (s.call, s.return_)
    return ids


def oracle_messages(ids: list[int]):
    msgs = ENC.parse_messages_from_completion_tokens(ids, Role.ASSISTANT)
    return [(m.channel, m.recipient, m.content[0].text) for m in msgs]


def oracle_stream_deltas(ids: list[int]):
    """(channel, recipient, text) per message from StreamableParser's per-token deltas."""
    p = StreamableParser(ENC, role=Role.ASSISTANT)
    out: dict[int, list] = {}
    for t in ids:
        p.process(t)
        if p.last_content_delta:
            idx = len(p.messages)
            ch, rc, parts = out.setdefault(idx, [p.current_channel, p.current_recipient, []])
            parts.append(p.last_content_delta)
    p.process_eos()
    return [(ch, rc, "".join(parts)) for _, (ch, rc, parts) in sorted(out.items())]


def chunking(draw_sizes, n):
    sizes, pos = [], 0
    for s in draw_sizes:
        if pos >= n:
            break
        s = min(s, n - pos)
        sizes.append(s)
        pos += s
    if pos < n:
        sizes.append(n - pos)
    return sizes


@examples(120, HealthCheck.too_slow)
@given(turn=assistant_turn(), sizes=st.lists(st.integers(1, 7), max_size=60))
def test_agrees_with_oss_harmony_on_well_formed_output(turn, sizes):
    ids = render_completion(turn)
    want = oracle_messages(ids)
    assert oracle_stream_deltas(ids) == want  # the two oracle APIs agree with each other

    p = make_parser()
    events = []
    pos = 0
    for n in chunking(sizes, len(ids)):
        events.extend(p.process_many(ids[pos : pos + n]))
        pos += n
    events.extend(p.finish())
    got = [(m.channel, m.recipient, m.text) for m in p.messages]
    assert got == want
    # Nothing to repair in well-formed output; a function call on analysis is parseable but off
    # the spec (function tools belong on commentary), so it is counted, and only that.
    n_analysis_calls = sum(1 for ch, rc, _ in want if ch == "analysis" and rc and rc.startswith("functions."))
    assert p.recoveries == ["tool_on_analysis"] * n_analysis_calls
    # Streamed deltas concatenate to each completed message.
    per_msg, cur = [], []
    for ev in events:
        if ev.message is not None:
            per_msg.append("".join(cur))
            cur = []
        else:
            cur.append(ev.delta)
    assert per_msg == [t for _, _, t in want]

    # Through vLLM's serving calls: random chunking of parse_delta == parse.
    req = chat_request(offers_tools=True, tools=OFFERED)
    full = run_parse(OURS, ids, req, TOK)
    streamed = run_stream(OURS, ids, req, TOK, chunks=chunking(sizes, len(ids)))
    assert full.error is None and full == streamed
    reasoning = [t for ch, rc, t in want if ch == "analysis" and rc is None]
    content = [t for ch, rc, t in want if rc is None and ch in ("final", "commentary")]
    calls = [(rc.split(".", 1)[1], t) for ch, rc, t in want if rc and rc.startswith("functions.")]
    assert full.reasoning == ("\n".join(reasoning) or None)
    assert full.content == ("\n".join(content) or None)
    assert list(full.tool_calls) == calls
    for _, args in full.tool_calls:
        json.loads(args)


def test_multibyte_characters_split_across_tokens_stream_intact():
    text = "日本語のテキスト 🚀🚀 naïve café"
    ids = ids_of(f"<|channel|>final<|message|>{text}<|return|>")
    single = [ENC.decode([t]) for t in ids]
    assert any("\ufffd" in s for s in single), "want a token that splits a character"
    p = make_parser()
    deltas = "".join(e.delta for t in ids for e in p.process(t)) + "".join(
        e.delta for e in p.finish()
    )
    assert deltas == text and p.messages[0].text == text


# --- malformations: one test each ---------------------------------------------------------------


@pytest.mark.parametrize("m", MALFORMATIONS, ids=lambda m: m.kind)
def test_malformation_recovered(m: Malformation):
    ids = ids_of(m.completion)
    before = {k: metrics.value(k) for k in RECOVERY_KINDS}
    msgs, kinds = parse_completion(ids, ["get_weather"])
    assert kinds == list(m.counted_as)

    req = chat_request(m.offers_tools)
    full = run_parse(OURS, ids, req, TOK)
    assert full == expected(m)
    for sizes in ([1] * len(ids), [3] * (len(ids) // 3 + 1), [len(ids)]):
        assert run_stream(OURS, ids, req, TOK, chunks=chunking(sizes, len(ids))) == full
    # The serving parser counts each repair in the Prometheus counter (twice: parse + 3 streams).
    after = {k: metrics.value(k) for k in RECOVERY_KINDS}
    for kind in RECOVERY_KINDS:
        want = 4 * list(m.counted_as).count(kind)
        assert after[kind] - before[kind] == want, kind


def test_the_oracle_rejects_the_malformations_it_cannot_parse():
    """Guard: these rows really are malformed (oss-harmony's strict parser raises)."""
    from openai_harmony import HarmonyError

    for kind in ("doubled_start", "return_after_end", "missing_message", "text_after_stop"):
        with pytest.raises(HarmonyError):
            ENC.parse_messages_from_completion_tokens(ids_of(BY_KIND(kind).completion), Role.ASSISTANT)


def BY_KIND(kind):  # noqa: N802
    from gptoss_dev.malformations import BY_KIND as table_

    return table_[kind]


@pytest.mark.parametrize(
    "text, reasoning, content, calls, kinds",
    [
        # Repeated role header at the very start.
        ("<|start|>assistant<|channel|>final<|message|>Hi.<|return|>", None, "Hi.", [], ["doubled_start"]),
        # A header with no text at all before the end token.
        ("<|channel|>final<|message|>A<|end|><|start|><|end|>", None, "A", [], ["missing_message"]),
        # Missing <|start|>assistant between messages.
        ("<|channel|>analysis<|message|>R<|end|><|channel|>final<|message|>C<|return|>", "R", "C", [], ["missing_start"]),
        # A new header inside content (missing <|end|>).
        ("<|channel|>analysis<|message|>R<|start|>assistant<|channel|>final<|message|>C<|return|>", "R", "C", [], ["missing_end"]),
        # Channel that is only junk -> final.
        ("<|channel|>??<|message|>C<|return|>", None, "C", [], ["channel_junk"]),
        # Tool call with a recipient but no channel.
        ('<|start|>assistant to=functions.get_weather<|message|>{"city": "Rome"}<|call|>', None, None, [("get_weather", '{"city": "Rome"}')], ["doubled_start", "missing_channel"]),
        # Recipient in both places (vLLM renderer comment): one call.
        ('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>', None, None, [("get_weather", '{"city": "Oslo"}')], []),
        # Stray special tokens inside content are dropped.
        ("<|channel|>final<|message|>A<|constrain|>B<|return|>", None, "AB", [], ["stray_token"]),
        # Headerless output (no channel at all) -> raw text as content.
        ("The sky is blue.<|return|>", None, "The sky is blue.", [], ["missing_message"]),
        # Two final messages are joined with a newline, like vLLM.
        ("<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>final<|message|>B<|return|>", None, "A\nB", [], []),
        # Built-in tool call (browser) is not chat output: skipped, no error.
        ('<|channel|>analysis to=browser.search<|message|>{"query": "x"}<|call|>', None, None, [], []),
    ],
)
def test_more_malformations(text, reasoning, content, calls, kinds):
    ids = ids_of(text)
    _, got_kinds = parse_completion(ids, ["get_weather"])
    assert got_kinds == kinds
    req = chat_request(offers_tools=True)
    full = run_parse(OURS, ids, req, TOK)
    assert full == Outcome(reasoning, content, tuple(calls))
    assert run_stream(OURS, ids, req, TOK) == full


def test_glued_json_repaired_only_to_an_offered_name():
    # Issue 12 changed this: the repair used to fire with no tools known (`fetchjson` -> `fetch`).
    ids = ids_of('<|channel|>commentary to=functions.to_json <|constrain|>json<|message|>{}<|call|>')
    msgs, kinds = parse_completion(ids, ["to_json"])
    assert msgs[0].recipient == "functions.to_json" and kinds == []
    msgs, kinds = parse_completion(ids, ["to_json", "to_"])  # both offered: the real name wins
    assert msgs[0].recipient == "functions.to_json" and kinds == []
    ids = ids_of('<|channel|>commentary to=functions.fetchjson<|message|>{}<|call|>')
    msgs, kinds = parse_completion(ids, ["fetch"])
    assert msgs[0].recipient == "functions.fetch" and kinds == ["tool_name_glued_json"]
    msgs, kinds = parse_completion(ids, None)  # names not known: nothing to repair towards
    assert msgs[0].recipient == "functions.fetchjson" and kinds == []
    msgs, kinds = parse_completion(ids, [])  # no tools offered: no tool call at all
    assert msgs == [] and kinds == ["tool_not_offered"]


@examples(200)
@given(st.lists(st.integers(199990, 200020) | st.integers(0, 5000), max_size=80))
def test_never_raises_on_arbitrary_token_soup(ids):
    req = chat_request(offers_tools=True)
    full = run_parse(OURS, ids, req, TOK)
    assert full.error is None
    assert run_stream(OURS, ids, req, TOK) == full


def test_truncated_reasoning_gives_reasoning_and_no_content():
    reasoning, ids = truncated_reasoning_case()
    req = chat_request(offers_tools=False)
    out = run_parse(OURS, ids, req, TOK)
    assert out == Outcome(reasoning=reasoning, content=None)
    assert run_stream(OURS, ids, req, TOK) == out
    p = OURS(TOK, None)
    assert p.count_reasoning_tokens(ids) == len(ids) - 3  # <|channel|> analysis <|message|>


# --- stock vLLM: the same check fails under the built-in parser ---------------------------------

STOCK_FAILS = [
    m.kind
    for m in MALFORMATIONS
    if m.kind
    in ("doubled_start", "missing_message", "bare_final", "channel_junk", "tool_name_glued_json", "text_after_stop")
]


def recovery_is_right(parser_cls, m: Malformation) -> bool:
    ids = ids_of(m.completion)
    req = chat_request(m.offers_tools)
    return run_parse(parser_cls, ids, req, TOK) == expected(m) == run_stream(
        parser_cls, ids, req, TOK
    )


@pytest.mark.parametrize("kind", STOCK_FAILS)
def test_fails_under_builtin_parser_passes_with_ours(kind):
    from gptoss_dev.malformations import BY_KIND as rows

    assert recovery_is_right(OURS, rows[kind])
    assert not recovery_is_right(STOCK, rows[kind]), "stock vLLM now recovers this; update table"


def test_stock_table_is_current():
    assert TABLE_PATH.read_text() == table(), "run: python -m gptoss_dev.stock_compare --write"


def test_parser_is_standalone():
    """The core parser works with any token->bytes function (no vLLM, no harmony lib)."""
    s = SpecialTokens(start=1, end=2, message=3, channel=4, constrain=5, return_=6, call=7, endoftext=None)
    vocab = {10: b"final", 11: b"Hi", 12: b"analysis", 13: b" there"}
    p = HarmonyStreamParser(s, vocab.__getitem__)
    p.process_many([4, 12, 3, 11, 2, 1, 10, 4, 10, 3, 11, 13, 6])
    p.finish()
    assert [(m.channel, m.text) for m in p.messages] == [("analysis", "Hi"), ("final", "Hi there")]
    assert p.recoveries == ["header_junk"]


def test_message_token_spelled_as_text_is_read_as_the_token():
    """Under a string-matching grammar (tool_choice=required) a model can spell `<|message|>`."""
    s = SpecialTokens.from_encoding(ENC)
    spelled = ENC.encode('commentary to=functions.get_weather json<|message|>{"city": "X"}', disallowed_special=())
    assert s.message not in spelled
    ids = [s.channel, *spelled, s.call]
    msgs, kinds = parse_completion(ids, ["get_weather"])
    assert kinds == ["spelled_special"]
    req = chat_request(offers_tools=True)
    full = run_parse(OURS, ids, req, TOK)
    assert full == Outcome(tool_calls=(("get_weather", '{"city": "X"}'),))
    assert run_stream(OURS, ids, req, TOK) == full
