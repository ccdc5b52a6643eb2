"""The entry point: registered with vLLM, idempotent, cheap, CUDA-free, and switchable off."""

import subprocess
import sys
from importlib.metadata import entry_points

SCRIPT = r"""
import os, sys, time
import torch
t = time.perf_counter()
import vllm_gptoss
vllm_gptoss.register(); vllm_gptoss.register()
from vllm import ModelRegistry
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
cls = ModelRegistry._try_load_model_cls("GptOssForCausalLM")
print("MODEL", f"{cls.__module__}:{cls.__name__}")
print("QUANT", "vllm_gptoss_mxfp4" in QUANTIZATION_METHODS)
print("CUDA_INIT", torch.cuda.is_initialized())
"""


def _run(env_extra):
    import os

    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0].isupper())


def test_entry_point_is_declared():
    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.value == "vllm_gptoss:register"]
    assert len(eps) == 1


def test_register_replaces_builtin_model_and_adds_quant_method():
    out = _run({})
    assert out["MODEL"] == "vllm_gptoss.model:GptOssForCausalLM"
    assert out["QUANT"] == "True"
    assert out["CUDA_INIT"] == "False"


def test_disable_switch_keeps_vllm_builtin():
    out = _run({"VLLM_GPTOSS_DISABLE": "1"})
    assert out["MODEL"] == "vllm.model_executor.models.gpt_oss:GptOssForCausalLM"
    assert out["QUANT"] == "False"
