"""What the in-process harmony parser tests share (test_harmony_parser.py, test_harmony_properties.py,
test_harmony_regressions.py): oss-harmony's encoding, the tokenizer vLLM hands its parsers, stock
vLLM's parser class and ours (gptoss_dev.stock_compare drives them as vLLM's server does), and the
hypothesis settings of their property tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from gptoss_dev.stock_compare import EncodingTokenizer, parser_classes
from vllm_gptoss.harmony.parser import default_encoding

ENC = default_encoding()[0]
TOK = EncodingTokenizer()
STOCK, OURS = parser_classes()

# Example counts are bounded for CI (2 cores); HARMONY_PROPERTY_SCALE=N multiplies them all for a
# longer local hunt.
SCALE = max(1, int(os.environ.get("HARMONY_PROPERTY_SCALE", "1")))


def ids_of(text: str) -> list[int]:
    return ENC.encode(text, allowed_special="all")


def examples(n: int, *suppress: HealthCheck):
    """hypothesis settings: n examples (times SCALE), no deadline, the given health checks off."""
    return settings(max_examples=n * SCALE, deadline=None, suppress_health_check=list(suppress))


__all__ = ["ENC", "TOK", "STOCK", "OURS", "SCALE", "ids_of", "examples"]
