"""Structured output stays JSON: the grammar vLLM compiles for a harmony request, checked with
xgrammar itself (the engine's backend) over the real o200k_harmony tokenizer, built as vLLM builds it.

vLLM 0.32 turns response_format / tool_choice into an xgrammar structural tag. xgrammar sees no
special tokens in o200k_harmony, so it matches `<|end|>`, `<|start|>`... by their text, which a JSON
string admits: with vLLM's own tag a "JSON" final message can run on into harmony markup and never
close (observed with the fixture model). Our `adjust_request` excludes the control-token text from
every JSON part. Here: vLLM's tag accepts the escape, ours rejects it at the control token and still
accepts ordinary JSON with escapes and a lone "<".
"""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from gptoss_dev.fixture.tokenizer import VOCAB_SIZE, write_tokenizer
from gptoss_dev.malformations import TOOLS
from vllm_gptoss.harmony.parser import default_encoding
from gptoss_dev.stock_compare import EncodingTokenizer, parser_classes
from vllm_gptoss.harmony.vllm_parsers import HARMONY_CONTROL_TEXT, seal_json_content

STOCK, OURS = parser_classes()
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}
ANALYSIS = "<|channel|>analysis<|message|>Known fact.<|end|><|start|>assistant"
FINAL_JSON = "<|channel|>final <|constrain|>json<|message|>"
CALL = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(str(write_tokenizer(tmp_path_factory.mktemp("tokenizer"))))
    # as vllm/v1/structured_output/backend_xgrammar.py builds it for a Hugging Face tokenizer
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB_SIZE)
    return xgr.GrammarCompiler(info)


def tag_of(parser_cls, **body) -> str:
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Largest city?"}], **body)
    req = parser_cls(EncodingTokenizer(), req.tools).adjust_request(req)
    return req.structured_outputs.structural_tag


def run(compiler, tag: str, text: str) -> tuple[int | None, bool]:
    """(index of the first rejected token or None, whether the grammar completed)."""
    ids = default_encoding()[0].encode(text, allowed_special="all")
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(tag))
    for i, t in enumerate(ids):
        if not matcher.accept_token(t):
            return i, False
    return None, matcher.is_terminated()


def token_index(text: str, marker: str, after: str) -> int:
    """Index of the token that starts the first `marker` (a control token) after `after` in `text`."""
    enc = default_encoding()[0]
    return len(enc.encode(text[: text.index(marker, text.index(after))], allowed_special="all"))


RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


# <|return|> is missing: it is the tokenizer's EOS, which xgrammar already refuses under a constraint.
@pytest.mark.parametrize("marker", ["<|end|>", "<|start|>", "<|channel|>", "<|message|>", "<|call|>"])
def test_json_final_message_cannot_run_into_markup(compiler, marker):
    escape = ANALYSIS + FINAL_JSON + '{"city": "Cairo' + marker + "assistant<|channel|>final<|message|>more"
    stock_reject, _ = run(compiler, tag_of(STOCK, response_format=RESPONSE_FORMAT), escape)
    ours_reject, _ = run(compiler, tag_of(OURS, response_format=RESPONSE_FORMAT), escape)
    assert stock_reject is None, "vLLM's own tag rejects the escape now: the seal may be unneeded"
    assert ours_reject == token_index(escape, marker, after='"Cairo')


def test_sealed_json_still_takes_escapes_and_a_lone_angle_bracket(compiler):
    ours = tag_of(OURS, response_format=RESPONSE_FORMAT)
    value = 'a < b, <<c, |x|, \\"q\\", line\\nnext, \\u00e9, é'
    good = ANALYSIS + FINAL_JSON + '{"city": "' + value + '", "population": 12}<|return|>'
    assert run(compiler, ours, good) == (None, True)
    parsed = json.loads('{"city": "' + value + '", "population": 12}')
    assert parsed["city"].endswith("é")


def test_tool_call_arguments_sealed_too(compiler):
    body = dict(tools=TOOLS, tool_choice="required")
    escape = CALL + '{"city": "Par<|call|>'
    assert run(compiler, tag_of(STOCK, **body), escape)[0] is None
    assert run(compiler, tag_of(OURS, **body), escape)[0] == token_index(escape, "<|call|>", after='"Par')
    good = CALL + '{"city": "Paris \\"x\\" <b"}'  # every token accepted, as by vLLM's own tag
    assert run(compiler, tag_of(OURS, **body), good) == run(compiler, tag_of(STOCK, **body), good)
    assert run(compiler, tag_of(OURS, **body), good)[0] is None


def test_seal_adds_exactly_the_control_texts_and_keeps_existing_excludes():
    tag = {"type": "structural_tag", "format": {"type": "sequence", "elements": [
        {"type": "json_schema", "json_schema": {"type": "object"}, "excludes": ["</x>"]},
        {"type": "any_text", "excludes": []}]}}
    sealed = json.loads(seal_json_content(json.dumps(tag)))
    first, second = sealed["format"]["elements"]
    assert set(first["excludes"]) == set(HARMONY_CONTROL_TEXT) | {"</x>"}
    assert second == {"type": "any_text", "excludes": []}  # free text (analysis) is left alone
