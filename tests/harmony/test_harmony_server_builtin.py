"""The same malformation triggers against a server that keeps vLLM's built-in harmony parser
(``VLLM_GPTOSS_HARMONY_PARSER=builtin``): the recoveries test_harmony_server.py asserts fail there, and
what stock vLLM returns over HTTP is what STOCK_VS_OURS.md (computed on the token ids) says."""

from __future__ import annotations

import pytest
from harmony_live_server import serving
from test_harmony_server import chat

from gptoss_dev.malformations import MALFORMATIONS, TOOLS
from vllm_gptoss.harmony.parser import default_encoding
from gptoss_dev.stock_compare import (
    EncodingTokenizer,
    chat_request,
    parser_classes,
    run_parse,
    run_stream,
)

pytestmark = pytest.mark.slow

# Where stock vLLM 0.32 loses or garbles what the model said (see STOCK_VS_OURS.md).
STOCK_FAILS = {"doubled_start", "missing_message", "bare_final", "channel_junk", "tool_name_glued_json", "text_after_stop"}


@pytest.fixture(scope="module")
def stock_server():
    # Its own server: the parser choice is server-wide (read when the plugin registers).
    with serving("builtin", env={"VLLM_GPTOSS_HARMONY_PARSER": "builtin"}) as s:
        yield s


def test_builtin_parser_fails_the_recoveries_ours_passes(stock_server):
    client = stock_server.openai()
    stock, _ = parser_classes()
    tok = EncodingTokenizer()
    enc = default_encoding()[0]
    failed = set()
    for m in MALFORMATIONS:
        request = {"messages": [{"role": "user", "content": m.trigger}]}
        if m.offers_tools:
            request["tools"] = TOOLS
        ids = enc.encode(m.completion, allowed_special="all")
        offline = {
            False: run_parse(stock, ids, chat_request(m.offers_tools), tok),
            True: run_stream(stock, ids, chat_request(m.offers_tools), tok),
        }
        for stream in (False, True):
            res = chat(stock_server, client, request, stream)
            got = (res["reasoning"], res["content"], res["tool_calls"])
            # Over HTTP, stock returns what its parser returns on those token ids: the table is real.
            o = offline[stream]
            assert got == (o.reasoning, o.content, o.tool_calls), (m.kind, stream)
            if got != (m.reasoning, m.content, m.tool_calls):
                failed.add(m.kind)
    assert failed == STOCK_FAILS
