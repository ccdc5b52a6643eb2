"""A token-level, streaming harmony parser that never raises.

It reads what a gpt-oss model emits after the prompt's ``<|start|>assistant`` one token id at a
time and reports, per token, the text that became visible on which channel for which recipient,
plus every message as it completes. It knows nothing of vLLM; `hooks.py` adapts it.

Grammar (``docs/format.md`` of github.com/openai/harmony): ``<|start|>ROLE[ to=R]<|channel|>CHANNEL[ to=R][ [<|constrain|>]TYPE]
<|message|>TEXT<|end|>|<|call|>|<|return|>``. The recipient may sit after the role or after the
channel. Real models break it (the rows of dev/gptoss_dev/malformations.py, each from a public report); each repair below is counted under a
kind name (`RECOVERY_KINDS`) through the ``on_recovery`` callback:

    doubled_start        <|start|><|start|>            the second one is dropped
    return_after_end     <|end|><|return|>             the stop token after a closed message is dropped
    missing_message      header ends without <|message|>   the text after the header is the content
    bare_final           <|message|> with no channel   the message is a final answer
    missing_channel      recipient but no channel      a tool call on commentary
    channel_junk         <|channel|>final?? / ??       the known channel prefix wins, else final
    header_junk          junk between role and channel dropped
    tool_on_analysis     to=functions.X on analysis    still a tool call (the recipient decides)
    tool_name_glued_json to=functions.Xjson            X (when X is an offered tool)
    text_after_stop      text after <|end|> with no header   that text is a final answer
    missing_start        <|channel|> after <|end|>     an implicit <|start|>assistant
    missing_end          a new header inside content   the open message is closed first
    stray_token          a special token where none fits   dropped
    spelled_special      "<|message|>" spelled in text tokens  read as the token
    truncated_header     output ends inside a header (max_tokens)  the fragment is dropped
    foreign_turn         <|start|>user / a tool result after the reply   it and all after dropped
    tool_not_offered     to=functions.X, X not offered by the request    the call is dropped

Headers are read at the token level (the control tokens split them; only the text between is
matched), so a control-token name never reaches a field unless text tokens spelled it, and a header
that is still only a prefix of a valid one when output stops holds no message text. Nothing is lost
silently: where no rule applies the text becomes final content, and every drop is counted. Special-
token ids are looked up by name in the encoding, never hard-coded.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import regex  # partial matching: is a header cut off still only a prefix of a header?

CHANNELS = ("analysis", "commentary", "final")

RECOVERY_KINDS = (
    "doubled_start",
    "return_after_end",
    "missing_message",
    "bare_final",
    "missing_channel",
    "channel_junk",
    "header_junk",
    "tool_on_analysis",
    "tool_name_glued_json",
    "text_after_stop",
    "missing_start",
    "missing_end",
    "stray_token",
    "spelled_special",
    "truncated_header",
    "foreign_turn",
    "tool_not_offered",
)

FUNCTIONS_PREFIX = "functions."


class SpecialTokens(NamedTuple):
    start: int
    end: int
    message: int
    channel: int
    constrain: int
    return_: int
    call: int
    endoftext: int | None

    @classmethod
    def from_lookup(cls, lookup: Callable[[str], int | None]) -> SpecialTokens:
        """`lookup(name)` gives the id of a special token such as ``<|start|>`` (or None)."""
        ids = {}
        for attr, name in _SPECIAL_NAMES.items():
            token_id = lookup(name)
            if token_id is None and attr != "endoftext":
                raise ValueError(f"tokenizer has no harmony special token {name!r}")
            ids[attr] = token_id
        return cls(**ids)

    @classmethod
    def from_encoding(cls, encoding) -> SpecialTokens:
        """From an `openai_harmony.HarmonyEncoding`."""

        def lookup(name: str) -> int | None:
            ids = encoding.encode(name, allowed_special="all")
            return ids[0] if len(ids) == 1 else None

        return cls.from_lookup(lookup)


_SPECIAL_NAMES = {
    "start": "<|start|>",
    "end": "<|end|>",
    "message": "<|message|>",
    "channel": "<|channel|>",
    "constrain": "<|constrain|>",
    "return_": "<|return|>",
    "call": "<|call|>",
    "endoftext": "<|endoftext|>",
}


@dataclass
class ParsedMessage:
    """One assistant message after repair; `channel` is always one of CHANNELS."""

    channel: str
    recipient: str | None
    content_type: str | None
    text: str


@dataclass
class Event:
    """What one token (or the end of output) made visible.

    `delta` is new text of the open message on `channel` for `recipient`; `message` is set on the
    event that completes a message (its `delta` is then empty). `started` marks the first event
    of a message (a tool call's name is known from then on, before any argument text).
    """

    channel: str
    recipient: str | None
    delta: str = ""
    message: ParsedMessage | None = None
    started: bool = False


# --- header parsing --------------------------------------------------------------------------
#
# A header is read at the token level: the control tokens <|channel|> and <|constrain|> split it
# into segments (role, channel, constrain), and only the text between them is matched. Control
# tokens are never turned back into text, so none can reach a field; a header that is still only a
# prefix of a valid header when it ends (max_tokens, or an end token) holds no message text.

_R = r"[\w\-]+(?:\.[\w\-]*)*"  # a recipient: functions.get_weather, browser.search, python
_T = r"[\w.\-/+]+"  # a content type: json, application/json
_ROLE_RE = re.compile(
    r"\s*(assistant|user|system|developer|tool|python|(?:functions|browser|container)\.[\w\-.]*)(?![\w])"
)
_FOREIGN_ROLE_TO_ASSISTANT_RE = re.compile(r"\s*\S+\s+to=assistant(?![\w.])")
_RECIPIENT_RE = re.compile(rf"\s*to=({_R})")
_CHANNEL_RE = re.compile(r"\s*(analysis|commentary|final)")
_TYPE_TAIL_RE = re.compile(rf"\s+({_T})\s*$")  # "commentary json" in a complete header
_TYPE_JSON_RE = re.compile(r"\s+(json)(?![\w])")  # a header that never got <|message|>
_CONSTRAIN_TYPE_RE = re.compile(rf"\s*({_T})")
_CONSTRAIN_TYPE_LOOSE_RE = re.compile(r"\s*(json|[\w.\-]+/[\w.\-+]+)(?![\w])")
# What a segment of a header still being written may look like (matched as a possible prefix).
_VIABLE = {
    "role": regex.compile(rf"\s*(?:assistant)?(?:\s*to={_R}(?:\s+json)?)?\s*"),
    "role_explicit": regex.compile(rf"\s*(?:{_R})?(?:\s*to={_R}(?:\s+json)?)?\s*"),
    "channel": regex.compile(rf"\s*(?:analysis|commentary|final)(?:\s*to={_R})?(?:\s+json)?\s*"),
    "constrain": regex.compile(rf"\s*(?:{_T})?\s*"),
}
_SEGMENT_ORDER = {"role": 0, "channel": 1, "constrain": 2}
# Control-token names spelled by text tokens inside a header (a string-matching grammar lets a
# model write them): read as the tokens.
_SPELLED_RE = re.compile(r"<\|(channel|constrain|message)\|>")
_CHANNEL, _CONSTRAIN, _MESSAGE = "channel", "constrain", "message"


@dataclass
class _Header:
    channel: str
    recipient: str | None
    content_type: str | None
    kinds: list[str]
    rest: str = ""  # text after the header (only for a header that never got <|message|>)
    foreign: bool = False  # another role's message (user, system, a tool result)


Items = list[tuple[str, str]]  # ("text", text) or (control name, "")


def _segments(items: Items) -> list[list[str]]:
    segs = [["role", ""]]
    for tag, text in items:
        if tag == "text":
            segs[-1][1] += text
        else:
            segs.append([tag, ""])
    return segs


def header_is_prefix(items: Items, *, explicit: bool) -> bool:
    """Whether these header items are (a prefix of) a well-formed header: nothing of it is text."""
    segs = _segments(items)
    order = -1
    for i, (tag, text) in enumerate(segs):
        if _SEGMENT_ORDER.get(tag, 9) <= order:
            return False  # a repeated or out-of-order control token
        order = _SEGMENT_ORDER.get(tag, 9)
        pat = _VIABLE["role_explicit" if tag == "role" and explicit else tag]
        if pat.fullmatch(text, partial=i == len(segs) - 1) is None:
            return False
    return True


def _fix_glued_json(recipient: str, tool_names: frozenset[str] | None) -> str | None:
    """`functions.get_weatherjson` -> `functions.get_weather`, only where the request offered
    `get_weather` and not `get_weatherjson` (a real tool may be called `to_json`)."""
    if tool_names is None or not recipient.startswith(FUNCTIONS_PREFIX):
        return None
    name = recipient[len(FUNCTIONS_PREFIX) :]
    base = name[: -len("json")]
    if not name.endswith("json") or not base or name in tool_names or base not in tool_names:
        return None
    return FUNCTIONS_PREFIX + base


def parse_header(
    items: Items,
    tool_names: frozenset[str] | None,
    *,
    terminated: bool = True,
    explicit: bool = False,
) -> _Header:
    """Parse header items (text runs between control tokens) into channel/recipient/content type.

    `terminated=False` is for a header that never got its ``<|message|>``: whatever follows the
    recognised parts is returned as `rest` (the message text). `explicit`: the header began with a
    ``<|start|>`` in the output, so its first word is a role.
    """
    kinds: list[str] = []
    segs = _segments(items)
    role_text = segs[0][1]
    pos = 0
    m = _ROLE_RE.match(role_text)
    if m and (explicit or len(segs) > 1 or terminated):
        if m.group(1) != "assistant":
            return _Header("final", None, None, kinds, foreign=True)
        pos = m.end()
    if explicit and _FOREIGN_ROLE_TO_ASSISTANT_RE.match(role_text):
        return _Header("final", None, None, kinds, foreign=True)  # a tool result: NAME to=assistant
    recipient = None
    m = _RECIPIENT_RE.match(role_text, pos)
    if m:
        recipient, pos = m.group(1), m.end()
    channel = content_type = None
    leftovers: list[tuple[str, str]] = [("role", role_text[pos:])]  # (segment kind, text)
    seen: set[str] = {"role"}
    for tag, text in segs[1:]:
        if tag in seen:
            kinds.append("stray_token")  # a repeated <|channel|> / <|constrain|>
            leftovers.append((tag, text))
            continue
        seen.add(tag)
        if tag == _CHANNEL:
            m = _CHANNEL_RE.match(text)
            if m:
                channel, text = m.group(1), text[m.end() :]
            m = _RECIPIENT_RE.match(text)
            if m:
                recipient, text = m.group(1), text[m.end() :]  # after the channel wins
        else:
            m = (_CONSTRAIN_TYPE_RE if terminated else _CONSTRAIN_TYPE_LOOSE_RE).match(text)
            if m and content_type is None:
                content_type, text = m.group(1), text[m.end() :]
        leftovers.append((tag, text))
    # A content type written after a space ("commentary json"; "to=functions.x json" in the role).
    idx = next((i for i, (tag, _) in enumerate(leftovers) if tag == _CHANNEL), None)
    if idx is None and recipient is not None:
        idx = 0
    if content_type is None and idx is not None:
        tag, text = leftovers[idx]
        if terminated:
            ct = _TYPE_TAIL_RE.match(text) if idx == 0 or channel is not None else None
        else:
            ct = _TYPE_JSON_RE.match(text) if recipient is not None else None
        if ct:
            content_type = ct.group(1)
            leftovers[idx] = (tag, text[ct.end() :])

    rest = ""
    if terminated:
        for tag, text in leftovers:
            if text.strip():
                junk = "header_junk" if tag == "role" else "channel_junk"
                if junk not in kinds:
                    kinds.append(junk)
        if _CHANNEL in seen and channel is None and "channel_junk" not in kinds:
            kinds.append("channel_junk")
    else:
        rest = "".join(text for _, text in leftovers).lstrip()
    if channel is None:
        channel = "commentary" if recipient is not None else "final"
    header = _Header(channel, recipient, content_type, kinds, rest=rest)

    if recipient is not None:
        fixed = _fix_glued_json(recipient, tool_names) if content_type is None else None
        if fixed is not None:
            header.recipient = fixed
            header.content_type = "json"
            kinds.append("tool_name_glued_json")
        if header.recipient.startswith(FUNCTIONS_PREFIX) and header.channel == "analysis":
            kinds.append("tool_on_analysis")
    if _CHANNEL not in seen and terminated:
        kinds.append("missing_channel" if recipient is not None else "bare_final")
    return header


# --- the streaming parser --------------------------------------------------------------------

_HEADER, _CONTENT, _BETWEEN, _DONE = "header", "content", "between", "done"


@dataclass
class _Open:
    """The message being read (`drop`: read to its end, shown to no one)."""

    channel: str
    recipient: str | None
    content_type: str | None
    decoder: codecs.IncrementalDecoder
    raw: bytearray = field(default_factory=bytearray)
    text: list[str] = field(default_factory=list)
    drop: bool = False


class HarmonyStreamParser:
    """Feed token ids with `process`; call `finish` at the end of output. Never raises.

    `token_bytes(id)` gives the bytes of a non-special token; `is_special(id)` says whether an id
    is a special token (reserved ones included), which are never text. `tool_names` are the offered
    function names (without ``functions.``): a call to any other name is dropped
    (``tool_not_offered``), and the glued-``json`` repair only yields an offered name; None (the
    default, for use outside a request) means "not known": every name is kept, none repaired.
    `on_recovery(kind)` is called once per repair.
    """

    def __init__(
        self,
        specials: SpecialTokens,
        token_bytes: Callable[[int], bytes],
        *,
        tool_names: Iterable[str] | None = None,
        on_recovery: Callable[[str], None] | None = None,
        is_special: Callable[[int], bool] | None = None,
    ):
        self.specials = specials
        self._is_special = is_special or (lambda t: False)
        self._token_bytes = token_bytes
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._on_recovery = on_recovery
        self._end_ids = {specials.end, specials.return_, specials.call}
        if specials.endoftext is not None:
            self._end_ids.add(specials.endoftext)
        self._header_ids = {specials.channel: _CHANNEL, specials.constrain: _CONSTRAIN}
        # The prompt ends in `<|start|>assistant`: output begins inside that header.
        self._state = _HEADER
        self._header: list[str | bytes] = []  # text-token bytes and control names, in order
        self._header_after_message = False  # began after a closed message with no <|start|>
        self._header_explicit = False  # began with a <|start|> in the output: a role comes first
        self._open: _Open | None = None
        self.messages: list[ParsedMessage] = []
        self.recoveries: list[str] = []
        self.reasoning_tokens = 0
        self.finished = False

    # public ------------------------------------------------------------------------------
    def process(self, token_id: int) -> list[Event]:
        try:
            return self._process(int(token_id))
        except Exception:  # noqa: BLE001 - the parser must never take a request down
            self._count("stray_token")
            return []

    def process_many(self, token_ids: Iterable[int]) -> list[Event]:
        events: list[Event] = []
        for t in token_ids:
            events.extend(self.process(t))
        return events

    def finish(self) -> list[Event]:
        """End of output (stop token seen, max_tokens hit or EOS). Idempotent."""
        if self.finished:
            return []
        self.finished = True
        try:
            if self._state == _CONTENT:
                return self._close_message()
            if self._state == _HEADER and (self._header or self._header_explicit):
                return self._resolve_unterminated(at_eos=True)
        except Exception:  # noqa: BLE001
            self._count("stray_token")
        return []

    @property
    def current_channel(self) -> str | None:
        return self._open.channel if self._open is not None else None

    @property
    def current_recipient(self) -> str | None:
        return self._open.recipient if self._open is not None else None

    # internals -----------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.recoveries.append(kind)
        if self._on_recovery is not None:
            try:
                self._on_recovery(kind)
            except Exception:  # noqa: BLE001 - metrics must not break parsing
                pass

    def _process(self, t: int) -> list[Event]:
        s = self.specials
        if self._state == _DONE:
            return []  # the assistant's turn is over (another role spoke): nothing more is reply
        if self.finished:
            # Text after the end of output was declared: reopen (nothing is dropped).
            self.finished = False
        if self._state == _CONTENT:
            if t in self._end_ids:
                return self._close_message()
            if t == s.start:
                self._count("missing_end")
                events = self._close_message()
                self._begin_header(after_message=False, explicit=True)
                return events
            if t == s.channel:
                self._count("missing_end")
                events = self._close_message()
                self._begin_header(after_message=True, explicit=False)
                self._header.append(_CHANNEL)
                return events
            if t in (s.message, s.constrain) or self._is_other_special(t):
                self._count("stray_token")
                return []
            return self._content_text(t)

        if self._state == _HEADER:
            if t == s.message:
                return self._complete_header()
            if t in self._header_ids:
                self._header.append(self._header_ids[t])
                return []
            if t == s.start:
                if not self._header:
                    self._count("doubled_start")
                    self._header_explicit = True
                    return []
                events = self._resolve_unterminated(at_eos=False)
                if self._state != _DONE:
                    self._begin_header(after_message=False, explicit=True)
                return events
            if t in self._end_ids:
                if not self._header:
                    # `<|start|>` then straight an end token: an empty message.
                    self._count("missing_message")
                    self._state = _BETWEEN
                    return []
                return self._resolve_unterminated(at_eos=False)
            if self._is_other_special(t):
                self._count("stray_token")
                return []
            self._header.append(self._token_bytes(t))
            return []

        # _BETWEEN: after a closed message
        if t == s.start:
            self._begin_header(after_message=False, explicit=True)
            return []
        if t in self._end_ids:
            if t != s.endoftext:
                self._count("return_after_end")
            return []
        if t == s.channel:
            self._count("missing_start")
            self._begin_header(after_message=True, explicit=False)
            self._header.append(_CHANNEL)
            return []
        if t == s.message:
            self._count("missing_start")
            self._begin_header(after_message=True, explicit=False)
            return self._complete_header()
        if t == s.constrain or self._is_other_special(t):
            self._count("stray_token")
            return []
        self._begin_header(after_message=True, explicit=False)
        self._header.append(self._token_bytes(t))
        return []

    def _is_other_special(self, t: int) -> bool:
        s = self.specials
        if t in (s.start, s.message, s.channel, s.constrain) or t in self._end_ids:
            return False
        return self._is_special(t)

    def _begin_header(self, *, after_message: bool, explicit: bool) -> None:
        self._state = _HEADER
        self._header = []
        self._header_after_message = after_message
        self._header_explicit = explicit

    def _header_items(self, *, until_spelled_message: bool) -> tuple[Items, str | None]:
        """The header as (tag, text) items; control names spelled in its text read as the tokens.

        With `until_spelled_message`, a spelled ``<|message|>`` ends the header: the raw text after
        it is returned as the second value (the message text), else None.
        """
        runs: Items = []
        buf = bytearray()
        for item in self._header:
            if isinstance(item, bytes):
                buf += item
                continue
            if buf:
                runs.append(("text", buf.decode("utf-8", errors="replace")))
                buf = bytearray()
            runs.append((item, ""))
        if buf:
            runs.append(("text", buf.decode("utf-8", errors="replace")))
        items: Items = []
        for i, (tag, text) in enumerate(runs):
            if tag != "text":
                items.append((tag, text))
                continue
            pos = 0
            for m in _SPELLED_RE.finditer(text):
                if m.group(1) == _MESSAGE and not until_spelled_message:
                    continue  # left as text: junk in a header that did get its <|message|>
                if m.start() > pos:
                    items.append(("text", text[pos : m.start()]))
                pos = m.end()
                if m.group(1) == _MESSAGE:
                    after = text[pos:] + "".join(t for tag2, t in runs[i + 1 :] if tag2 == "text")
                    return items, after
                items.append((m.group(1), ""))
            if pos < len(text):
                items.append(("text", text[pos:]))
        return items, None

    def _open_message(self, header: _Header) -> list[Event]:
        drop = False
        recipient = header.recipient
        if (
            recipient is not None
            and recipient.startswith(FUNCTIONS_PREFIX)
            and self._tool_names is not None
            and recipient[len(FUNCTIONS_PREFIX) :] not in self._tool_names
        ):
            # Not a tool the request offered (or none were): no client could run it.
            self._count("tool_not_offered")
            drop = True
        self._open = _Open(
            header.channel,
            recipient,
            header.content_type,
            codecs.getincrementaldecoder("utf-8")("replace"),
            drop=drop,
        )
        self._state = _CONTENT
        return [] if drop else [Event(header.channel, recipient, "", started=True)]

    def _foreign_turn(self) -> list[Event]:
        """Another role's message (an invented user turn, a tool result): the reply ended before."""
        self._count("foreign_turn")
        self._header = []
        self._open = None
        self._state = _DONE
        return []

    def _complete_header(self) -> list[Event]:
        items, _ = self._header_items(until_spelled_message=False)
        header = parse_header(
            items, self._tool_names, terminated=True, explicit=self._header_explicit
        )
        self._header = []
        if header.foreign:
            return self._foreign_turn()
        for kind in header.kinds:
            self._count(kind)
        return self._open_message(header)

    def _resolve_unterminated(self, at_eos: bool) -> list[Event]:
        """A header that never got `<|message|>` (an end token, a new `<|start|>`, or the end of
        output came first): what follows its recognised parts is the message text, unless the
        header is only a prefix of a valid one (cut off while being written): then it is dropped."""
        items, spelled_rest = self._header_items(until_spelled_message=True)
        explicit = self._header_explicit
        self._header = []
        self._state = _BETWEEN
        if spelled_rest is not None:
            # `<|message|>` written as ordinary text tokens (a grammar that matches strings lets a
            # model spell special tokens): split there, as if the token had been sent.
            header = parse_header(items, self._tool_names, terminated=True, explicit=explicit)
            text, kind = spelled_rest, "spelled_special"
        else:
            header = parse_header(items, self._tool_names, terminated=False, explicit=explicit)
            text, kind = header.rest, "missing_message"
            if header_is_prefix(items, explicit=explicit):
                text = ""  # a header fragment (` to`, `<|channel|>comment`): no message text
        if header.foreign:
            return self._foreign_turn()
        if at_eos and not text.strip():
            self._count("truncated_header")  # max_tokens inside a header: what came before stands
            return []
        if kind == "missing_message" and self._header_after_message and header.recipient is None:
            kind = "text_after_stop"
        self._count(kind)
        for k in header.kinds:
            self._count(k)
        if not text:
            return []
        events = self._open_message(header)
        assert self._open is not None
        if not self._open.drop:
            self._open.text.append(text)
            self._open.raw += text.encode("utf-8")
            if header.channel == "analysis" and header.recipient is None:
                self.reasoning_tokens += 1
            events.append(Event(header.channel, header.recipient, text))
        events.extend(self._close_message())
        return events

    def _content_text(self, t: int) -> list[Event]:
        assert self._open is not None
        if self._open.drop:
            return []
        data = self._token_bytes(t)
        self._open.raw += data
        delta = self._open.decoder.decode(data)
        if self._open.channel == "analysis" and self._open.recipient is None:
            self.reasoning_tokens += 1
        if not delta:
            return []
        self._open.text.append(delta)
        return [Event(self._open.channel, self._open.recipient, delta)]

    def _close_message(self) -> list[Event]:
        opened = self._open
        self._state = _BETWEEN
        self._open = None
        if opened is None or opened.drop:
            return []
        events = []
        tail = opened.decoder.decode(b"", final=True)
        if tail:
            opened.text.append(tail)
            events.append(Event(opened.channel, opened.recipient, tail))
        msg = ParsedMessage(opened.channel, opened.recipient, opened.content_type, "".join(opened.text))
        self.messages.append(msg)
        events.append(Event(opened.channel, opened.recipient, "", message=msg))
        return events


# --- convenience over the harmony encoding ----------------------------------------------------


def encoding_token_bytes(encoding) -> Callable[[int], bytes]:
    """Bytes of one token id from an `openai_harmony.HarmonyEncoding` (cached)."""
    from ..vllm_compat import harmony_decode_bytes

    decode_bytes = harmony_decode_bytes(encoding)
    cache: dict[int, bytes] = {}

    def token_bytes(t: int) -> bytes:
        b = cache.get(t)
        if b is None:
            if decode_bytes is not None:
                b = bytes(decode_bytes([t]))
            else:  # public API only: lossy for tokens that split a UTF-8 character
                b = encoding.decode([t]).encode("utf-8")
            cache[t] = b
        return b

    return token_bytes


_DEFAULT: tuple | None = None


def default_encoding():
    """The o200k_harmony encoding bundled in oss-harmony (no network); loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        _DEFAULT = (enc, SpecialTokens.from_encoding(enc), encoding_token_bytes(enc))
    return _DEFAULT


def make_parser(
    tool_names: Iterable[str] | None = None,
    on_recovery: Callable[[str], None] | None = None,
) -> HarmonyStreamParser:
    _, specials, token_bytes = default_encoding()
    return HarmonyStreamParser(
        specials,
        token_bytes,
        tool_names=tool_names,
        on_recovery=on_recovery,
        is_special=_is_special_id,
    )


@functools.lru_cache(maxsize=4096)
def _is_special_id(t: int) -> bool:
    return bool(default_encoding()[0].is_special_token(t))


def parse_completion(
    token_ids: Iterable[int], tool_names: Iterable[str] | None = None
) -> tuple[list[ParsedMessage], list[str]]:
    """Whole-output convenience: the repaired messages and the recovery kinds seen."""
    p = make_parser(tool_names)
    p.process_many(token_ids)
    p.finish()
    return p.messages, p.recoveries
