"""A token-level, streaming harmony parser that never raises.

It reads what a gpt-oss model emits after the prompt's ``<|start|>assistant`` one token id at a
time and reports, per token, the text that became visible on which channel for which recipient,
plus every message as it completes. It knows nothing of vLLM; `serving.py` adapts it.

Grammar (harmony ``format.md``): ``<|start|>ROLE[ to=R]<|channel|>CHANNEL[ to=R][ [<|constrain|>]TYPE]
<|message|>TEXT<|end|>|<|call|>|<|return|>``. The recipient may sit after the role or after the
channel. Real models break it (user-pain.md sections 1-2); each repair below is counted under a
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

Nothing is lost silently: where no rule applies the text becomes final content. Special-token ids
are looked up by name in the encoding, never hard-coded.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

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

_CHANNEL_RE = re.compile(r"\s*(analysis|commentary|final)")
_RECIPIENT_RE = re.compile(r"\s*to=([^\s<]+)")
_CONTENT_TYPE_RE = re.compile(r"(?:\s*<\|constrain\|>|\s+)([\w.\-/]+)\s*$")
_CONSTRAIN = "<|constrain|>"
_CHANNEL = "<|channel|>"


@dataclass
class _Header:
    channel: str
    recipient: str | None
    content_type: str | None
    kinds: list[str]
    rest: str = ""  # text after the header (only for a header that never got <|message|>)


def _strip_role(role_part: str) -> str:
    stripped = role_part.lstrip()
    return stripped[len("assistant") :] if stripped.startswith("assistant") else role_part


def _fix_glued_json(recipient: str, tool_names: frozenset[str] | None) -> str | None:
    """`functions.get_weatherjson` -> `functions.get_weather` where that is what was meant."""
    if not recipient.startswith(FUNCTIONS_PREFIX) or not recipient.endswith("json"):
        return None
    name = recipient[len(FUNCTIONS_PREFIX) :]
    base = name[: -len("json")]
    if not base:
        return None
    if tool_names is not None:
        if name in tool_names or base not in tool_names:
            return None
    return FUNCTIONS_PREFIX + base


def parse_header(
    text: str, tool_names: frozenset[str] | None, *, terminated: bool = True
) -> _Header:
    """Parse header text (special tokens written by name) into channel/recipient/content type.

    `terminated=False` is for a header that never got its ``<|message|>``: whatever follows the
    recognised parts is returned as `rest` (the message text).
    """
    kinds: list[str] = []
    role_part, has_channel, chan_part = text.partition(_CHANNEL)
    role_rest = _strip_role(role_part)
    recipient = None
    m = _RECIPIENT_RE.match(role_rest)
    if m:
        recipient = m.group(1)
        role_rest = role_rest[m.end() :]

    if not has_channel:
        if terminated:
            content_type = None
            if recipient is not None:
                ct = _CONTENT_TYPE_RE.match(role_rest)
                if ct:
                    content_type, role_rest = ct.group(1), ""
            if role_rest.strip():
                kinds.append("header_junk")
        else:
            content_type = None
            if recipient is not None:
                ct = re.match(r"\s*<\|constrain\|>(\w+)|\s+(json)\b", role_rest)
                if ct:
                    content_type = ct.group(1) or ct.group(2)
                    role_rest = role_rest[ct.end() :]
        channel = "commentary" if recipient is not None else "final"
        header = _Header(channel, recipient, content_type, kinds, rest=role_rest.lstrip())
    else:
        if role_rest.strip():
            kinds.append("header_junk")
        m = _CHANNEL_RE.match(chan_part)
        channel = m.group(1) if m else None
        rest = chan_part[m.end() :] if m else chan_part
        m = _RECIPIENT_RE.match(rest)
        if m:
            recipient = m.group(1)  # after the channel wins over after the role
            rest = rest[m.end() :]
        content_type = None
        if terminated:
            if rest.strip():
                ct = _CONTENT_TYPE_RE.match(rest)
                if ct and ct.start() == 0 and channel is not None:
                    content_type = ct.group(1)
                else:
                    kinds.append("channel_junk")
            if channel is None and "channel_junk" not in kinds:
                kinds.append("channel_junk")
        else:
            ct = re.match(r"\s*<\|constrain\|>(\w+)", rest)
            if ct is None and recipient is not None:
                ct = re.match(r"\s+(json)\b", rest)
            if ct:
                content_type = ct.group(1)
                rest = rest[ct.end() :]
        if channel is None:
            channel = "commentary" if recipient is not None else "final"
        header = _Header(channel, recipient, content_type, kinds, rest=rest.lstrip())

    if recipient is not None:
        fixed = _fix_glued_json(recipient, tool_names) if content_type is None else None
        if fixed is not None:
            header.recipient = fixed
            header.content_type = "json"
            kinds.append("tool_name_glued_json")
        if header.recipient.startswith(FUNCTIONS_PREFIX) and header.channel == "analysis":
            kinds.append("tool_on_analysis")
    if not has_channel and terminated:
        kinds.append("missing_channel" if recipient is not None else "bare_final")
    return header


# --- the streaming parser --------------------------------------------------------------------

_HEADER, _CONTENT, _BETWEEN = "header", "content", "between"


@dataclass
class _Open:
    """The message being read."""

    channel: str
    recipient: str | None
    content_type: str | None
    decoder: codecs.IncrementalDecoder
    raw: bytearray = field(default_factory=bytearray)
    text: list[str] = field(default_factory=list)


class HarmonyStreamParser:
    """Feed token ids with `process`; call `finish` at the end of output. Never raises.

    `token_bytes(id)` gives the bytes of a non-special token; `is_special(id)` says whether an id
    is a special token (reserved ones included), which are never text. `tool_names` (the offered function
    names, without ``functions.``) sharpens the glued-``json`` repair. `on_recovery(kind)` is called
    once per repair.
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
        self._header: list[str | bytes] = []
        self._header_implicit = False
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
            if self._state == _HEADER and self._header:
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
        if self.finished:
            # Text after the end of output was declared: reopen (nothing is dropped).
            self.finished = False
        if self._state == _CONTENT:
            if t in self._end_ids:
                return self._close_message()
            if t == s.start:
                self._count("missing_end")
                events = self._close_message()
                self._begin_header(implicit=False)
                return events
            if t == s.channel:
                self._count("missing_end")
                events = self._close_message()
                self._begin_header(implicit=True)
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
                    return []
                events = self._resolve_unterminated(at_eos=False)
                self._begin_header(implicit=False)
                return events
            if t in self._end_ids:
                if not self._header:
                    # `<|start|>` then straight an end token: an empty message.
                    self._count("missing_message")
                    self._state = _BETWEEN
                    return []
                events = self._resolve_unterminated(at_eos=False)
                return events
            if self._is_other_special(t):
                self._count("stray_token")
                return []
            self._header.append(self._token_bytes(t))
            return []

        # _BETWEEN: after a closed message
        if t == s.start:
            self._begin_header(implicit=False)
            return []
        if t in self._end_ids:
            if t != s.endoftext:
                self._count("return_after_end")
            return []
        if t == s.channel:
            self._count("missing_start")
            self._begin_header(implicit=True)
            self._header.append(_CHANNEL)
            return []
        if t == s.message:
            self._count("missing_start")
            self._begin_header(implicit=True)
            return self._complete_header()
        if t == s.constrain or self._is_other_special(t):
            self._count("stray_token")
            return []
        self._begin_header(implicit=True)
        self._header.append(self._token_bytes(t))
        return []

    def _is_other_special(self, t: int) -> bool:
        s = self.specials
        if t in (s.start, s.message, s.channel, s.constrain) or t in self._end_ids:
            return False
        return self._is_special(t)

    def _begin_header(self, implicit: bool) -> None:
        self._state = _HEADER
        self._header = []
        self._header_implicit = implicit

    def _header_text(self) -> str:
        parts: list[str] = []
        buf = bytearray()
        for item in self._header:
            if isinstance(item, bytes):
                buf += item
            else:
                parts.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                parts.append(item)
        parts.append(buf.decode("utf-8", errors="replace"))
        return "".join(parts)

    def _open_message(self, channel, recipient, content_type) -> Event:
        self._open = _Open(
            channel, recipient, content_type, codecs.getincrementaldecoder("utf-8")("replace")
        )
        self._state = _CONTENT
        return Event(channel, recipient, "", started=True)

    def _complete_header(self) -> list[Event]:
        header = parse_header(self._header_text(), self._tool_names, terminated=True)
        for kind in header.kinds:
            self._count(kind)
        self._header = []
        return [self._open_message(header.channel, header.recipient, header.content_type)]

    def _resolve_unterminated(self, at_eos: bool) -> list[Event]:
        """A header that never got `<|message|>`: recover its text as the message content."""
        raw = self._header_text()
        spelled = raw.find("<|message|>")
        if spelled >= 0:
            # `<|message|>` written as ordinary text tokens (a grammar that matches strings lets a
            # model spell special tokens): split there, as if the token had been sent.
            header = parse_header(raw[:spelled], self._tool_names, terminated=True)
            header.rest = raw[spelled + len("<|message|>") :]
            kind = "spelled_special"
        else:
            header = parse_header(raw, self._tool_names, terminated=False)
            kind = "missing_message"
        text = header.rest
        implicit = self._header_implicit
        self._header = []
        self._state = _BETWEEN
        if at_eos and not text:
            return []  # cut off inside a header (max_tokens): nothing to show, nothing broken
        if kind == "missing_message" and implicit and header.recipient is None:
            kind = "text_after_stop"
        self._count(kind)
        for k in header.kinds:
            self._count(k)
        if not text:
            return []
        events = [self._open_message(header.channel, header.recipient, header.content_type)]
        assert self._open is not None
        self._open.text.append(text)
        self._open.raw += text.encode("utf-8")
        if header.channel == "analysis" and header.recipient is None:
            self.reasoning_tokens += 1
        events.append(Event(header.channel, header.recipient, text))
        events.extend(self._close_message())
        return events

    def _content_text(self, t: int) -> list[Event]:
        assert self._open is not None
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
        if opened is None:
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
    inner = getattr(encoding, "_inner", None)
    decode_bytes = getattr(inner, "decode_bytes", None)
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
