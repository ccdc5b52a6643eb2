"""Bad requests get a 400 naming the parameter, before anything runs, streamed or not (issue 15).

The live part runs vLLM's real OpenAI server on the fixture model (the harmony modules' shared
server, conftest.py) and talks to it with the official `openai` client. Each bad request goes
through chat completions and/or Responses, streamed and not; asserted: status 400, the error's
``param``, the reason in the message (for a JSON schema: xgrammar's own words, which stock vLLM 0.32
loses), one more count in ``vllm_gptoss:rejected_requests_total{param}``, and the server healthy
afterwards. Valid requests still give the fixture's trained answer (its corpus is the ground truth,
rendered by oss-harmony), token for token.

The in-process part checks the same rules on the request objects vLLM's router builds.
"""

from __future__ import annotations

import json
import re

import openai
import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.exceptions import VLLMValidationError

from gptoss_dev.fixture import corpus
from vllm_gptoss.harmony import metrics, request_checks
from gptoss_dev.malformations import TOOLS
from gptoss_dev.stock_compare import EncodingTokenizer, parser_classes

USER = {"role": "user", "content": "What is 2+2?"}
WEATHER = TOOLS[0]
R_WEATHER = {"type": "function", **WEATHER["function"]}  # the Responses spelling of the same tool
GOOD_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
BAD_TYPE = {"type": "object", "properties": {"city": {"type": "strnig"}}}
DANGLING_REF = {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}}


def json_schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}


def text_format(schema):
    return {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}


# (id, api, body, param, reason regex). `api` is "chat" or "responses".
BAD = [
    ("chat-schema-type", "chat", {"response_format": json_schema_format(BAD_TYPE)},
     "response_format.json_schema.schema", r'Unsupported type "strnig"'),
    ("chat-schema-ref", "chat", {"response_format": json_schema_format(DANGLING_REF)},
     "response_format.json_schema.schema", r"Cannot find field \$defs"),
    ("responses-schema-type", "responses", {"text": text_format(BAD_TYPE)},
     "text.format.schema", r'Unsupported type "strnig"'),
    ("responses-schema-ref", "responses", {"text": text_format(DANGLING_REF)},
     "text.format.schema", r"Cannot find field \$defs"),
    ("chat-forced-tool-schema", "chat",
     {"tools": [{"type": "function", "function": {"name": "f", "parameters": BAD_TYPE, "strict": True}}],
      "tool_choice": "required"},
     "tools[0].function.parameters", r'Unsupported type "strnig"'),
    ("chat-top-logprobs", "chat", {"logprobs": True, "top_logprobs": 50}, "top_logprobs", r"0 to 20.*found 50"),
    ("responses-top-logprobs", "responses", {"top_logprobs": 50}, "top_logprobs", r"0 to 20.*found 50"),
    ("chat-duplicate-tools", "chat", {"tools": [WEATHER, WEATHER]},
     "tools[1].function.name", r"unique.*'get_weather'.*tools\[0\]"),
    ("responses-duplicate-tools", "responses", {"tools": [R_WEATHER, R_WEATHER]},
     "tools[1].name", r"unique.*'get_weather'.*tools\[0\]"),
    ("chat-empty-messages", "chat", {"messages": []}, "messages", r"non-empty.*found \[\]"),
    ("chat-n", "chat", {"n": 1000, "max_tokens": 1}, "n", r"1 to 16.*VLLM_GPTOSS_MAX_N.*found 1000"),
    ("responses-tool-choice", "responses",
     {"tools": [R_WEATHER], "tool_choice": {"type": "function", "name": "get_time"}},
     "tool_choice", r"'get_time'.*not among the offered tools.*'get_weather'"),
]  # fmt: skip


# --- in process: the request objects vLLM builds, through our parser's adjust_request -----------

_, OURS = parser_classes()
TOK = EncodingTokenizer()


def _adjust(api: str, body: dict):
    if api == "chat":
        body = {"messages": [USER], **body}
        req = ChatCompletionRequest(model="m", **body)
    else:
        req = ResponsesRequest(**{"input": "hi", **body})
    return OURS(TOK, req.tools).adjust_request(req)


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_in_process_rejection_names_the_parameter(case):
    import vllm.entrypoints.openai.responses.protocol as responses_protocol

    from vllm_gptoss import vllm_compat

    # Only the Responses tool_choice hook (its message); idempotent.
    vllm_compat.patch_responses_tool_choice(responses_protocol)
    _, api, body, param, reason = case
    before = metrics.rejections(param)
    with pytest.raises(VLLMValidationError) as err:
        _adjust(api, body)
    assert err.value.parameter == param
    assert re.search(reason, err.value.args[0]), err.value.args[0]
    assert metrics.rejections(param) == before + 1


def test_in_process_valid_requests_pass_and_keep_the_constraint():
    req = _adjust("chat", {"response_format": json_schema_format(GOOD_SCHEMA), "n": 16, "logprobs": True,
                           "top_logprobs": 20, "tools": [WEATHER]})
    tag = json.loads(req.structured_outputs.structural_tag)
    assert GOOD_SCHEMA in list(_json_schemas(tag))
    req = _adjust("responses", {"text": text_format(GOOD_SCHEMA), "tools": [R_WEATHER],
                                "tool_choice": {"type": "function", "name": "get_weather"}})
    assert req.structured_outputs is not None


def _json_schemas(node):
    if isinstance(node, dict):
        if node.get("type") == "json_schema" and "json_schema" in node:
            yield node["json_schema"]
        for v in node.values():
            yield from _json_schemas(v)
    elif isinstance(node, list):
        for v in node:
            yield from _json_schemas(v)


def test_max_n_env(monkeypatch):
    monkeypatch.setenv(request_checks.MAX_N_ENV, "4")
    _adjust("chat", {"n": 4})
    with pytest.raises(VLLMValidationError) as err:
        _adjust("chat", {"n": 5})
    assert err.value.parameter == "n" and "1 to 4" in err.value.args[0]
    monkeypatch.setenv(request_checks.MAX_N_ENV, "zero")
    with pytest.raises(ValueError, match="VLLM_GPTOSS_MAX_N"):
        request_checks.max_n()


def test_metric_label_folds_list_indices():
    assert metrics.param_label("tools[12].function.name") == "tools[].function.name"
    assert metrics.param_label(None) == "unknown"


# --- live server ---------------------------------------------------------------------------------


# `server`: the harmony modules' shared live server (conftest.py).


@pytest.fixture(scope="module")
def client(server):
    return server.openai(max_retries=0)


def rejected_counts(server) -> dict[str, float]:
    with server.client_http(timeout=30) as h:
        text = h.get("/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^vllm_gptoss:rejected_requests_total\{param="([^"]*)"\} (\S+)$', text, re.M)
    }


def send(server, client, api: str, body: dict, stream: bool):
    """One request with the official client; a stream is read to its end."""
    if api == "chat":
        body = {"model": server.served_name, "messages": [USER], "max_tokens": 8, **body}
        out = client.chat.completions.create(stream=stream, **body)
    else:
        body = {"model": server.served_name, "input": "hi", "max_output_tokens": 8, **body}
        out = client.responses.create(stream=stream, **body)
    if stream:
        return list(out)
    return out


def assert_healthy(server):
    with server.client_http(timeout=30) as h:
        assert h.get("/health").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_is_a_400_naming_the_parameter(server, client, case, stream):
    _, api, body, param, reason = case
    before = rejected_counts(server)
    with pytest.raises(openai.BadRequestError) as err:
        send(server, client, api, body, stream)
    e = err.value
    assert e.status_code == 400
    assert isinstance(e.body, dict), e.body  # OpenAI's error shape: {"message", "type", "param", "code"}
    assert e.body.get("param") == param, e.body
    assert re.search(reason, e.body.get("message", "")), e.body
    label = metrics.param_label(param)
    assert rejected_counts(server).get(label, 0.0) == before.get(label, 0.0) + 1
    assert_healthy(server)


@pytest.mark.slow
def test_nothing_crashed_in_the_server(server, client):
    """Runs after the bad requests: no unhandled exception (the stock streamed-Responses failure
    was 'Exception in ASGI application' and a cut connection) and no 5xx in the access log (the
    shared server's: every request any module sent it so far)."""
    log = server.log_path.read_text(errors="replace")
    assert "Exception in ASGI application" not in log
    assert not re.search(r'" 5\d\d ', log), [ln for ln in log.splitlines() if re.search(r'" 5\d\d ', ln)]


QA = next(e for e in corpus.examples() if e.kind == "qa" and e.reasoning_effort is None)


@pytest.mark.slow
def test_valid_requests_still_give_the_trained_tokens(server, client):
    """Temperature 0: the fixture's answer is its training completion (oss-harmony's rendering),
    token for token, through the new checks; streamed == non-streamed; top_logprobs at the bound is
    served; n at the bound (sampled: vLLM allows n > 1 only when sampling) gives n choices."""
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    want = enc.encode(QA.completion, allowed_special="all")
    body = dict(model=server.served_name, temperature=0, max_tokens=256, messages=QA.messages,
                logprobs=True, top_logprobs=20, extra_body={"return_tokens_as_token_ids": True})
    r = client.chat.completions.create(**body)
    for ch in r.choices:
        ids = [int(t.token.split(":", 1)[1]) for t in ch.logprobs.content]
        assert ids == want[: len(ids)] and len(ids) >= len(want) - 1, enc.decode(ids)
        assert all(len(t.top_logprobs) == 20 for t in ch.logprobs.content)
        assert (ch.message.reasoning, ch.message.content) == (QA.reasoning, QA.content)
    streamed = {"reasoning": "", "content": ""}
    for chunk in client.chat.completions.create(model=server.served_name, temperature=0, max_tokens=256,
                                                messages=QA.messages, stream=True):
        for ch in chunk.choices:
            streamed["reasoning"] += getattr(ch.delta, "reasoning", None) or ""
            streamed["content"] += ch.delta.content or ""
    assert (streamed["reasoning"], streamed["content"]) == (QA.reasoning, QA.content)
    bound = request_checks.DEFAULT_MAX_N
    r = client.chat.completions.create(model=server.served_name, temperature=1.0, seed=0, max_tokens=4,
                                       messages=QA.messages, n=bound)
    assert sorted(ch.index for ch in r.choices) == list(range(bound))
    assert_healthy(server)


@pytest.mark.slow
def test_valid_schema_and_named_tool_still_work(server, client):
    q = [{"role": "user", "content": corpus.SMOKE_QA[0][0]}]
    full = client.chat.completions.create(model=server.served_name, temperature=0, max_tokens=48, messages=q,
                                          response_format=json_schema_format(GOOD_SCHEMA))
    content = full.choices[0].message.content
    assert re.match(r'\{\s*"city"\s*:\s*"', content), content
    streamed = "".join(
        ch.delta.content or ""
        for chunk in client.chat.completions.create(model=server.served_name, temperature=0, max_tokens=48,
                                                    messages=q, response_format=json_schema_format(GOOD_SCHEMA),
                                                    stream=True)
        for ch in chunk.choices
    )
    assert streamed == content
    r = client.responses.create(model=server.served_name, temperature=0, max_output_tokens=48,
                                input=q[0]["content"], text=text_format(GOOD_SCHEMA))
    text = "".join(c.text for item in r.output if item.type == "message" for c in item.content)
    assert text == content  # the same prompt and grammar through the Responses API
    call_ex = corpus.demo_example()[0]
    r = client.responses.create(model=server.served_name, temperature=0, max_output_tokens=256,
                                input=call_ex.messages[0]["content"], tools=[R_WEATHER],
                                tool_choice={"type": "function", "name": "get_weather"})
    calls = [(i.name, i.arguments) for i in r.output if i.type == "function_call"]
    assert calls and calls[0][0] == "get_weather" and isinstance(json.loads(calls[0][1])["city"], str)
    assert_healthy(server)
