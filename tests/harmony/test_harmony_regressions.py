"""Issue 12's cases, one test each: only model text reaches a client (no markup, no header fragment,
no other role's message, no tool name the request did not offer), and every decision is counted.

The cases are `stock_compare.EXTRA_CASES` (the rows of the stock comparison table that are not in
the fixture's corpus); a cut header and a foreign turn are also served live in
test_harmony_server.py. What stock vLLM 0.32 does with each is in STOCK_VS_OURS.md.
"""

from __future__ import annotations

import pytest

from parser_harness import ENC, OURS, STOCK, TOK, ids_of

from vllm_gptoss.harmony import metrics
from gptoss_dev.malformations import BY_KIND
from vllm_gptoss.harmony.parser import RECOVERY_KINDS, parse_completion
from gptoss_dev.stock_compare import (
    EXTRA_CASES,
    Case,
    Outcome,
    case_request,
    chat_request,
    run_parse,
    run_stream,
    tools_for,
)

CONTROL = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")


def fields(o: Outcome) -> list[str]:
    return [o.reasoning or "", o.content or "", *(n + a for n, a in o.tool_calls)]


def served(ids: list[int], req) -> Outcome:
    """Non-streamed, checked equal to streamed in one-token, three-token and single chunks."""
    full = run_parse(OURS, ids, req, TOK)
    assert full.error is None
    for n in (1, 3, max(1, len(ids))):
        chunks = [n] * (len(ids) // n) + ([len(ids) % n] if len(ids) % n else [])
        assert run_stream(OURS, ids, req, TOK, chunks=chunks) == full, n
    return full


@pytest.mark.parametrize("case", EXTRA_CASES, ids=lambda c: c.kind)
def test_issue_case(case: Case):
    ids = ids_of(case.completion)
    _, kinds = parse_completion(ids, case.tools or ())
    assert kinds == list(case.counted_as)
    before = {k: metrics.value(k) for k in RECOVERY_KINDS}
    got = served(ids, case_request(case))
    assert got == case.want
    for f in fields(got):
        assert not any(c in f for c in CONTROL), f
    # Counted in the Prometheus series once per parse (1 non-streamed + 3 streamed runs).
    after = {k: metrics.value(k) for k in RECOVERY_KINDS}
    assert {k: after[k] - before[k] for k in RECOVERY_KINDS if after[k] != before[k]} == {
        k: 4.0 * case.counted_as.count(k) for k in set(case.counted_as)
    }


def test_the_old_parser_leaked_in_these_cases_stock_too():
    """Guard that the cases are real: stock vLLM gets all but two wrong (the empty tool name it
    drops, the real `to_json` it keeps)."""
    wrong = [c.kind for c in EXTRA_CASES if run_parse(STOCK, ids_of(c.completion), case_request(c), TOK) != c.want]
    assert set(wrong) == {c.kind for c in EXTRA_CASES} - {"empty tool name", "a real tool named to_json"}


# --- a cut inside a header yields what was complete before it -----------------------------------


def test_cut_anywhere_inside_a_header_yields_nothing_of_it():
    """Every cut inside the tool-call header of a real completion (recipient written in the role,
    as the HF chat template does): the reasoning before it stands, no fragment, no tool call."""
    m = BY_KIND["recipient_in_role"]
    ids = ids_of(m.completion)
    s = ENC.encode("<|start|>", allowed_special="all")[0]
    msg = ENC.encode("<|message|>", allowed_special="all")[0]
    head, body = ids.index(s), ids.index(msg, ids.index(s))
    req = chat_request(True)
    for k in range(head + 1, body + 1):  # up to and including <|message|>'s position (not itself)
        got = served(ids[:k], req)
        assert got == Outcome(reasoning=m.reasoning), (k, ENC.decode(ids[head:k]))
        _, kinds = parse_completion(ids[:k], ["get_weather"])
        assert kinds == ["truncated_header"], k
    # One token further the call exists (empty arguments so far): the header was complete.
    assert served(ids[: body + 1], req).tool_calls == (("get_weather", ""),)


def test_missing_message_text_still_shown_when_cut():
    """A header that is not a header prefix any more is message text (missing <|message|>)."""
    got = served(ids_of("<|channel|>final Blue is a"), chat_request(False))
    assert got == Outcome(content="Blue is a")


# --- another role after the reply: it and everything after are not the reply --------------------

REPLY = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.<|end|>"
FOREIGN = [
    "<|start|>user<|message|>And tomorrow?<|end|>",
    "<|start|>user<|message|>And tomorrow?<|end|><|start|>assistant<|channel|>final<|message|>Rain.<|return|>",
    "<|start|>system<|message|>You are evil.<|end|>",
    "<|start|>developer<|message|>Be brief.<|end|>",
    "<|start|>tool<|message|>42<|end|>",
    '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 21}<|end|>',
    '<|start|>browser.search to=assistant<|channel|>commentary<|message|>results<|end|>',
    '<|start|>my_tool to=assistant<|channel|>commentary<|message|>{"ok": 1}<|end|>',
    "<|start|>user",  # cut right after the role
    "<|start|>user<|message|>And tom",  # cut inside the invented message
]


@pytest.mark.parametrize("tail", FOREIGN)
def test_foreign_turn_after_the_reply_is_dropped(tail):
    req = chat_request(True)
    want = served(ids_of(REPLY), req)
    assert want == Outcome(reasoning="Think.", content="Sunny.")
    ids = ids_of(REPLY + tail)
    assert served(ids, req) == want
    _, kinds = parse_completion(ids, ["get_weather"])
    assert kinds == ["foreign_turn"]


def test_foreign_turn_inside_an_unclosed_message_closes_it():
    """`<|start|>user` while the final message is still open (no <|end|>): the answer so far stays."""
    ids = ids_of("<|channel|>final<|message|>Sunny.<|start|>user<|message|>And tomorrow?<|end|>")
    assert served(ids, chat_request(False)) == Outcome(content="Sunny.")
    assert parse_completion(ids, [])[1] == ["missing_end", "foreign_turn"]


def test_role_words_in_plain_text_are_not_a_foreign_turn():
    """Only a role in a header position counts: text after a stop that starts with "user" is text."""
    ids = ids_of("<|channel|>final<|message|>A<|end|>user manuals help.<|return|>")
    assert served(ids, chat_request(False)) == Outcome(content="A\nuser manuals help.")
    # A junk role word is header junk, as before (not a turn of another role).
    ids = ids_of("<|channel|>final<|message|>A<|end|><|start|>final<|channel|>final<|message|>B<|return|>")
    assert served(ids, chat_request(False)) == Outcome(content="A\nB")


# --- tool names: only what the request offered ---------------------------------------------------


@pytest.mark.parametrize(
    "offered, want",
    [
        (("get_weather",), (("get_weather", '{"city": "Oslo"}'),)),
        (("get_weather", "get_weatherjson"), (("get_weatherjson", '{"city": "Oslo"}'),)),
        (("get_weatherjson",), (("get_weatherjson", '{"city": "Oslo"}'),)),
        (("lookup",), ()),
        (None, ()),
    ],
)
def test_glued_json_repair_only_towards_an_offered_name(offered, want):
    ids = ids_of('<|channel|>commentary to=functions.get_weatherjson<|message|>{"city": "Oslo"}<|call|>')
    req = chat_request(False, tools=tools_for(offered)) if offered else chat_request(False)
    assert served(ids, req).tool_calls == want
    _, kinds = parse_completion(ids, offered or ())
    repaired = want and want[0][0] == "get_weather"
    assert kinds == (["tool_name_glued_json"] if repaired else [] if want else ["tool_not_offered"])


def test_dropped_tool_call_leaves_the_rest_of_the_reply():
    text = (
        "<|channel|>analysis<|message|>Use a tool.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json<|message|>{"q": 1}<|end|>'
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'
    )
    got = served(ids_of(text), chat_request(True))
    assert got == Outcome(reasoning="Use a tool.", tool_calls=(("get_weather", '{"city": "Oslo"}'),))


def test_every_recovery_kind_is_documented():
    """The README's table of kinds and the parser's docstring name exactly RECOVERY_KINDS."""
    import re
    from pathlib import Path

    from vllm_gptoss.harmony import parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Only model text reaches a client.**", 1)[1].split("\n\n", 2)[1]
    assert re.findall(r"^\| `(\w+)` \|", section, re.M) == list(RECOVERY_KINDS)
    doc = re.findall(r"^    (\w+) ", parser.__doc__, re.M)
    assert doc == list(RECOVERY_KINDS)
