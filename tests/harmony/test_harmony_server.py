"""The harmony serving path end to end: vLLM's real OpenAI server, the official `openai` client.

The harmony modules' shared server (conftest.py; start-up costs 1-2 minutes on the CPU): the
trained fixture model (gptoss_dev.fixture), ``--enable-auto-tool-choice --tool-call-parser openai``
and vLLM's per-arch default reasoning parser, run offline in a network namespace and reached
through a Unix socket (harmony_live_server.py). What the fixture says for each request is defined by its training corpus
(dev/gptoss_dev/fixture/corpus.py) and, for the malformation triggers, by
dev/gptoss_dev/malformations.py: that is the ground truth here, produced by oss-harmony's
renderer or written raw, never by our parser.
"""

from __future__ import annotations

import asyncio
import json
import re

import openai
import pytest

from gptoss_dev.malformations import MALFORMATIONS, TOOLS, Malformation
from vllm_gptoss.harmony.parser import RECOVERY_KINDS
from gptoss_dev.fixture import corpus
from vllm_gptoss.harmony.vllm_parsers import HARMONY_CONTROL_TEXT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def examples(kind):
    return [e for e in corpus.examples() if e.kind == kind]


# --- helpers -------------------------------------------------------------------------------------


def chat(server, client, request: dict, stream: bool, **kw) -> dict:
    """One chat completion; returns what a client sees, joined the way a client joins a stream."""
    body = {"model": server.served_name, "temperature": 0, "max_tokens": 256, **request, **kw}
    if not stream:
        r = client.chat.completions.create(**body)
        ch = r.choices[0]
        msg = ch.message
        return dict(
            reasoning=getattr(msg, "reasoning", None),
            content=msg.content,
            tool_calls=tuple((t.function.name, t.function.arguments) for t in msg.tool_calls or ()),
            finish_reason=ch.finish_reason,
            prompt_token_ids=getattr(r, "prompt_token_ids", None),
        )
    reasoning, content, calls, finish = [], [], {}, None
    ids_seen = set()
    for chunk in client.chat.completions.create(stream=True, **body):
        ids_seen.add(chunk.id)
        for ch in chunk.choices:
            d = ch.delta
            if getattr(d, "reasoning", None):
                reasoning.append(d.reasoning)
            if d.content:
                content.append(d.content)
            for t in d.tool_calls or ():
                name, args = calls.get(t.index, ("", ""))
                if t.function is not None:
                    name += t.function.name or ""
                    args += t.function.arguments or ""
                calls[t.index] = (name, args)
            if ch.finish_reason is not None:
                finish = ch.finish_reason
    assert len(ids_seen) == 1, f"one stream carried several completion ids: {ids_seen}"
    return dict(
        reasoning="".join(reasoning) or None,
        content="".join(content) or None,
        tool_calls=tuple(calls[k] for k in sorted(calls)),
        finish_reason=finish,
        prompt_token_ids=None,
    )


def recoveries(server) -> dict[str, float]:
    with server.client_http(timeout=30) as h:
        text = h.get("/metrics").text
    out = {}
    for kind in RECOVERY_KINDS:
        m = re.search(
            r'^vllm_gptoss:harmony_recoveries_total\{kind="%s"\} ([0-9.e+]+)$' % kind, text, re.M
        )
        out[kind] = float(m.group(1)) if m else 0.0
    return out


def visible(res: dict) -> tuple:
    return res["reasoning"], res["content"], res["tool_calls"], res["finish_reason"]


# --- the malformation triggers: real model output through the server ----------------------------


@pytest.mark.parametrize("m", MALFORMATIONS, ids=lambda m: m.kind)
def test_malformation_trigger_recovered_streamed_and_not(server, client, m: Malformation):
    request = {"messages": [{"role": "user", "content": m.trigger}]}
    if m.offers_tools:
        request["tools"] = TOOLS
    want_finish = "tool_calls" if m.tool_calls else "stop"
    results = {}
    for stream in (False, True):
        before = recoveries(server)
        res = chat(server, client, request, stream)  # an HTTP error would raise here
        after = recoveries(server)
        assert (res["reasoning"], res["content"], res["tool_calls"]) == (
            m.reasoning,
            m.content,
            m.tool_calls,
        ), f"stream={stream}"
        assert res["finish_reason"] == want_finish
        for name, args in res["tool_calls"]:
            assert isinstance(json.loads(args), dict)
        delta = {k: after[k] - before[k] for k in RECOVERY_KINDS if after[k] != before[k]}
        want = {k: float(list(m.counted_as).count(k)) for k in set(m.counted_as)}
        assert delta == want, f"stream={stream}"
        results[stream] = visible(res)
    assert results[True] == results[False]


# --- well-formed conversations: reasoning vs content, tool calls, streamed == non-streamed -------


QA = [e for e in examples("qa") if e.name[2:4] in ("00", "08", "20")]


@pytest.mark.parametrize("ex", QA, ids=lambda e: e.name)
def test_reasoning_and_content_separated(server, client, ex):
    full = chat(server, client, ex.request(), stream=False)
    streamed = chat(server, client, ex.request(), stream=True)
    assert (full["reasoning"], full["content"], full["tool_calls"]) == (ex.reasoning, ex.content, ())
    assert full["finish_reason"] == "stop"
    assert visible(streamed) == visible(full)


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_tool_call_then_result_turn(server, client, stream):
    call_ex, result_ex = corpus.demo_example()
    res = chat(server, client, call_ex.request(), stream)
    assert res["tool_calls"] == call_ex.tool_calls and res["reasoning"] == call_ex.reasoning
    assert res["content"] is None and res["finish_reason"] == "tool_calls"
    assert json.loads(res["tool_calls"][0][1]) == {"city": "Paris"}
    res2 = chat(server, client, result_ex.request(), stream)
    assert (res2["reasoning"], res2["content"], res2["tool_calls"]) == (
        result_ex.reasoning,
        result_ex.content,
        (),
    )


def test_tool_choice_named_and_required(server, client):
    call_ex, _ = corpus.demo_example()
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, finish in ((named, "stop"), ("required", "tool_calls"), ("auto", "tool_calls")):
        for stream in (False, True):
            res = chat(server, client, call_ex.request(), stream, tool_choice=choice)
            assert res["tool_calls"] == call_ex.tool_calls, (choice, stream)
            assert res["finish_reason"] == finish, (choice, stream)


@pytest.mark.parametrize("strict", [True, None], ids=["strict", "unset"])
def test_tool_choice_required_forces_a_call_on_an_unrelated_question(server, client, strict):
    """A factual question (not about weather): `required` must still give a get_weather call. Its
    arguments follow the tool's schema when the tool is `strict: true`; vLLM 0.32 leaves a tool
    without `strict` free in its arguments (any JSON; `--tool-strict-level parameter` pins them), and
    the fixture then writes whatever it likes there (`32.42` was seen), so only the call is asserted."""
    ex = corpus.demo_example()[0]
    tools = [{**t, "function": {**t["function"], **({} if strict is None else {"strict": strict})}} for t in ex.tools]
    q = {"messages": [{"role": "user", "content": corpus.SMOKE_QA[0][0]}], "tools": tools}
    forced = chat(server, client, q, stream=False, tool_choice="required", max_tokens=96)
    assert forced["tool_calls"], forced
    assert forced["tool_calls"][0][0] == "get_weather"
    assert forced["finish_reason"] == "tool_calls"
    if strict:
        args = json.loads(forced["tool_calls"][0][1])  # schema-constrained: an object with a string city
        assert isinstance(args, dict) and isinstance(args["city"], str), args


def test_json_schema_final_message_never_runs_into_harmony_markup(server, client):
    """response_format json_schema. The fixture cannot write good JSON (it never saw any), so its
    string runs to max_tokens; with vLLM's own grammar it ran on into `<|end|><|start|>assistant...`
    inside the "JSON" (the escape test_structured_output_seal.py proves at grammar level). With ours,
    every token after the `<|constrain|>json<|message|>` header is JSON text: no control token, and
    the content is exactly those tokens."""
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=server.served_name, temperature=0, max_tokens=96, logprobs=True,
        messages=[{"role": "user", "content": corpus.SMOKE_QA[0][0]}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        extra_body={"return_tokens_as_token_ids": True})
    ids = [int(t.token.split(":", 1)[1]) for t in r.choices[0].logprobs.content]
    # The final message's header: `<|channel|>final <|constrain|>json<|message|>`, or with the
    # content type as plain text (`final json<|message|>`, also legal harmony; which one depends
    # on the fixture's weights).
    channel = enc.encode("<|channel|>final", allowed_special="all")
    at = next((i for i in range(len(ids)) if ids[i: i + len(channel)] == channel), None)
    assert at is not None, f"no final message: {enc.decode(ids)!r}"
    start = ids.index(enc.encode("<|message|>", allowed_special="all")[0], at) + 1
    assert "json" in enc.decode(ids[at:start]), f"final header not JSON-constrained: {enc.decode(ids)!r}"
    body = ids[start:]
    if r.choices[0].finish_reason == "stop":
        body = body[:-1]  # the stop token
    control = set(enc.encode("".join(HARMONY_CONTROL_TEXT), allowed_special="all"))
    assert not control & set(body), enc.decode(ids)
    assert r.choices[0].message.content == enc.decode(body)
    assert re.match(r'\{\s*"city"\s*:\s*"', r.choices[0].message.content)


# --- reasoning effort ---------------------------------------------------------------------------


def _system_message(prompt_ids) -> str:
    from vllm_gptoss.harmony.parser import default_encoding

    text = default_encoding()[0].decode(prompt_ids)
    return text.split("<|end|>", 1)[0]


@pytest.mark.parametrize("effort", ["low", "high"])
def test_reasoning_effort_from_every_dialect(server, client, effort):
    question, answer = corpus.SMOKE_QA[8]
    user = {"role": "user", "content": question}
    extra = {"extra_body": {"return_token_ids": True}}
    by_field = chat(server, client, {"messages": [user], "reasoning_effort": effort}, False, **extra)
    by_kwargs = chat(
        server,
        client,
        {"messages": [user]},
        False,
        extra_body={"return_token_ids": True, "chat_template_kwargs": {"reasoning_effort": effort}},
    )
    by_system = chat(
        server,
        client,
        {"messages": [{"role": "system", "content": f"Reasoning: {effort}"}, user]},
        False,
        **extra,
    )
    default = chat(server, client, {"messages": [user]}, False, **extra)
    want_reasoning = corpus.REASONING_TEMPLATES[effort].format(answer=answer)
    for res in (by_field, by_kwargs, by_system):
        assert f"Reasoning: {effort}" in _system_message(res["prompt_token_ids"])
        assert res["prompt_token_ids"] == by_field["prompt_token_ids"]
        assert (res["reasoning"], res["content"]) == (want_reasoning, answer)
    assert "Reasoning: medium" in _system_message(default["prompt_token_ids"])
    assert default["reasoning"] != want_reasoning


def test_max_tokens_inside_reasoning(server, client):
    ex = next(e for e in examples("qa") if e.reasoning_effort == "high")
    for stream in (False, True):
        res = chat(server, client, ex.request(), stream, max_tokens=12)
        assert res["finish_reason"] == "length"
        assert res["content"] is None and res["tool_calls"] == ()
        assert res["reasoning"] and ex.reasoning.startswith(res["reasoning"]), res


def test_max_tokens_inside_a_header(server, client):
    """max_tokens landing on every token of a header of a known fixture output (the trained greedy
    completion of the recipient_in_role trigger: `<|start|>assistant to=functions.get_weather
    <|channel|>commentary json<|message|>...`): what was complete before stands, no fragment of
    the header reaches a field, no tool call, finish_reason "length"; each cut is counted."""
    from gptoss_dev.malformations import BY_KIND
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    m = BY_KIND["recipient_in_role"]
    ids = enc.encode(m.completion, allowed_special="all")
    start, message = (enc.encode(t, allowed_special="all")[0] for t in ("<|start|>", "<|message|>"))
    head = ids.index(start)
    body = ids.index(message, head)
    first_body = ids.index(message)
    request = {"messages": [{"role": "user", "content": m.trigger}], "tools": TOOLS}
    cuts = [(k, None) for k in range(1, first_body + 1)]  # inside the first header
    cuts += [(k, m.reasoning) for k in range(head + 1, body + 1)]  # inside the tool-call header
    for k, reasoning in cuts:
        for stream in (False, True):
            before = recoveries(server)["truncated_header"]
            res = chat(server, client, request, stream, max_tokens=k)
            got = (res["reasoning"], res["content"], res["tool_calls"], res["finish_reason"])
            assert got == (reasoning, None, (), "length"), (k, stream, enc.decode(ids[:k]))
            assert recoveries(server)["truncated_header"] - before == 1, (k, stream)


def test_foreign_turn_after_the_reply_never_shows(server, client):
    """The model runs on past its answer into an invented user turn. The fixture was never trained to
    do that, so a `choice` constraint (vLLM puts it inside the final message) writes it, and a
    logit bias makes every harmony control token in it the real special token (the grammar alone
    would also admit spelling it as text): `...<|end|><|start|>user<|message|>And tomorrow?`.
    The reply is the answer before it; the invented turn is dropped and counted."""
    from vllm_gptoss.harmony.parser import default_encoding

    enc = default_encoding()[0]
    ctrl = {n: enc.encode(n, allowed_special="all")[0] for n in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>")}
    body = dict(
        messages=[{"role": "user", "content": corpus.SMOKE_QA[0][0]}],
        logit_bias={str(t): 100 for t in ctrl.values()},
        # budget 0: straight to the final message, where the choice applies (with the bias on, what
        # an untrained analysis would do depends on the fixture's weights)
        extra_body={"structured_outputs": {"choice": ["It is sunny.<|end|><|start|>user<|message|>And tomorrow?"]},
                    "thinking_token_budget": 0},
    )
    r = client.chat.completions.create(
        model=server.served_name, temperature=0, max_tokens=64, logprobs=True,
        **{**body, "extra_body": {**body["extra_body"], "return_tokens_as_token_ids": True}})
    ids = [int(t.token.split(":", 1)[1]) for t in r.choices[0].logprobs.content]
    # The output really holds a user header made of the special tokens.
    at = max(i for i, t in enumerate(ids) if t == ctrl["<|start|>"])
    assert ctrl["<|message|>"] in ids[at:], f"no user header: {enc.decode(ids)!r}"
    role_end = ids.index(ctrl["<|message|>"], at)
    assert ids[at - 1] == ctrl["<|end|>"] and enc.decode(ids[at + 1 : role_end]) == "user", enc.decode(ids)
    assert "And tomorrow?" in enc.decode(ids[role_end:])
    results = {}
    for stream in (False, True):
        before = recoveries(server)["foreign_turn"]
        res = chat(server, client, body, stream, max_tokens=64)
        assert res["content"] == "It is sunny." and res["tool_calls"] == (), (stream, res)
        assert "tomorrow" not in (res["reasoning"] or ""), res
        assert recoveries(server)["foreign_turn"] - before == 1, stream
        results[stream] = visible(res)
    assert results[True] == results[False]


# --- bad requests: 4xx naming the parameter -----------------------------------------------------


BAD_TOOL = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": "minimal"}, "reasoning_effort"),
        ({"extra_body": {"chat_template_kwargs": {"reasoning_effort": "max"}}}, "chat_template_kwargs.reasoning_effort"),
        ({"messages": [{"role": "system", "content": "Reasoning: turbo"}, {"role": "user", "content": "hi"}]}, "messages[0].content"),
        ({"tools": BAD_TOOL}, "tools[0].function.parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "not_offered"}}}, "tool_choice"),
    ],
    ids=["effort", "effort-minimal", "kwargs-effort", "system-effort", "tool-schema", "tool-choice"],
)
def test_bad_request_is_4xx_naming_the_parameter(server, client, body, param):
    body = dict(body)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.served_name, max_tokens=8, **body)
    assert err.value.status_code == 400
    assert param in str(err.value), str(err.value)


def test_responses_bad_effort_and_bad_tool(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=server.served_name, input="hi", reasoning={"effort": "extreme"})
    assert "reasoning" in str(err.value)
    bad = [{"type": "function", "name": "f", "parameters": {"type": "array"}}]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=server.served_name, input="hi", tools=bad)
    assert "tools[0].parameters" in str(err.value)


def test_sampled_output_never_500(server, client):
    """Hot sampling makes the fixture emit whatever it likes; every answer must still be a 200."""
    for seed in range(6):
        for stream in (False, True):
            chat(
                server,
                client,
                {"messages": [{"role": "user", "content": corpus.SMOKE_QA[seed][0]}], "tools": TOOLS},
                stream,
                temperature=2.0,
                seed=seed,
                max_tokens=48,
            )


# --- Responses API --------------------------------------------------------------------------------


def _responses(server, client, stream: bool, **body) -> dict:
    body = dict(model=server.served_name, temperature=0, max_output_tokens=256, **body)
    if not stream:
        r = client.responses.create(**body)
        out = dict(reasoning=[], text=[], calls=[])
        for item in r.output:
            if item.type == "reasoning":
                out["reasoning"].append("".join(c.text for c in item.content or ()))
            elif item.type == "message":
                out["text"].append("".join(c.text for c in item.content))
            elif item.type == "function_call":
                out["calls"].append((item.name, item.arguments))
        return {k: tuple(v) for k, v in out.items()}
    reasoning, text, calls, cur = [], [], [], {}
    for ev in client.responses.create(stream=True, **body):
        if ev.type == "response.reasoning_text.delta":
            cur.setdefault("r", []).append(ev.delta)
        elif ev.type == "response.reasoning_text.done":
            reasoning.append("".join(cur.pop("r", [])))
        elif ev.type == "response.output_text.delta":
            cur.setdefault("t", []).append(ev.delta)
        elif ev.type == "response.output_text.done":
            text.append("".join(cur.pop("t", [])))
        elif ev.type == "response.output_item.added" and ev.item.type == "function_call":
            cur["f"] = [ev.item.name, []]
        elif ev.type == "response.function_call_arguments.delta":
            cur["f"][1].append(ev.delta)
        elif ev.type == "response.function_call_arguments.done":
            calls.append((cur["f"][0], "".join(cur.pop("f")[1])))
    return dict(reasoning=tuple(reasoning), text=tuple(text), calls=tuple(calls))


def test_responses_api_streamed_and_not(server, client):
    ex = next(e for e in QA if e.reasoning_effort is None)  # the request sets no effort
    question = ex.messages[0]["content"]
    full = _responses(server, client, False, input=question)
    assert full == dict(reasoning=(ex.reasoning,), text=(ex.content,), calls=())
    assert _responses(server, client, True, input=question) == full

    call_ex = corpus.demo_example()[0]
    tools = [{"type": "function", **TOOLS[0]["function"]}]
    q = call_ex.messages[0]["content"]
    full = _responses(server, client, False, input=q, tools=tools)
    assert full == dict(reasoning=(call_ex.reasoning,), text=(), calls=call_ex.tool_calls)
    assert _responses(server, client, True, input=q, tools=tools) == full


@pytest.mark.parametrize("kind", ["bare_final", "channel_junk", "tool_name_glued_json"])
def test_responses_api_recovers_malformations(server, client, kind):
    from gptoss_dev.malformations import BY_KIND

    m = BY_KIND[kind]
    body = {"input": m.trigger}
    if m.offers_tools:
        body["tools"] = [{"type": "function", **TOOLS[0]["function"]}]
    want = dict(
        reasoning=(m.reasoning,) if m.reasoning else (),
        text=(m.content,) if m.content else (),
        calls=m.tool_calls,
    )
    assert _responses(server, client, False, **body) == want
    assert _responses(server, client, True, **body) == want


# --- concurrency --------------------------------------------------------------------------------


def test_32_concurrent_streams_do_not_mix(server):
    qa = corpus.SMOKE_QA[:32]
    assert len({a for _, a in qa}) == 32, "need 32 distinct answers"

    async def one(client, question):
        reasoning, content, ids = [], [], set()
        stream = await client.chat.completions.create(
            model=server.served_name,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=128,
            stream=True,
        )
        async for chunk in stream:
            ids.add(chunk.id)
            for ch in chunk.choices:
                if getattr(ch.delta, "reasoning", None):
                    reasoning.append(ch.delta.reasoning)
                if ch.delta.content:
                    content.append(ch.delta.content)
        return "".join(reasoning), "".join(content), ids

    async def main():
        client = server.async_openai()
        return await asyncio.gather(*(one(client, q) for q, _ in qa))

    results = asyncio.run(main())
    all_ids = set()
    for (question, answer), (reasoning, content, ids) in zip(qa, results):
        assert content == answer, question
        assert reasoning == corpus.REASONING_TEMPLATES["medium"].format(answer=answer), question
        assert len(ids) == 1
        all_ids |= ids
    assert len(all_ids) == 32


# --- offline ------------------------------------------------------------------------------------

# vLLM's get_ip() learns the host's address by connect()ing a UDP socket to Google's DNS address
# (8.8.8.8, then 2001:4860:4860::8888): a UDP connect sends no packet. In the namespace it fails at
# once (network unreachable) and vLLM falls back to loopback. Everything else is forbidden.
_UDP_ADDRESS_PROBES = {("8.8.8.8", 80), ("2001:4860:4860::8888", 80)}


def test_offline_nothing_reaches_the_network(server, client):
    """Runs last in the module: covers start-up and every request above (and whatever other modules
    sent the shared server before)."""
    audit = server.audit()
    for rec in audit:
        if rec["event"] == "socket.connect" and rec["type"] == 2:  # SOCK_DGRAM
            assert tuple(rec["addr"]) in _UDP_ADDRESS_PROBES, rec
        else:
            pytest.fail(f"network attempt: {rec}")
    log = server.log_path.read_text(errors="replace")
    assert "HarmonyError" not in log and "Traceback" not in log
    # The audit proves nothing tried; the namespace proves nothing could have succeeded.
    assert server.offline_namespace, "`unshare -n` is not permitted on this machine (needs root)"
