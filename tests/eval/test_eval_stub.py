"""The accuracy runner end to end through lm-eval against a stub chat server on loopback.

The stub returns a reasoning field and a content field like vLLM's gpt-oss path does. The scores
must come from `content` only: answers that appear only in the reasoning count as wrong.
"""

import csv
import glob
import json
import re

import pytest

import lm_eval  # noqa: E402,F401  (the test extra installs it; a missing install must fail, not skip)

from eval import accuracy  # noqa: E402

from eval_stub_server import stub_server  # noqa: E402

SMOKE = [json.loads(line) for line in (accuracy.REPO / "eval" / "data" / "smoke.jsonl").read_text().splitlines()]
ANSWERS = {row["question"]: row["answer"] for row in SMOKE}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_smoke_scores_content_not_reasoning(tmp_path):
    questions = [row["question"] for row in SMOKE]
    wrong_content = set(questions[:4])  # right answer only in the reasoning
    no_content = {questions[4]}  # budget ran out inside the reasoning: content is null

    def answer(body):
        q = body["messages"][-1]["content"]
        gold = ANSWERS[q]
        reasoning = f"The user asks a factual question. The answer is {gold}."
        if q in wrong_content:
            return "I do not know", reasoning
        if q in no_content:
            return None, reasoning
        return gold, "Thinking about something else entirely."

    with stub_server(answer) as s:
        summary = accuracy.run(
            accuracy.parse_args(["--base-url", s.url, "--model", s.model, "--tasks", "smoke", "--effort", "low",
                                 "--output-dir", str(tmp_path), "--num-concurrent", "4"])
        )
        bodies = list(s.requests)

    n = len(SMOKE)
    row = summary["rows"][0]
    assert row["task"] == "gptoss_smoke"
    assert row["score"] == pytest.approx(100.0 * (n - 5) / n)
    assert row["no_answer"] == pytest.approx(100.0 / n)
    # What lm-eval sent: one request per question, the question alone, effort passed through, no stops.
    assert len(bodies) == n
    assert sorted(b["messages"][-1]["content"] for b in bodies) == sorted(questions)
    for b in bodies:
        assert b["messages"] == [{"role": "user", "content": b["messages"][-1]["content"]}]
        assert b["reasoning_effort"] == "low" and b["stop"] == [] and b["max_tokens"] == 256
        assert b["temperature"] == 0.0 and b["model"] == s.model
    # Files: our summary, our table, lm-eval's results and samples.
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["score"] == row["score"]
    assert "| gptoss_smoke |" in (tmp_path / "summary.md").read_text()
    assert glob.glob(str(tmp_path / "*" / "results_*.json"))
    samples = [json.loads(x) for f in glob.glob(str(tmp_path / "*" / "samples_gptoss_smoke_*.jsonl")) for x in open(f)]
    assert len(samples) == n


def test_card_task_averages_repeats_and_sends_reasoning_safe_requests(tmp_path):
    data = tmp_path / "gpqa.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"])
        w.writerow(["Which particle mediates electromagnetism?", "photon", "gluon", "W boson", "graviton"])
        w.writerow(["What is the pH of pure water at 25 C?", "7", "1", "14", "5"])

    def answer(body):
        prompt = body["messages"][-1]["content"]
        correct = "photon" if "particle" in prompt else "7"
        letter = re.search(r"\(([ABCD])\) " + re.escape(correct) + "\n", prompt).group(1)
        if "particle" in prompt:
            return f"**Answer: {letter}**", "weighing options A to D"
        # The second question: the letter is only in the reasoning; content declares nothing.
        return "It is hard to say.", f"Answer: {letter}"

    with stub_server(answer) as s:
        summary = accuracy.run(
            accuracy.parse_args(["--base-url", s.url + "/v1", "--model", s.model, "--tasks", "gptoss_gpqa_diamond",
                                 "--effort", "high", "--repeats", "3", "--output-dir", str(tmp_path / "out"),
                                 "--num-concurrent", "3"]),
            overrides={"gptoss_gpqa_diamond": {"dataset_kwargs": {"data_files": {"test": str(data)}}}},
        )
        bodies = list(s.requests)

    row = summary["rows"][0]
    assert (row["docs"], row["repeats"]) == (2, 3)
    assert row["score"] == pytest.approx(50.0) and row["no_answer"] == pytest.approx(50.0)
    assert len(bodies) == 6  # every repeat is a real request
    for b in bodies:
        assert b["stop"] == [] and b["max_tokens"] == 32768 and b["reasoning_effort"] == "high"
        assert b["temperature"] == 1.0 and b["top_p"] == 1.0
        assert b["seed"] is None  # lm-eval's fixed seed would make the repeats identical samples
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| gptoss_gpqa_diamond | 50.0 |" in md and "80.1 | 71.5 | 80.9† | 74.2†" in md


def test_runner_refuses_a_model_the_server_does_not_serve(tmp_path):
    with stub_server(lambda body: ("x", None)) as s:
        with pytest.raises(SystemExit, match="is not served"):
            accuracy.run(accuracy.parse_args(["--base-url", s.url, "--model", "other", "--tasks", "smoke",
                                              "--output-dir", str(tmp_path)]))
