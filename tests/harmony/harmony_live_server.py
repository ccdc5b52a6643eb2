"""Start vLLM's real OpenAI server for the live harmony tests: offline, audited, on a Unix socket.

The server runs inside a fresh network namespace (``unshare -n``) where only loopback exists, so
nothing it does can reach a network; clients reach it through a Unix-domain socket (``--uds``),
which lives in the shared filesystem. On top of that an audit hook (``sitecustomize`` on
PYTHONPATH, inherited by the engine-core process) records every attempt to resolve a name or open
a connection to anything that is not loopback, so a test can also show that nothing even tried.
Where ``unshare`` is not allowed (not root), the server runs on the host with the audit only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

AUDIT_SITECUSTOMIZE = r'''
import os, socket, sys, json
_log = os.environ.get("VLLM_GPTOSS_NET_AUDIT")
_LOOP = ("127.", "::1", "localhost", "0.0.0.0", "::")
def _is_local(host):
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return any(str(host).startswith(p) for p in _LOOP)
def _hook(event, args):
    try:
        rec = None
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, addr = args[0], args[-1]
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(addr[0]):
                rec = {"event": event, "addr": list(addr)[:2], "type": int(sock.type)}
        elif event == "socket.getaddrinfo":
            if not _is_local(args[0]):
                rec = {"event": event, "host": str(args[0])}
        elif event == "socket.gethostbyname":
            if not _is_local(args[0]):
                rec = {"event": event, "host": str(args[0])}
        if rec is not None:
            rec["pid"] = os.getpid()
            with open(_log, "a") as f:
                f.write(json.dumps(rec) + "\n")
    except Exception:
        pass
if _log:
    sys.addaudithook(_hook)
'''


def can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    r = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=20
    )
    return r.returncode == 0


class LiveServer:
    def __init__(self, model: str, extra_args=(), env=None, name="harmony"):
        self.dir = Path(tempfile.mkdtemp(prefix=f"vllm-gptoss-{name}-"))
        self.sock = str(self.dir / "api.sock")
        self.log_path = self.dir / "server.log"
        self.audit_path = self.dir / "net_audit.jsonl"
        self.audit_path.touch()
        (self.dir / "site").mkdir()
        (self.dir / "site" / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
        self.offline_namespace = can_unshare()
        self.model = model
        self.served_name = "gpt-oss-fixture"
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--served-model-name", self.served_name,
            "--uds", self.sock,
            "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "2048", "--max-num-seqs", "32",
            "--gpu-memory-utilization", "0.25",
            "--enable-auto-tool-choice", "--tool-call-parser", "openai",
            *extra_args,
        ]  # fmt: skip
        full_env = dict(os.environ)
        full_env.update(
            VLLM_TARGET_DEVICE="cpu",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_GPTOSS_NET_AUDIT=str(self.audit_path),
            PYTHONPATH=os.pathsep.join(
                [str(self.dir / "site"), full_env.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
        )
        # No HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: the namespace, not a flag, keeps it offline.
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            full_env.pop(var, None)
        full_env.update(env or {})
        if self.offline_namespace:
            quoted = " ".join(_q(c) for c in cmd)
            cmd = ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {quoted}"]
        self.cmd = cmd
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.time()
        self.ready_s = None

    def client_http(self, **kw) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.sock), base_url="http://localhost", **kw
        )

    def async_http(self, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.sock), base_url="http://localhost", **kw
        )

    def openai(self, **kw):
        import openai

        return openai.OpenAI(
            base_url="http://localhost/v1", api_key="none", http_client=self.client_http(timeout=300), **kw
        )

    def async_openai(self, **kw):
        import openai

        return openai.AsyncOpenAI(
            base_url="http://localhost/v1", api_key="none", http_client=self.async_http(timeout=600), **kw
        )

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            if os.path.exists(self.sock):
                try:
                    with self.client_http(timeout=5) as c:
                        if c.get("/health").status_code == 200:
                            self.ready_s = time.time() - self.started_at
                            return
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=30)
        self._log.close()
        if not os.environ.get("HARMONY_KEEP_SERVER_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)


def fixture_model() -> str:
    """The model the live tests serve: the trained fixture (gptoss_dev.fixture), built on first use."""
    path = os.environ.get("HARMONY_TEST_MODEL")  # developer aid: any gpt-oss checkpoint dir
    if not path:
        from gptoss_dev.fixture import ensure_fixture

        path = ensure_fixture()
    return str(path)


@contextmanager
def serving(name: str, extra_args=(), env=None, ready_timeout: float = 900):
    """A ready LiveServer of the fixture model (system date pinned to the one it was trained with)
    for the block; stopped after it. Every live harmony server starts here."""
    from gptoss_dev.fixture import corpus

    s = LiveServer(
        fixture_model(), extra_args, env={corpus.DATE_ENV: corpus.FIXTURE_DATE, **(env or {})}, name=name
    )
    try:
        s.wait_ready(ready_timeout)
        yield s
    finally:
        s.stop()


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)
