"""The seam to vLLM: private or version-specific vLLM API only in vllm_gptoss/vllm_compat.py; every
environment variable from the one table in vllm_gptoss/envs.py; the version check."""

from __future__ import annotations

import ast
import logging
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "vllm_gptoss"
ADAPTER = RUNTIME / "vllm_compat.py"

# vLLM's public model-authoring API: what its docs for out-of-tree models and quantization methods
# import (module -> names, or None for any public name of it).
PUBLIC_VLLM = {
    "vllm": {"ModelRegistry"},
    "vllm.config": None,
    "vllm.distributed": None,
    "vllm.sequence": {"IntermediateTensors"},
    "vllm.exceptions": {"VLLMValidationError"},
    "vllm.sampling_params": {"SamplingParams"},
    "vllm.compilation.decorators": {"support_torch_compile"},
    "vllm.model_executor.layers.attention": None,
    "vllm.model_executor.layers.fused_moe": None,
    "vllm.model_executor.layers.fused_moe.fused_moe_method_base": {"FusedMoEMethodBase"},
    "vllm.model_executor.layers.layernorm": None,
    "vllm.model_executor.layers.linear": None,
    "vllm.model_executor.layers.logits_processor": None,
    "vllm.model_executor.layers.rotary_embedding": None,
    "vllm.model_executor.layers.vocab_parallel_embedding": None,
    "vllm.model_executor.layers.quantization": {"register_quantization_config"},
    "vllm.model_executor.layers.quantization.base_config": {"QuantizationConfig"},
    "vllm.model_executor.models.interfaces": None,
    "vllm.model_executor.models.utils": None,
    "vllm.model_executor.utils": {"set_weight_attrs"},
    "vllm.v1.sample.logits_processor": {"AdapterLogitsProcessor"},  # the custom logits-processor API
}


def runtime_modules():
    return [p for p in sorted(RUNTIME.rglob("*.py")) if p != ADAPTER]


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def private_uses(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "vllm" and a.name not in PUBLIC_VLLM]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vllm":
            allowed = PUBLIC_VLLM.get(node.module, False)
            for a in node.names:
                if allowed is False or a.name.startswith("_") or (allowed is not None and a.name not in allowed):
                    found.append(f"{where} from {node.module} import {a.name}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where} private attribute {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")):
            found.append(f"{where} {node.func.id}(..., {node.args[1].value!r})")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
              and re.fullmatch(r"vllm(\.\w+)+", node.value)):
            found.append(f"{where} vLLM module named by string {node.value!r} (an import hook target?)")
    return found


def test_private_vllm_api_only_in_the_adapter():
    found = [f for p in runtime_modules() for f in private_uses(p)]
    assert not found, "private or version-specific vLLM API outside vllm_compat.py:\n" + "\n".join(found)


def test_the_rule_catches_what_it_forbids(tmp_path):
    # the checker itself, on a module that does each forbidden thing once
    bad = RUNTIME / "_probe_for_test.py"
    bad.write_text(
        "from vllm.parser.harmony import HarmonyParser\n"
        "from vllm.config import _private\n"
        "import vllm.envs\n"
        "def f(m, e):\n"
        "    m._compose_parser\n"
        "    getattr(e, '_inner', None)\n"
        "    hook('vllm.renderers.online_renderer')\n")
    try:
        found = private_uses(bad)
    finally:
        bad.unlink()
    assert len(found) == 6, found


def test_adapter_names_the_vllm_version_it_was_read_from():
    from vllm_gptoss import vllm_compat

    text = ADAPTER.read_text()
    assert all(f"vLLM {v}" in text for v in vllm_compat.TESTED_VLLM)
    # every public function of the adapter says what it touches
    tree = ast.parse(text)
    undocumented = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
                    and not ast.get_docstring(n) and n.name not in ("patch_rendering",)]
    assert not undocumented, undocumented


def test_pinned_vllm_matches_the_tested_release():
    from vllm_gptoss import vllm_compat

    pins = re.findall(r'"vllm(?:-cpu)?==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pins and set(pins) == set(vllm_compat.TESTED_VLLM)
    assert vllm_compat.check_vllm_version()  # the vLLM this suite runs on


def test_version_outside_the_tested_range_warns_once_or_refuses(monkeypatch, caplog):
    from vllm_gptoss import envs, vllm_compat

    monkeypatch.delenv(envs.STRICT_VLLM_VERSION, raising=False)
    with caplog.at_level(logging.WARNING, logger=vllm_compat.__name__):
        assert vllm_compat.check_vllm_version("0.33.1") is False
    warned = [r.getMessage() for r in caplog.records if r.name == vllm_compat.__name__]
    assert len(warned) == 1 and "0.33.1" in warned[0] and "0.32.0" in warned[0], warned
    assert vllm_compat.check_vllm_version("0.32.0+cpu")
    monkeypatch.setenv(envs.STRICT_VLLM_VERSION, "1")
    with pytest.raises(RuntimeError, match=r"0\.32\.0.*found 0\.31\.2"):
        vllm_compat.check_vllm_version("0.31.2")


# --- the environment table ----------------------------------------------------------------------

ENV_NAME = re.compile(r"^VLLM_GPTOSS_[A-Z0-9_]+$")


def test_every_variable_is_defined_once_in_the_table():
    from vllm_gptoss import envs

    literal_homes = {}
    for p in [*RUNTIME.rglob("*.py"), *(ROOT / "dev").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        tree = ast.parse(p.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.match(node.value) \
                    and id(node) not in docs:
                literal_homes.setdefault(node.value, set()).add(p.relative_to(ROOT).as_posix())
    assert set(literal_homes) == set(envs.ENV_VARS), "variables read but not in envs.ENV_VARS, or vice versa"
    elsewhere = {k: v for k, v in literal_homes.items() if v != {"vllm_gptoss/envs.py"}}
    assert not elsewhere, f"variable names spelled outside envs.py (import them from it): {elsewhere}"
    readme = (ROOT / "README.md").read_text()
    assert [v for v in envs.ENV_VARS if f"| `{v}` |" not in readme] == [], "README's table misses variables"


def test_vllm_accepts_every_variable(monkeypatch):
    import vllm_gptoss
    from vllm.platforms import current_platform

    from vllm_gptoss import envs

    for name in envs.ENV_VARS:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("VLLM_GPTOSS_NOT_A_VARIABLE", "1")
    vllm_gptoss.register()
    with pytest.raises(ValueError, match="VLLM_GPTOSS_NOT_A_VARIABLE"):  # the check is live
        current_platform.validate_environ(hard_fail=True)
    monkeypatch.delenv("VLLM_GPTOSS_NOT_A_VARIABLE")
    current_platform.validate_environ(hard_fail=True)  # ours are known: no error
