"""Bytes of parameters our model allocates for a gpt-oss config, counted on the meta device.

Builds `GptOssForCausalLM` from the same parameter-creation code vLLM runs (VllmConfig, our MXFP4
method's create_weights), but on torch's meta device, so nothing is allocated:

    python -m gptoss_dev.weight_memory            # the released 20b and 120b configs
    python -m gptoss_dev.weight_memory CONFIG_DIR  # any directory holding a gpt-oss config.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from collections import defaultdict
from pathlib import Path

from .checkpoint_writer import gpt_oss_config

RELEASED = {
    "gpt-oss-20b": dict(num_hidden_layers=24, num_local_experts=32),
    "gpt-oss-120b": dict(num_hidden_layers=36, num_local_experts=128),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_dist_ready = False


def _init_single_process_dist() -> None:
    global _dist_ready
    if _dist_ready:
        return
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                 distributed_init_method=f"tcp://127.0.0.1:{_free_port()}", backend="gloo")
    initialize_model_parallel(1, 1)
    _dist_ready = True


def parameter_bytes(config_dir: str | os.PathLike, dtype: str = "bfloat16") -> dict[str, int]:
    """{"experts": bytes, "other": bytes, "total": bytes} for the model in config_dir (TP=1)."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs

    import vllm_gptoss

    vllm_gptoss.register()
    vllm_config = EngineArgs(model=str(config_dir), skip_tokenizer_init=True, dtype=dtype,
                             load_format="dummy", enforce_eager=True).create_engine_config()
    from vllm_gptoss.model import GptOssForCausalLM

    with set_current_vllm_config(vllm_config):
        _init_single_process_dist()
        torch.set_default_dtype(vllm_config.model_config.dtype)
        with torch.device("meta"):
            model = GptOssForCausalLM(vllm_config=vllm_config)
    sizes: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        sizes["experts" if ".mlp.experts." in name else "other"] += p.numel() * p.element_size()
    sizes["total"] = sizes["experts"] + sizes["other"]
    return dict(sizes)


def released_config_dir(name: str, root: str) -> Path:
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(gpt_oss_config(**RELEASED[name])))
    return d


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config_dirs", nargs="*", help="directories with a gpt-oss config.json (default: 20b and 120b)")
    ap.add_argument("--json", help="also write the numbers here")
    ns = ap.parse_args(argv)
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [(Path(d).name, Path(d)) for d in ns.config_dirs] or \
               [(n, released_config_dir(n, tmp)) for n in RELEASED]
        for name, d in dirs:
            results[name] = parameter_bytes(d)
    print(f"{'model':<16}{'experts GB':>12}{'other GB':>12}{'total GB':>12}")
    for name, s in results.items():
        print(f"{name:<16}{s['experts'] / 1e9:>12.2f}{s['other'] / 1e9:>12.2f}{s['total'] / 1e9:>12.2f}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
