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
(what follows the prompt's ``<|start|>assistant``). Hooked in hooks.py around vLLM 0.32's
``OpenAIServingChat.create_chat_completion`` / ``chat_completion_full_generator`` /
``chat_completion_stream_generator`` and ``OpenAIServingResponses.create_responses`` /
``responses_full_generator``; without the flag they run untouched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
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


def _decode(ids) -> str:
    from vllm.entrypoints.openai.parser.harmony_utils import get_encoding

    return get_encoding().decode(list(ids))


class _Pieces:
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
        text = _decode(self.pending)
        if not final and text.endswith("\ufffd"):
            keep = 1
            while keep < min(4, len(self.pending)) and _decode(self.pending[:-keep]).endswith("\ufffd"):
                keep += 1
            head = self.pending[:-keep]
            if not head:
                return ""
            text, self.pending = _decode(head), self.pending[-keep:]
            return text
        self.pending = []
        return text


def _error(serving, exc: Exception):
    return serving.create_error_response(str(exc), param=PARAM)


def patch_chat(cls) -> None:
    """Wrap OpenAIServingChat (vllm/entrypoints/openai/chat_completion/hooks.py)."""
    if getattr(cls, "_vllm_gptoss_raw", False):
        return
    create, full, stream = (
        cls.create_chat_completion, cls.chat_completion_full_generator,
        cls.chat_completion_stream_generator,
    )  # fmt: skip

    @functools.wraps(create)
    async def create_chat_completion(self, request, *args, **kwargs):
        try:
            requested(request)
        except ValueError as exc:
            return _error(self, exc)
        return await create(self, request, *args, **kwargs)

    @functools.wraps(full)
    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        if not requested(request):
            return await full(self, request, result_generator, *args, **kwargs)
        final_ids: dict[int, list[int]] = {}

        async def capture() -> AsyncIterator:
            async for res in result_generator:
                for out in res.outputs:  # non-streamed: the final output carries all ids
                    final_ids[out.index] = list(out.token_ids)
                yield res

        response = await full(self, request, capture(), *args, **kwargs)
        for choice in getattr(response, "choices", None) or ():
            setattr(choice.message, FLAG, _decode(final_ids.get(choice.index, ())))
        return response

    @functools.wraps(stream)
    async def chat_completion_stream_generator(self, request, result_generator, *args, **kwargs):
        if not requested(request):
            async for chunk in stream(self, request, result_generator, *args, **kwargs):
                yield chunk
            return
        pieces: dict[int, _Pieces] = {}
        template: dict | None = None

        async def capture() -> AsyncIterator:
            async for res in result_generator:
                for out in res.outputs:  # streamed: each output carries the new ids
                    pieces.setdefault(out.index, _Pieces()).add(out.token_ids)
                yield res

        async for chunk in stream(self, request, capture(), *args, **kwargs):
            if chunk.startswith("data: {"):
                data = json.loads(chunk[len("data: "):])
                if data.get("choices"):
                    template = data
                for ch in data.get("choices") or ():
                    p = pieces.get(ch.get("index"))
                    text = p.take(final=ch.get("finish_reason") is not None) if p else ""
                    if text:
                        ch.setdefault("delta", {})[FLAG] = text
                chunk = f"data: {json.dumps(data)}\n\n"
            elif chunk.startswith("data: [DONE]") and template is not None:
                rest = {i: p.take(final=True) for i, p in pieces.items()}
                rest = {i: t for i, t in rest.items() if t}
                if rest:  # ids no chunk carried yet (the stop token): one more chunk
                    extra = dict(template, usage=None, choices=[
                        {"index": i, "delta": {FLAG: t}, "logprobs": None, "finish_reason": None}
                        for i, t in sorted(rest.items())])  # fmt: skip
                    yield f"data: {json.dumps(extra)}\n\n"
            yield chunk

    cls.create_chat_completion = create_chat_completion
    cls.chat_completion_full_generator = chat_completion_full_generator
    cls.chat_completion_stream_generator = chat_completion_stream_generator
    cls._vllm_gptoss_raw = True


def patch_responses(cls) -> None:
    """Wrap OpenAIServingResponses (vllm/entrypoints/openai/responses/hooks.py)."""
    if getattr(cls, "_vllm_gptoss_raw", False):
        return
    create, full = cls.create_responses, cls.responses_full_generator

    @functools.wraps(create)
    async def create_responses(self, request, *args, **kwargs):
        try:
            wanted = requested(request)
        except ValueError as exc:
            return _error(self, exc)
        if wanted and (request.stream or request.background):
            return _error(self, ValueError(
                f"{PARAM} is supported for non-streamed, non-background Responses requests only "
                "(use chat completions for streamed raw harmony)."))  # fmt: skip
        return await create(self, request, *args, **kwargs)

    @functools.wraps(full)
    async def responses_full_generator(self, request, sampling_params, result_generator, context,
                                       *args, **kwargs):  # fmt: skip
        if not requested(request):
            return await full(self, request, sampling_params, result_generator, context,
                              *args, **kwargs)  # fmt: skip
        ids: list[int] = []
        append_output = context.append_output

        def capture(output):
            ids.extend(output.outputs[0].token_ids)  # each turn's new ids
            return append_output(output)

        context.append_output = capture
        response = await full(self, request, sampling_params, result_generator, context,
                              *args, **kwargs)  # fmt: skip
        if hasattr(response, "output"):
            setattr(response, FLAG, _decode(ids))
        return response

    cls.create_responses = create_responses
    cls.responses_full_generator = responses_full_generator
    cls._vllm_gptoss_raw = True
