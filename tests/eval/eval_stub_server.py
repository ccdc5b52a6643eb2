"""A stdlib stand-in for vLLM's /v1/chat/completions on loopback, for tests that need no engine.

`answer(body) -> (content, reasoning)` decides each reply; every request body is recorded, so a
test can check what lm-eval sent (reasoning_effort, stop, max_tokens, seed).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class StubServer:
    def __init__(self, answer: Callable[[dict], tuple[str | None, str | None]], model: str = "stub-gpt-oss"):
        self.answer = answer
        self.model = model
        self.requests: list[dict] = []
        self.streamed = 0
        self.token_seconds = 0.002
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict):
                """Server-sent events as vLLM streams them: a role chunk, one chunk per token
                (reasoning first, then content), a usage chunk, [DONE]. With ignore_eos the reply
                is exactly max_completion_tokens tokens long."""
                n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(payload):
                    self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                    self.wfile.flush()

                def chunk(delta):
                    event({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

                chunk({"role": "assistant", "content": ""})
                for i in range(n):
                    time.sleep(stub.token_seconds)
                    chunk({"reasoning": "think "} if i < n // 2 else {"content": "word "})
                event({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                with stub._lock:
                    stub.streamed += 1

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                if body.get("stream"):
                    self._stream(body)
                    return
                content, reasoning = stub.answer(body)
                message = {"role": "assistant", "content": content, "reasoning": reasoning}
                self._send(
                    200,
                    {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def stub_server(answer, model: str = "stub-gpt-oss"):
    with StubServer(answer, model) as s:
        yield s
