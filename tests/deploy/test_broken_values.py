"""Broken values stop `helm template` / `helm install` with a message naming the value to fix."""

from __future__ import annotations

import pytest

from deploy_helpers import CHART, RELEASE

CASES = {
    # schema (values.schema.json)
    "typo-in-key": ((), ["server.gpuMemoryUtilisation=0.9"], "Additional property gpuMemoryUtilisation is not allowed"),
    "utilization-above-1": ((), ["json:server.gpuMemoryUtilization=1.5"], "server.gpuMemoryUtilization"),
    "utilization-above-1-from-set": ((), ["server.gpuMemoryUtilization=1.5"], "server.gpuMemoryUtilization"),
    "unknown-device": ((), ["device=tpu"], "device"),
    "tensor-zero": ((), ["parallelism.tensor=0"], "parallelism.tensor"),
    "launcher-typo": ((), ["server.launcher=vllm"], "server.launcher"),
    "bad-access-mode": ((), ["modelCache.accessModes={ReadWriteAlways}"], "modelCache.accessModes"),
    "probe-path": ((), ["probes.startup.path=health"], "probes.startup.path"),
    "hpa-metric-with-colon": ((), ["autoscaling.hpa.metricName=vllm:num_requests_waiting"], "metricName"),
    # cross-field rules (fail in templates)
    "latest-tag": ((), ["image.tag=latest"], 'image.tag is "latest": pin a version tag'),
    "empty-tag": ((), ["image.tag="], 'image.tag is "": pin a version tag'),
    "empty-model": ((), ["model.name= "], "model.name is empty"),
    "rwo-shared-by-replicas": ((), ["replicaCount=3"], "modelCache.accessModes is [ReadWriteOnce] but up to 3 pods"),
    "rwo-shared-by-autoscaler": ((), ["autoscaling.keda.enabled=true"], "up to 4 pods mount the cache"),
    "keda-and-hpa": ((), ["autoscaling.keda.enabled=true", "autoscaling.hpa.enabled=true", "modelCache.accessModes={ReadWriteMany}"],
                     "enable only one"),
    "min-above-max": ((), ["autoscaling.hpa.enabled=true", "autoscaling.hpa.minReplicas=5", "modelCache.accessModes={ReadWriteMany}"],
                      "autoscaling.hpa.minReplicas (5) is larger than autoscaling.hpa.maxReplicas (4)"),
    "nodes-do-not-divide": ((), ["multiNode.enabled=true", "multiNode.nodes=3", "parallelism.tensor=2", "modelCache.accessModes={ReadWriteMany}"],
                            "multiNode.nodes (3) must divide parallelism.tensor x parallelism.pipeline (2 x 1 = 2)"),
    "cpu-multinode": (("cpu-fixture",), ["multiNode.enabled=true"], "multiNode.enabled needs device: gpu"),
    "offline-with-prefetch": ((), ["huggingface.offline=true"], "huggingface.offline is true but modelCache.prefetch.enabled"),
    "prefetch-without-cache": ((), ["modelCache.enabled=false"], "modelCache.prefetch.enabled needs modelCache.enabled"),
    "cold-start-shorter-than-period": ((), ["probes.startup.maxColdStartSeconds=5"], "probes.startup.maxColdStartSeconds (5)"),
    "auto-tool-choice-without-parser": ((), ["server.toolCallParser="], "server.enableAutoToolChoice needs server.toolCallParser"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_values_fail_with_a_clear_message(helm, case):
    presets, sets, message = CASES[case]
    args = ["template", RELEASE, str(CHART)]
    for p in presets:
        args += ["-f", str(CHART / "presets" / f"{p}.yaml")]
    for s in sets:  # "json:" marks --set-json (typed numbers; plain --set passes decimals as strings)
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    proc = helm.run(*args)
    assert proc.returncode != 0, f"{case}: rendering succeeded but should have failed:\n{proc.stdout[:500]}"
    assert message in proc.stderr, f"{case}: expected {message!r} in helm's error:\n{proc.stderr}"
    assert "kind:" not in proc.stdout, "no manifests may come out of a failed render"


def test_decimal_from_set_is_accepted(helm):
    """`--set server.gpuMemoryUtilization=0.95` reaches the schema as a string; it must still work."""
    docs = helm.render("gpt-oss-20b", ("server.gpuMemoryUtilization=0.95",))
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.95"


def test_broken_values_file(helm, tmp_path):
    """A values file with a wrong type (the common copy-paste error) fails before anything renders."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallelism:\n  tensor: two\nresources:\n  limits:\n    memory: lots\n")
    proc = helm.run("template", RELEASE, str(CHART), "-f", str(bad))
    assert proc.returncode != 0
    assert "parallelism.tensor" in proc.stderr and "resources.limits.memory" in proc.stderr, proc.stderr


def test_helm_lint_catches_broken_values(helm, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 80000\n")
    proc = helm.run("lint", str(CHART), "-f", str(bad))
    assert proc.returncode != 0 and "server.port" in proc.stdout + proc.stderr
