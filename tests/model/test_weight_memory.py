"""Parameter bytes our model allocates for the released configs (counted on the meta device)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The model card: gpt-oss-20b fits 16 GB, gpt-oss-120b one 80 GB GPU. The resident bytes
# are 13.8 GB and 65.3 GB for MXFP4 experts + bf16 rest.
LIMITS_GB = {"gpt-oss-20b": 13.8, "gpt-oss-120b": 65.3}
LAYERS_EXPERTS = {"gpt-oss-20b": (24, 32), "gpt-oss-120b": (36, 128)}


def test_weight_bytes_fit_the_model_card(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, "-m", "gptoss_dev.weight_memory", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout)
    res = json.loads(out.read_text())
    H = I = 2880
    for name, limit in LIMITS_GB.items():
        layers, E = LAYERS_EXPERTS[name]
        # MXFP4: half a byte per weight + one E8M0 byte per 32 weights; bf16 biases
        per_expert = (2 * I * H + H * I) * (0.5 + 1 / 32) + (2 * I + H) * 2
        assert res[name]["experts"] == layers * E * per_expert, "experts are not held in MXFP4"
        assert res[name]["total"] / 1e9 <= limit
