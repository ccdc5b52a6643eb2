"""Raw harmony on request (`vllm_xargs: {"harmony_raw": true}`), through the live server.

Checked against what we did not write: the raw text equals transformers' decoding of the
completion token ids vLLM returns (`return_token_ids`, special tokens kept), and oss-harmony's
parser reads the same reasoning / answer / tool call from it as the parsed fields say.
"""

from __future__ import annotations

import json

import pytest
from openai_harmony import HarmonyEncodingName, Role, load_harmony_encoding

from gptoss_dev.fixture import corpus

pytestmark = pytest.mark.slow
ENC = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
RAW = {"vllm_xargs": {"harmony_raw": True}}
QUESTION = corpus.SMOKE_QA[0][0]


# `server`: the harmony modules' shared live server (conftest.py).


@pytest.fixture(scope="module")
def hf_tokenizer(server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server.model)


def _chat(server, stream=False, **body):
    body = {"model": server.served_name, "temperature": 0, "max_tokens": 200,
            "messages": [{"role": "user", "content": QUESTION}], **body}  # fmt: skip
    with server.client_http(timeout=300) as c:
        if not stream:
            return c.post("/v1/chat/completions", json=body)
        pieces, fields = [], {"reasoning": [], "content": []}
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                for ch in json.loads(line[6:]).get("choices") or ():
                    delta = ch.get("delta") or {}
                    pieces.append(delta.get("harmony_raw") or "")
                    for k in fields:
                        fields[k].append(delta.get(k) or "")
        return "".join(pieces), {k: "".join(v) for k, v in fields.items()}


def _harmony_fields(raw: str) -> dict:
    msgs = ENC.parse_messages_from_completion_tokens(ENC.encode(raw, allowed_special="all"), Role.ASSISTANT)
    out = {}
    for m in msgs:
        out.setdefault(m.channel, []).append("".join(c.text for c in m.content))
    return {k: "\n".join(v) for k, v in out.items()}


def test_chat_raw_is_the_completion_with_special_tokens(server, hf_tokenizer):
    r = _chat(server, return_token_ids=True, **RAW)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    raw = choice["message"]["harmony_raw"]
    assert raw == hf_tokenizer.decode(choice["token_ids"], skip_special_tokens=False)
    assert raw.startswith("<|channel|>analysis<|message|>") and "<|start|>assistant<|channel|>final" in raw
    fields = _harmony_fields(raw)
    assert fields["analysis"] == choice["message"]["reasoning"]
    assert fields["final"] == choice["message"]["content"]


def test_chat_raw_streamed_joins_to_the_non_streamed(server):
    whole = _chat(server, **RAW).json()["choices"][0]["message"]
    raw, fields = _chat(server, stream=True, **RAW)
    assert raw == whole["harmony_raw"]
    assert fields == {"reasoning": whole["reasoning"], "content": whole["content"]}


def test_chat_without_the_flag_has_no_raw_field(server):
    r = _chat(server)
    assert r.status_code == 200
    assert "harmony_raw" not in r.json()["choices"][0]["message"]
    off = _chat(server, vllm_xargs={"harmony_raw": "false"})
    assert "harmony_raw" not in off.json()["choices"][0]["message"]


def test_tool_call_raw(server):
    ex = next(e for e in corpus.examples() if e.kind == "tool_call")
    r = _chat(server, **{**ex.request(), **RAW})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    call = msg["tool_calls"][0]["function"]
    raw = msg["harmony_raw"]
    assert raw.endswith("<|call|>"), raw
    tokens = ENC.encode(raw, allowed_special="all")
    last = ENC.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)[-1]
    assert last.recipient == f"functions.{call['name']}"
    assert json.loads(last.content[0].text) == json.loads(call["arguments"])


def test_bad_flag_value_is_a_400_naming_it(server):
    r = _chat(server, vllm_xargs={"harmony_raw": "yes please"})
    assert r.status_code == 400, r.text
    assert "vllm_xargs.harmony_raw" in r.text


def test_responses_raw(server):
    with server.client_http(timeout=300) as c:
        r = c.post("/v1/responses", json={"model": server.served_name, "temperature": 0,
                                          "max_output_tokens": 200, "input": QUESTION, **RAW})
        assert r.status_code == 200, r.text
        data = r.json()
        fields = _harmony_fields(data["harmony_raw"])
        text = "".join(p["text"] for o in data["output"] if o["type"] == "message" for p in o["content"])
        reasoning = "".join(p["text"] for o in data["output"] if o["type"] == "reasoning"
                            for p in o.get("content") or ())
        assert fields["final"] == text and fields["analysis"] == reasoning
        streamed = c.post("/v1/responses", json={"model": server.served_name, "input": QUESTION,
                                                 "stream": True, **RAW})
        assert streamed.status_code == 400 and "vllm_xargs.harmony_raw" in streamed.text
