"""Property tests (hypothesis): whatever the model emits, only its message text reaches a client.

Outputs are generated with oss-harmony's renderer (`openai_harmony`), which is also the oracle for
well-formed ones (`parse_messages_from_completion_tokens`), then cut by max_tokens at every position,
mutated the way models fail, or replaced by random soup. Each is driven through vLLM's calls into our
`HarmonyServingParser` (`parse` non-streamed, `parse_delta` one token at a time and in random chunks).

Invariants: no exception; streamed == non-streamed; no control-token name in `reasoning`, `content`
or a tool call unless the text tokens spelled it; well-formed output parsed exactly; a cut yields
exactly the messages whose header was complete, with their text so far; an intact final message is
never lost; another role's turn and everything after it never shows; tool names only from the request.

Example counts are bounded (CI on 2 cores; the whole module runs in well under 90 s);
HARMONY_PROPERTY_SCALE=N multiplies them for a longer local hunt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from openai_harmony import Message, Role
from parser_harness import ENC, OURS, TOK, examples

from vllm_gptoss.harmony.parser import parse_completion
from gptoss_dev.stock_compare import Outcome, chat_request, run_parse, run_stream, tools_for


def _id(name: str) -> int:
    (t,) = ENC.encode(name, allowed_special="all")
    return t


START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = (
    _id(n)
    for n in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
)
CONTROL_IDS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)
CONTROL_NAMES = tuple(ENC.decode([t]) for t in CONTROL_IDS)
ASSISTANT_PREFIX = [START, *ENC.encode("assistant")]
TOOL_NAMES = ("get_weather", "lookup", "to_json", "x")



def profile(n: int):
    return examples(n, HealthCheck.too_slow, HealthCheck.data_too_large)


def token_bytes(t: int) -> bytes:
    return bytes(ENC._inner.decode_bytes([t]))  # oss-harmony's own bytes of a token


# --- generated outputs -------------------------------------------------------------------------

# Message text never contains "<", "|" or ">", so text tokens cannot spell a control-token name:
# any such name in a field came from the markup. Leading/trailing spaces are kept out because the
# oracle's renderer may trim them.
_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs", "S"), exclude_characters="<|>"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s and s != "")


@dataclass
class Rendered:
    ids: list[int]
    # Per message: (channel, recipient, text, index of its <|message|>, index of its end token).
    spans: list[tuple[str, str | None, str, int, int]]
    final: tuple[int, int] | None  # [first, last] token index of the final message, header included


@st.composite
def turns(draw):
    """A well-formed assistant turn: analysis / preamble messages, then a final answer, a function
    call (recipient after the channel, or in the role as the HF chat template writes it) or a
    built-in tool call."""
    parts: list[tuple[list[int], Message | None]] = []
    for _ in range(draw(st.integers(0, 3))):
        channel = draw(st.sampled_from(["analysis", "commentary"]))
        m = Message.from_role_and_content(Role.ASSISTANT, draw(_text)).with_channel(channel)
        parts.append((ENC.render(m), m))
    end = draw(st.sampled_from(["final", "final", "call", "call_in_role", "builtin"]))
    if end == "final":
        m = Message.from_role_and_content(Role.ASSISTANT, draw(_text)).with_channel("final")
        if draw(st.booleans()):
            m = m.with_content_type("<|constrain|>json")
    elif end == "builtin":
        m = (
            Message.from_role_and_content(Role.ASSISTANT, json.dumps({"query": draw(_text)}))
            .with_channel("analysis")
            .with_recipient("browser.search")
        )
    else:
        args = json.dumps({draw(st.sampled_from(["city", "q"])): draw(_text)}, ensure_ascii=False)
        name = draw(st.sampled_from(TOOL_NAMES))
        m = (
            Message.from_role_and_content(Role.ASSISTANT, args)
            .with_channel(draw(st.sampled_from(["commentary", "commentary", "analysis"])))
            .with_recipient("functions." + name)
            .with_content_type("<|constrain|>json")
        )
    if end == "call_in_role":
        raw = f"<|start|>assistant to=functions.{name}<|channel|>{m.channel} json<|message|>{args}<|call|>"
        parts.append((ENC.encode(raw, allowed_special="all"), m))
    else:
        parts.append((ENC.render(m), m))
    return render(parts)


def render(parts) -> Rendered:
    ids: list[int] = []
    spans = []
    final = None
    for k, (toks, m) in enumerate(parts):
        toks = list(toks)
        if k == 0:  # the prompt ends in <|start|>assistant: the output begins after it
            assert toks[: len(ASSISTANT_PREFIX)] == ASSISTANT_PREFIX
            toks = toks[len(ASSISTANT_PREFIX) :]
        if k == len(parts) - 1 and toks[-1] == END:
            toks[-1] = RETURN  # a final answer ends the turn with <|return|>
        base = len(ids)
        ids.extend(toks)
        msg_at = base + toks.index(MESSAGE)
        spans.append((m.channel, m.recipient, m.content[0].text, msg_at, base + len(toks) - 1))
        if m.channel == "final":
            final = (base, base + len(toks) - 1)
    return Rendered(ids, spans, final)


def oracle(ids: list[int]) -> list[tuple[str, str | None, str]]:
    msgs = ENC.parse_messages_from_completion_tokens(ids, Role.ASSISTANT)
    # oss-harmony reads `<|channel|>final <|constrain|>json<|message|>` (the header vLLM's own
    # structured-output grammar writes) as recipient "<|constrain|>json"; its renderer wrote it from
    # content_type="<|constrain|>json" and no recipient, which is what it is.
    return [
        (m.channel, None if m.recipient == "<|constrain|>json" else m.recipient, m.content[0].text)
        for m in msgs
    ]


def client_view(messages, offered: tuple[str, ...] | None) -> Outcome:
    """What a client must see for these messages (vLLM's routing: analysis -> reasoning, final and
    commentary preamble -> content, offered functions.* -> tool calls; joined with "\\n")."""
    reasoning, content, calls = [], [], []
    for channel, recipient, text in messages:
        if recipient is None:
            (reasoning if channel == "analysis" else content).append(text)
        elif recipient.startswith("functions.") and recipient[10:] in (offered or ()):
            calls.append((recipient[10:], text))
    return Outcome(
        "\n".join(t for t in reasoning if t) or None,
        "\n".join(t for t in content if t) or None,
        tuple(calls),
    )


def request_for(offered: tuple[str, ...] | None):
    return chat_request(False, tools=tools_for(offered)) if offered else chat_request(False)


def chunks_of(sizes: list[int], n: int) -> list[int]:
    out, pos = [], 0
    for s in sizes:
        if pos >= n:
            break
        out.append(min(s, n - pos))
        pos += out[-1]
    if pos < n:
        out.append(n - pos)
    return out or [0]


def serve(ids: list[int], offered, sizes=None) -> Outcome:
    """Non-streamed, asserted equal to streamed one token at a time and in `sizes` chunks."""
    req = request_for(offered)
    full = run_parse(OURS, ids, req, TOK)
    assert full.error is None, full.error
    assert run_stream(OURS, ids, req, TOK) == full
    if sizes is not None:
        assert run_stream(OURS, ids, req, TOK, chunks=chunks_of(sizes, len(ids))) == full
    return full


def assert_only_model_text(out: Outcome, ids: list[int], offered) -> None:
    spelled = ENC.decode([t for t in ids if not ENC.is_special_token(t)])
    fields = [out.reasoning or "", out.content or "", *(n + a for n, a in out.tool_calls)]
    for f in fields:
        for name in CONTROL_NAMES:
            assert name not in f or name in spelled, (name, f)
    for name, _ in out.tool_calls:
        assert name in (offered or ()), name


_offered = st.one_of(st.none(), st.sets(st.sampled_from(TOOL_NAMES)).map(lambda s: tuple(sorted(s)) or None))
_sizes = st.lists(st.integers(1, 9), max_size=40)


# --- well-formed: parsed exactly -----------------------------------------------------------------


@profile(150)
@given(turn=turns(), offered=_offered, sizes=_sizes)
def test_well_formed_output_parsed_exactly(turn: Rendered, offered, sizes):
    want = oracle(turn.ids)
    assert want == [(c, r, t) for c, r, t, _, _ in turn.spans]  # the generator says what it made
    out = serve(turn.ids, offered, sizes)
    assert out == client_view(want, offered)
    assert_only_model_text(out, turn.ids, offered)
    msgs, kinds = parse_completion(turn.ids, offered or ())
    kept = [m for m in want if not (m[1] or "").startswith("functions.") or m[1][10:] in (offered or ())]
    assert [(m.channel, m.recipient, m.text) for m in msgs] == kept
    dropped = len(want) - len(kept)
    on_analysis = sum(1 for c, r, _ in want if c == "analysis" and (r or "").startswith("functions."))
    assert sorted(kinds) == sorted(["tool_not_offered"] * dropped + ["tool_on_analysis"] * on_analysis)


# --- cut by max_tokens at every position -------------------------------------------------------


def cut_view(turn: Rendered, k: int) -> list[tuple[str, str | None, str]]:
    """The messages of ids[:k]: those whose header was complete, with their text so far."""
    out = []
    for channel, recipient, text, msg_at, end_at in turn.spans:
        if k <= msg_at:
            break
        if k > end_at:
            out.append((channel, recipient, text))
        else:
            raw = b"".join(token_bytes(t) for t in turn.ids[msg_at + 1 : k])
            out.append((channel, recipient, raw.decode("utf-8", errors="replace")))
    return out


@profile(25)
@given(turn=turns())
def test_cut_at_every_position(turn: Rendered):
    offered = TOOL_NAMES
    for k in range(len(turn.ids) + 1):
        ids = turn.ids[:k]
        out = serve(ids, offered)
        want = cut_view(turn, k)
        assert out == client_view(want, offered), (k, ENC.decode(ids))
        assert_only_model_text(out, ids, offered)
        msgs, kinds = parse_completion(ids, offered)
        assert [(m.channel, m.recipient, m.text) for m in msgs] == want, k
        assert set(kinds) <= {"truncated_header", "tool_on_analysis"}, (k, kinds)
        # Inside a header: some of its tokens (from the one after the previous end token) but not
        # yet its <|message|>.
        starts = [0] + [s[4] + 1 for s in turn.spans[:-1]]
        in_header = any(h < k <= s[3] for h, s in zip(starts, turn.spans))
        assert ("truncated_header" in kinds) == in_header, (k, kinds)


# --- single mutations --------------------------------------------------------------------------

_JUNK = ["??", " x", "json", " to=", "=", "final", " commentary", "..", "<|", "|>", " to=functions.lookup"]
_FOREIGN = [
    "<|start|>user<|message|>Next question?<|end|>",
    "<|start|>user<|message|>And tomorrow?<|end|><|start|>assistant<|channel|>final<|message|>Rain.<|return|>",
    "<|start|>system<|message|>New rules.<|end|>",
    '<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>{"temp": 21}<|end|>',
    "<|start|>user",
]


@st.composite
def mutated(draw):
    turn: Rendered = draw(turns())
    ids = list(turn.ids)
    controls = [i for i, t in enumerate(ids) if t in CONTROL_IDS]
    kind = draw(st.sampled_from(["drop", "duplicate", "swap", "junk", "no_message", "after_stop", "foreign"]))
    at = None  # index of the token the mutation touches
    foreign_at = None
    if kind in ("drop", "duplicate", "swap"):
        at = draw(st.sampled_from(controls))
        if kind == "drop":
            del ids[at]
        elif kind == "duplicate":
            ids.insert(at, ids[at])
        else:
            ids[at] = draw(st.sampled_from([t for t in CONTROL_IDS if t != ids[at]]))
    elif kind == "no_message":
        at = draw(st.sampled_from([s[3] for s in turn.spans]))
        del ids[at]
    elif kind == "junk":
        at = draw(st.sampled_from([s[3] for s in turn.spans]))  # inside that header, before <|message|>
        ids[at:at] = ENC.encode(draw(st.sampled_from(_JUNK)), disallowed_special=())
    elif kind == "after_stop":
        ids += ENC.encode(draw(_text))
    else:
        ends = [i + 1 for i, t in enumerate(ids) if t == END]
        if not ends:
            ids.append(END)
            ends = [len(ids)]
        foreign_at = draw(st.sampled_from(ends))
        ids[foreign_at:foreign_at] = ENC.encode(draw(st.sampled_from(_FOREIGN)), allowed_special="all")
    return turn, kind, at, foreign_at, ids


@profile(250)
@given(case=mutated(), offered=_offered, sizes=_sizes)
def test_single_mutation(case, offered, sizes):
    turn, kind, at, foreign_at, ids = case
    out = serve(ids, offered, sizes)
    assert_only_model_text(out, ids, offered)
    if foreign_at is not None:
        # Another role spoke: the reply is what came before, exactly.
        assert out == serve(ids[:foreign_at], offered)
        assert "foreign_turn" in parse_completion(ids, offered or ())[1]
    elif turn.final is not None and (at is None or not turn.final[0] <= at <= turn.final[1]):
        # The final message's tokens are untouched: its text is in the answer.
        final_text = next(t for c, _, t, _, _ in turn.spans if c == "final")
        assert out.content is not None and final_text in out.content, (kind, ENC.decode(ids))


# --- random soup --------------------------------------------------------------------------------

_WORD_IDS = sorted({t for w in ["final", "analysis", "commentary", " to", "=", "functions", ".", "get",
                                 "_weather", "user", "assistant", " json", "Hello", " world", "{", "}",
                                 "\"city\"", ":", " the", "<", "|", ">", "json", " "]
                    for t in ENC.encode(w)})
_soup = st.lists(
    st.one_of(
        st.sampled_from(CONTROL_IDS),
        st.sampled_from(_WORD_IDS),
        st.integers(0, 20000),  # any text token
        st.integers(199990, 200030),  # the special and reserved range of o200k_harmony
    ),
    max_size=60,
)


@profile(300)
@given(ids=_soup, offered=_offered, sizes=_sizes)
def test_random_soup(ids, offered, sizes):
    out = serve(ids, offered, sizes)
    assert_only_model_text(out, ids, offered)
