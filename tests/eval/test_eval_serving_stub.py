"""eval.serving drives vLLM's benchmark client at each concurrency level and writes sane JSON and
PNG, checked against a streaming stub server (the real server: test_eval_fixture.py)."""

import json

import pytest

from eval import serving

from eval_stub_server import stub_server


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from gptoss_dev.fixture.tokenizer import write_tokenizer

    return str(write_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def test_serving_benchmark_against_a_stub(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output_len, prompts = 20, 6
    with stub_server(lambda body: ("x", None)) as s:
        summary = serving.run(
            serving.parse_args(["--base-url", s.url, "--model", s.model, "--tokenizer", tokenizer_dir,
                                "--concurrency", "1,3", "--num-prompts", str(prompts), "--output-len",
                                str(output_len), "--effort", "low", "--output-dir", str(tmp_path)])
        )
        bodies = list(s.requests)
    # what vLLM's client sent: streamed chat requests with our effort, ignore_eos, the fixed prompts
    assert all(b["stream"] and b["reasoning_effort"] == "low" and b["ignore_eos"] for b in bodies)
    assert all(b["max_completion_tokens"] == output_len for b in bodies)
    fixed = {json.loads(line)["prompt"] for line in open(serving.DEFAULT_PROMPTS)}
    def text(content):  # vLLM's client sends [{"type": "text", "text": ...}]
        return content if isinstance(content, str) else "".join(part["text"] for part in content)

    assert all(text(b["messages"][-1]["content"]) in fixed for b in bodies)
    # 2 levels x (prompts + 1 warm-up)
    assert len(bodies) == 2 * (prompts + 1)

    on_disk = json.loads((tmp_path / "serving.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    levels = on_disk["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3]
    for lv in levels:
        assert lv["completed"] == prompts and lv["failed"] == 0
        assert lv["total_output_tokens"] == prompts * output_len
        assert lv["output_throughput"] > 0
        assert 0 < lv["median_ttft_ms"] <= lv["median_e2el_ms"]
        assert 0 < lv["median_tpot_ms"] <= lv["p99_tpot_ms"]
        # the stub sleeps ~2 ms per token: TPOT cannot be below that
        assert lv["median_tpot_ms"] >= 1.5
    # three requests at once finish the same work sooner than one at a time
    assert levels[1]["output_throughput"] > levels[0]["output_throughput"]
    png = (tmp_path / "serving.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| 3 | 6/0 |" in (tmp_path / "serving.md").read_text()


def test_serving_cli_rejects_bad_levels():
    with pytest.raises(SystemExit):
        serving.parse_args(["--base-url", "http://h", "--model", "m", "--concurrency", "0,4"])
    with pytest.raises(SystemExit):
        serving.parse_args(["--base-url", "http://h", "--model", "m", "--output-len", "1"])
