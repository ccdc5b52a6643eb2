"""Raw harmony on request: the completion as harmony text, special tokens included.

Opt in per request through vLLM's extra-args field: ``"vllm_xargs": {"harmony_raw": true}``
(``1``/``"true"``/``"1"`` also work; ``false``/``0`` is the default). Then, beside the parsed
fields:

- chat completions, non-streamed: ``choices[i].message.harmony_raw``;
- chat completions, streamed: ``choices[i].delta.harmony_raw`` on the chunks (the pieces join
  to the non-streamed text);
- Responses, non-streamed: ``harmony_raw`` on the response object (the completion tokens of every
  generation turn, joined). Streamed Responses with the flag get a 400.

The text is oss-harmony's decoding of the completion token ids, e.g.
``<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...<|return|>``
(what follows the prompt's ``<|start|>assistant``). Hooked in by vllm_compat.py around vLLM 0.32's
``OpenAIServingChat.create_chat_completion`` / ``chat_completion_full_generator`` /
``chat_completion_stream_generator`` and ``OpenAIServingResponses.create_responses`` /
``responses_full_generator``; without the flag they run untouched.
"""

from __future__ import annotations

from typing import Any

FLAG = "harmony_raw"
PARAM = f"vllm_xargs.{FLAG}"
_TRUE = (True, 1, "1", "true", "True")
_FALSE = (False, 0, "0", "false", "False")


def requested(request: Any) -> bool:
    """Whether the request asks for raw harmony; ValueError naming the parameter if malformed."""
    xargs = getattr(request, "vllm_xargs", None) or {}
    if FLAG not in xargs:
        return False
    value = xargs[FLAG]
    if value in _TRUE and not isinstance(value, float):
        return True
    if value in _FALSE and not isinstance(value, float):
        return False
    raise ValueError(f"{PARAM}={value!r} is not a boolean; expected true or false.")


def decode(ids) -> str:
    from ..vllm_compat import harmony_encoding

    return harmony_encoding().decode(list(ids))


class StreamedText:
    """Streamed token ids -> text pieces that join exactly to the decoding of all ids.

    A token can end inside a UTF-8 character; such a tail (decoded as U+FFFD) is held back until
    the next token completes it.
    """

    def __init__(self):
        self.pending: list[int] = []

    def add(self, ids) -> None:
        self.pending.extend(ids)

    def take(self, final: bool = False) -> str:
        if not self.pending:
            return ""
        text = decode(self.pending)
        if not final and text.endswith("\ufffd"):
            keep = 1
            while keep < min(4, len(self.pending)) and decode(self.pending[:-keep]).endswith("\ufffd"):
                keep += 1
            head = self.pending[:-keep]
            if not head:
                return ""
            text, self.pending = decode(head), self.pending[-keep:]
            return text
        self.pending = []
        return text


def error_response(serving, exc: Exception):
    return serving.create_error_response(str(exc), param=PARAM)
