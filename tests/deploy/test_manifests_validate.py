"""Every preset and feature variant renders to manifests that Kubernetes would accept.

Built-in kinds: kubernetes-validate --strict (unknown fields are errors) against several Kubernetes
versions. Custom resources: the schemas in crd_schemas.py, and the pod templates inside a
LeaderWorkerSet as strict core/v1 PodTemplate objects.
"""

from __future__ import annotations

import copy
import subprocess

import jsonschema
import pytest

from deploy_helpers import KUBE_VERSIONS, VARIANTS, by_kind, import_tool, tool
from crd_schemas import CRD_SCHEMAS, PROMETHEUS_TRIGGER_REQUIRED

BUILTIN_KINDS = {"Deployment", "Service", "Secret", "ServiceAccount", "PersistentVolumeClaim", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "Pod"}


def validate_builtin(kv, doc: dict, kube_version: str) -> None:
    try:
        kv.validate(doc, kube_version, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {kube_version}: {exc.message} "
                    f"at {'/'.join(str(p) for p in exc.path)}", pytrace=False)


def validate_custom(kv, doc: dict, kube_version: str) -> None:
    kind = doc["kind"]
    errors = sorted(jsonschema.Draft7Validator(CRD_SCHEMAS[kind]).iter_errors(doc), key=str)
    assert not errors, f"{kind}/{doc['metadata']['name']}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    if kind == "LeaderWorkerSet":
        for role in ("leaderTemplate", "workerTemplate"):
            template = doc["spec"]["leaderWorkerTemplate"][role]
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}"},
                       "template": template}
            validate_builtin(kv, wrapped, kube_version)
    if kind == "ScaledObject":
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                missing = [k for k in PROMETHEUS_TRIGGER_REQUIRED if not trigger["metadata"].get(k)]
                assert not missing, f"ScaledObject prometheus trigger lacks {missing}"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_are_valid(helm, variant, kube_version):
    kv = import_tool("kubernetes_validate")
    preset, sets = VARIANTS[variant]
    docs = helm.render(preset, sets, kube_version)
    kinds = {d["kind"] for d in docs}
    unknown = kinds - BUILTIN_KINDS - set(CRD_SCHEMAS)
    assert not unknown, f"rendered kinds without a validator: {unknown}"
    for doc in docs:
        if doc["kind"] in CRD_SCHEMAS:
            validate_custom(kv, doc, kube_version)
        else:
            validate_builtin(kv, doc, kube_version)


def test_kubernetes_validate_cli_strict(helm, tmp_path):
    """The command CI users run by hand: kubernetes-validate --strict on the files, rc 0 for every version."""
    files = []
    for variant, (preset, sets) in sorted(VARIANTS.items()):
        path = tmp_path / f"{variant}.yaml"
        path.write_text(helm.render_text(preset, sets))
        files.append(str(path))
    for version in KUBE_VERSIONS:
        proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, "--quiet", *files],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"kubernetes-validate --strict -k {version}:\n{proc.stdout}\n{proc.stderr}"


# ---- the validators are live: the same checks reject broken objects ----------------------------

def test_strict_validation_rejects_an_unknown_field(helm):
    kv = import_tool("kubernetes_validate")
    deployment = copy.deepcopy(by_kind(helm.render("gpt-oss-20b"), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProb"] = {}
    with pytest.raises(kv.ValidationError, match="startupProb"):
        kv.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind, mutate, message", [
    ("ScaledObject", lambda d: d["spec"].pop("triggers"), "'triggers' is a required property"),
    ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("threshold", 5), "5 is not of type 'string'"),
    ("LeaderWorkerSet", lambda d: d["spec"]["leaderWorkerTemplate"].pop("workerTemplate"), "'workerTemplate' is a required property"),
    ("LeaderWorkerSet", lambda d: d["spec"]["leaderWorkerTemplate"].__setitem__("restartPolicy", "Always"), "'Always' is not one of"),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "15 seconds"), "does not match"),
])
def test_crd_schemas_reject_broken_objects(helm, kind, mutate, message):
    docs = helm.render(*VARIANTS["multinode-keda"])
    doc = copy.deepcopy(by_kind(docs, kind)[0])
    mutate(doc)
    errors = [e.message for e in jsonschema.Draft7Validator(CRD_SCHEMAS[kind]).iter_errors(doc)]
    assert any(message in e for e in errors), f"expected an error containing {message!r}, got {errors}"


def test_lws_pod_templates_are_validated_strictly(helm):
    kv = import_tool("kubernetes_validate")
    lws = copy.deepcopy(by_kind(helm.render(*VARIANTS["multinode-keda"]), "LeaderWorkerSet")[0])
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(BaseException, match="resource"):
        validate_custom(kv, lws, KUBE_VERSIONS[-1])
