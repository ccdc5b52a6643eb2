"""One live vLLM server of the fixture model for every harmony module that talks to one.

Start-up costs 1-2 minutes on the CPU, so the modules share a session-scoped ``server``: the flags
every module needs (harmony_live_server.LiveServer: ``--enable-auto-tool-choice --tool-call-parser
openai``, vLLM's default reasoning parser, offline in a network namespace, on a Unix socket) plus
the request log test_prompt_fidelity.py reads the Responses prompt from (``--enable-log-requests``,
with vLLM's request logger alone at debug level: the rest of vLLM logs at its default level, so a
debug line elsewhere, e.g. a traceback vLLM logs on purpose, is not mistaken for a failure). Tests that read counters from /metrics compare before and after within the test;
tests that read the server log or the network audit read all of it, whatever ran before them.
A module that needs a server-wide setting of its own starts its own through
harmony_live_server.serving (test_harmony_server_builtin.py).

The shared server is stopped after the last test that uses it, not at the end of the session, so
it does not sit on memory while the rest of the suite runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from harmony_live_server import serving

HERE = Path(__file__).resolve().parent

_shared: dict = {}  # "server": the running shared server; "last": node id of its last user


def request_debug_logging(path: Path) -> Path:
    """A vLLM logging config (VLLM_LOGGING_CONFIG_PATH): vLLM's default, with its request logger at
    debug level (the line with each request's prompt_token_ids is a debug line)."""
    from vllm.entrypoints.serve.utils import request_logger
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    config["handlers"]["vllm"].update(level="DEBUG", formatter="vllm")
    config["loggers"]["vllm"]["level"] = "INFO"
    config["loggers"][request_logger.logger.name] = {"level": "DEBUG"}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    log_config = request_debug_logging(tmp_path_factory.mktemp("harmony-logging") / "logging.json")
    with serving("shared", ["--enable-log-requests"], {"VLLM_LOGGING_CONFIG_PATH": str(log_config)}) as s:
        _shared["server"] = s
        yield s
        _shared.pop("server", None)


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m, --lf) and any reordering
def pytest_collection_modifyitems(items):
    users = [i for i in items if "server" in getattr(i, "fixturenames", ()) and HERE in Path(i.path).parents]
    _shared["last"] = users[-1].nodeid if users else None


def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == _shared.get("last") and "server" in _shared:
        _shared.pop("server").stop()  # the fixture's own stop, at session end, is then a no-op
