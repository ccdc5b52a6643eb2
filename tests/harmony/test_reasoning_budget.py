"""`thinking_token_budget` for gpt-oss with no extra flag (vllm_gptoss/harmony/budget.py).

Reasoning is counted here independently of budget.py: the completion token ids vLLM returns
(`return_token_ids`) are split into harmony messages by oss-harmony's tokenizer ids (a plain walk
over `<|channel|>` ... `<|message|>` ... `<|end|>`), and every content token of every `analysis`
message is counted. Unit tests drive the state machine with a scripted "model" whose wishes are
rendered by oss-harmony; the live tests use the fixture model through the real server.
"""

from __future__ import annotations

import json

import pytest
import torch
from openai_harmony import HarmonyEncodingName, load_harmony_encoding

from gptoss_dev.fixture import corpus
from vllm_gptoss.harmony import budget

ENC = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def tok(text: str) -> list[int]:
    return ENC.encode(text, allowed_special="all")


START, END, MESSAGE, CHANNEL, RETURN = (tok(t)[0] for t in
                                        ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>"))
FINAL_OPENING = tok("<|end|><|start|>assistant<|channel|>final<|message|>")


def analysis_tokens(ids: list[int]) -> list[list[int]]:
    """Content token ids of each analysis message (independent of budget.py)."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == CHANNEL:
            j = ids.index(MESSAGE, i) if MESSAGE in ids[i:] else len(ids)
            header = ENC.decode(ids[i + 1 : j])
            k = j + 1
            while k < len(ids) and ids[k] not in (END, RETURN, START) and ids[k] != tok("<|call|>")[0]:
                k += 1
            if header.split(" ")[0] == "analysis":
                out.append(ids[j + 1 : k])
            i = k
        else:
            i += 1
    return out


# --- unit: the state machine against a scripted model --------------------------------------------

SCRIPT = tok(
    "<|channel|>analysis<|message|>The user asks about the weather in a city far away from here."
    "<|end|><|start|>assistant<|channel|>analysis<|message|>Think more about the answer now."
    "<|end|><|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>"
)
ANSWER = tok("It is sunny.<|return|>")


OPEN_FINAL = tok("<|channel|>final<|message|>")


def scripted_wish(out: list[int]) -> int:
    """The next token the scripted model wants: SCRIPT, and ANSWER once a final channel is open."""
    for p in range(len(out) - len(OPEN_FINAL) + 1):
        if out[p : p + len(OPEN_FINAL)] == OPEN_FINAL:
            return ANSWER[len(out) - p - len(OPEN_FINAL)]
    if out == SCRIPT[: len(out)]:
        return SCRIPT[len(out)]
    return SCRIPT[0]  # off script (while the budget forces tokens): a wish the forcing must beat


def run_script(budget_n: int | None) -> list[int]:
    """Greedy decoding of the scripted model, through a BudgetState when a budget is given."""
    state = budget.BudgetState(budget_n) if budget_n is not None else None
    out: list[int] = []
    while not out or out[-1] != RETURN:
        logits = torch.randn(201088)  # o200k_harmony's vocabulary
        logits[scripted_wish(out)] = 100.0
        if state is not None:
            logits = state(out, logits)
        out.append(int(torch.argmax(logits)))
        assert len(out) < 500
    return out


@pytest.mark.parametrize("n", [0, 1, 5, 13, 14, 15, 20])
def test_budget_cuts_reasoning_and_opens_final(n):
    out = run_script(n)
    spent = sum(len(a) for a in analysis_tokens(out))
    assert spent == min(n, sum(len(a) for a in analysis_tokens(SCRIPT)))
    assert out[-len(ANSWER):] == ANSWER
    if n == 0:
        assert out[: 3] == tok("<|channel|>final<|message|>")
        assert analysis_tokens(out) == []


def test_budget_larger_than_reasoning_changes_nothing():
    assert run_script(10_000) == run_script(None) == SCRIPT


def test_bad_budget_values_are_validation_errors():
    from vllm.exceptions import VLLMValidationError

    for bad in (-2, "ten", 1.5, 7.0, True, [3]):
        with pytest.raises(VLLMValidationError) as e:
            budget.check(bad)
        assert e.value.parameter == "thinking_token_budget"
    assert budget.check(0) == 0 and budget.check(7) == 7
    assert budget.check(-1) is None  # vLLM's "unlimited"


def test_server_default_from_env(monkeypatch):
    monkeypatch.setenv(budget.DEFAULT_ENV, "64")
    assert budget.server_default() == 64
    monkeypatch.setenv(budget.DEFAULT_ENV, "lots")
    with pytest.raises(ValueError, match=budget.DEFAULT_ENV):
        budget.server_default()
    monkeypatch.delenv(budget.DEFAULT_ENV)
    assert budget.server_default() is None


def test_engine_config_and_request_wiring(monkeypatch):
    from types import SimpleNamespace

    from vllm.exceptions import VLLMValidationError

    def config(**kw):
        return SimpleNamespace(model_config=SimpleNamespace(
            hf_config=SimpleNamespace(model_type=kw.pop("model_type", "gpt_oss")),
            logits_processors=None, runner_type="generate"), **kw)  # fmt: skip

    monkeypatch.setattr(budget, "_installed", [])
    monkeypatch.setattr(budget, "_v2", [])
    other = config(model_type="llama", speculative_config=None, use_v2_model_runner=False)
    budget.add_to_engine_config(other)
    assert other.model_config.logits_processors is None
    for off in (config(speculative_config=object(), use_v2_model_runner=False),
                config(speculative_config=None, use_v2_model_runner=True)):
        budget.add_to_engine_config(off)
        assert off.model_config.logits_processors is None
    req = SimpleNamespace(thinking_token_budget=5, vllm_xargs=None)
    with pytest.raises(VLLMValidationError, match="Model Runner V2"):
        budget.apply(req)
    monkeypatch.setenv(budget.DEFAULT_ENV, "9")
    assert budget.apply(SimpleNamespace(thinking_token_budget=None, vllm_xargs=None)) is None

    on = config(speculative_config=None, use_v2_model_runner=False)
    budget.add_to_engine_config(on)
    assert on.model_config.logits_processors == [budget.PROCESSOR]
    req = SimpleNamespace(thinking_token_budget=5, vllm_xargs={"other": 1})
    assert budget.apply(req) == 5
    assert req.thinking_token_budget is None and req.vllm_xargs == {"other": 1, budget.XARG: 5}
    req = SimpleNamespace(thinking_token_budget=None, vllm_xargs=None)
    assert budget.apply(req) == 9 and req.vllm_xargs == {budget.XARG: 9}


# --- live server -----------------------------------------------------------------------------------


# `server`: the harmony modules' shared live server (conftest.py); it sets no server-wide default
# budget (budget.DEFAULT_ENV), so a request without one reasons freely.


def _qa():
    # the high-effort smoke question with the longest reasoning in the corpus
    exs = [e for e in corpus.examples() if e.kind == "qa" and e.reasoning]
    return max(exs, key=lambda e: len(tok(e.reasoning)))


def _chat(server, stream=False, **body):
    ex = _qa()
    body = {"model": server.served_name, "temperature": 0, "max_tokens": 300,
            "return_token_ids": True, **ex.request(), **body}  # fmt: skip
    with server.client_http(timeout=300) as c:
        if not stream:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            ch = r.json()["choices"][0]
            return ch["token_ids"], ch["message"].get("reasoning"), ch["message"].get("content")
        ids, reasoning, content = [], [], []
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for ch in json.loads(line[6:]).get("choices") or ():
                        ids += ch.get("token_ids") or []
                        reasoning.append(ch["delta"].get("reasoning") or "")
                        content.append(ch["delta"].get("content") or "")
        return ids, "".join(reasoning) or None, "".join(content) or None


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_live_budget_caps_reasoning_then_answers(server, stream):
    free_ids, free_reasoning, _ = _chat(server)
    free_spent = sum(len(a) for a in analysis_tokens(free_ids))
    assert free_spent > 8, "the fixture must reason for more than the budget tested"
    n = free_spent // 2
    ids, reasoning, content = _chat(server, stream=stream, thinking_token_budget=n)
    spent = analysis_tokens(ids)
    assert sum(len(a) for a in spent) == n  # never more; the model was still reasoning at n
    cut = ids.index(END)
    assert ids[cut : cut + len(FINAL_OPENING)] == FINAL_OPENING  # the final opened right after
    assert content and ids[-1] == RETURN
    assert reasoning and free_reasoning.startswith(reasoning)


@pytest.mark.slow
def test_live_budget_zero_skips_reasoning(server):
    ids, reasoning, content = _chat(server, thinking_token_budget=0)
    assert ids[:3] == tok("<|channel|>final<|message|>")
    assert reasoning is None and content


@pytest.mark.slow
def test_live_budget_larger_than_reasoning_changes_nothing(server):
    free = _chat(server)
    assert _chat(server, thinking_token_budget=10_000) == free


@pytest.mark.slow
def test_live_responses_budget(server):
    ex = _qa()
    with server.client_http(timeout=300) as c:
        r = c.post("/v1/responses", json={
            "model": server.served_name, "temperature": 0, "max_output_tokens": 300,
            "input": ex.messages[-1]["content"], "thinking_token_budget": 0,
            "reasoning": {"effort": ex.reasoning_effort or "medium"},
            "vllm_xargs": {"harmony_raw": True}})  # fmt: skip
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["harmony_raw"].startswith("<|channel|>final<|message|>"), data["harmony_raw"]
        assert "<|channel|>analysis" not in data["harmony_raw"]
        assert [o for o in data["output"] if o["type"] == "reasoning"] == []
        assert any(p["text"] for o in data["output"] if o["type"] == "message" for p in o["content"])
        bad = c.post("/v1/responses", json={"model": server.served_name, "input": "hi",
                                            "thinking_token_budget": 2.5})
        assert bad.status_code == 400 and "thinking_token_budget" in bad.text


@pytest.mark.slow
@pytest.mark.parametrize("bad", [-2, "ten", 2.5])
def test_live_bad_budget_is_a_400_naming_it(server, bad):
    with server.client_http(timeout=60) as c:
        r = c.post("/v1/chat/completions", json={
            "model": server.served_name, "messages": [{"role": "user", "content": "hi"}],
            "thinking_token_budget": bad})  # fmt: skip
    assert r.status_code == 400, r.text
    assert "thinking_token_budget" in r.text
