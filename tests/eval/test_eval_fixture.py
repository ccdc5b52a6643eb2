"""End to end on the CPU: vLLM's OpenAI server with our plugin serves the harmony fixture model;
`python -m eval.accuracy` scores it through lm-eval on the smoke task, and `python -m eval.serving`
benchmarks it through vLLM's benchmark client.

The fixture is trained to answer every smoke question (reasoning on `analysis`, the bare answer on
`final`) at each reasoning effort, on exactly the prompt vLLM renders for the question alone with
VLLM_SYSTEM_START_DATE=FIXTURE_DATE (set here). Greedy decoding therefore must give every answer:
exact_match == 1.0. A parser that leaks reasoning into `content`, drops the final message, or an
extraction that reads the wrong field scores below that and fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from eval import accuracy

pytestmark = pytest.mark.slow

SERVED = "gpt-oss-fixture"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fixture_path():
    path = os.environ.get("EVAL_TEST_MODEL")  # developer aid: any gpt-oss checkpoint directory
    if path:
        return path
    from gptoss_dev.fixture import ensure_fixture  # the fixture is required: no skip

    return str(ensure_fixture())


@pytest.fixture(scope="module")
def server(fixture_path, tmp_path_factory):
    from gptoss_dev.fixture import SERVER_ENV  # pins the system date the fixture was trained with

    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    env.update(SERVER_ENV)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", fixture_path, "--served-model-name", SERVED,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", "16",
        "--gpu-memory-utilization", "0.25",
        "--reasoning-parser", "openai_gptoss",  # ours, registered under vLLM's name by the plugin
    ]  # fmt: skip
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"server not ready in 900 s:\n{log_path.read_text()[-6000:]}")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
        log.close()


def _run(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_TARGET_DEVICE="cpu")
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=accuracy.REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{module} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_smoke_accuracy_through_lm_eval(server, tmp_path, effort):
    r = _run("eval.accuracy", "--base-url", server, "--model", SERVED, "--tasks", "smoke", "--effort", effort,
             "--output-dir", str(tmp_path), "--num-concurrent", "8", "--timeout", "600")
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["rows"]
    samples = [
        json.loads(line)
        for f in tmp_path.glob("*/samples_gptoss_smoke_*.jsonl")
        for line in f.read_text().splitlines()
    ]
    wrong = [(s["doc"]["question"], s["doc"]["answer"], str(s["resps"])[:160]) for s in samples if s["exact_match"] < 1]
    assert row["docs"] == 36 and len(samples) == 36
    assert row["score"] == 100.0, f"effort {effort}: {len(wrong)} wrong, e.g. {wrong[:8]}"
    assert row["no_answer"] == 0.0
    assert "| gptoss_smoke | 100.0 |" in r.stdout  # the printed table


def test_serving_benchmark(server, fixture_path, tmp_path):
    output_len, prompts = 24, 8
    _run("eval.serving", "--base-url", server, "--model", SERVED, "--tokenizer", fixture_path,
         "--concurrency", "1,4", "--num-prompts", str(prompts), "--output-len", str(output_len),
         "--effort", "low", "--output-dir", str(tmp_path))
    summary = json.loads((tmp_path / "serving.json").read_text())
    levels = summary["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    for lv in levels:
        assert lv["completed"] == prompts and lv["failed"] == 0
        # ignore_eos holds every reply to output_len tokens, counted by the server's usage
        assert lv["total_output_tokens"] == prompts * output_len
        assert lv["output_throughput"] > 0 and lv["request_throughput"] > 0
        assert 0 < lv["median_ttft_ms"] <= lv["median_e2el_ms"]
        assert 0 < lv["p99_ttft_ms"] <= lv["p99_e2el_ms"] * 1.0001
        assert 0 < lv["median_tpot_ms"] <= lv["p99_tpot_ms"]
        assert lv["median_tpot_ms"] * (output_len - 1) <= lv["median_e2el_ms"] * 1.5
        assert lv["duration"] * lv["output_throughput"] == pytest.approx(prompts * output_len, rel=1e-6)
    png = (tmp_path / "serving.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["concurrency_1.json", "concurrency_4.json"]
