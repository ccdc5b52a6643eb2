"""vLLM's own `vllm serve` argument parser accepts the command line of every rendered pod.

Ground truth for the flags is vLLM 0.32 itself (installed in the dev venv): a renamed or removed flag,
a bad value type or an invalid combination (validate_parsed_serve_args) fails here, not in a cluster.
"""

from __future__ import annotations

import pytest

from deploy_helpers import VARIANTS, serving_pod_templates, vllm_container

# What LeaderWorkerSet substitutes at run time.
LWS_ENV = {"$(LWS_WORKER_INDEX)": "1", "$(LWS_LEADER_ADDRESS)": "10.0.0.1"}


@pytest.fixture(scope="module")
def vllm_cli():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def parse(args: list[str]):
        ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
        validate_parsed_serve_args(ns)
        return ns

    return parse


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_vllm_parses_rendered_args(helm, vllm_cli, variant):
    for role, pod in serving_pod_templates(helm.render(*VARIANTS[variant])).items():
        c = vllm_container(pod)
        args = [LWS_ENV.get(a, a) for a in c["args"]]
        if c["command"] == ["vllm", "serve"]:  # `vllm serve MODEL ...`: the positional is the model
            args = ["--model", *args]
        ns = vllm_cli(args)
        assert ns.reasoning_parser == "openai_gptoss" and ns.tool_call_parser == "openai" and ns.enable_auto_tool_choice
        assert ns.served_model_name
        if "ports" in c:
            assert ns.port == c["ports"][0]["containerPort"]
        if role == "worker":
            assert ns.headless and ns.node_rank == 1 and ns.master_addr == "10.0.0.1"
        if role == "leader":
            assert not ns.headless and ns.node_rank == 0 and ns.nnodes >= 2


def test_parser_is_live(vllm_cli):
    with pytest.raises(SystemExit):
        vllm_cli(["--model", "m", "--gpu-memory-utilisation", "0.9"])
