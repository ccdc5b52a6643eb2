"""What each preset promises, asserted on the rendered objects."""

from __future__ import annotations

import re

import pytest

from deploy_helpers import (CHART, DEPLOY, NAMESPACE, PRESETS, VARIANTS, by_kind, env_map, flag_value, one,
                      serving_pod_templates, vllm_container)

GPU = "nvidia.com/gpu"
# Per preset: GPUs per pod, the least cold-start budget the startup probe must allow (seconds), and
# the flags the preset exists for.
EXPECT = {
    "gpt-oss-20b": dict(gpus=1, cold_start=900, model="openai/gpt-oss-20b", flags={}),
    "gpt-oss-120b-h100": dict(gpus=1, cold_start=1800, model="openai/gpt-oss-120b",
                              flags={"--gpu-memory-utilization": "0.95", "--max-num-batched-tokens": "1024"}),
    "gpt-oss-120b-h200": dict(gpus=1, cold_start=1800, model="openai/gpt-oss-120b", flags={}),
    "gpt-oss-120b-tp2": dict(gpus=2, cold_start=1800, model="openai/gpt-oss-120b", flags={"--tensor-parallel-size": "2"}),
    "gpt-oss-120b-multinode": dict(gpus=1, cold_start=1800, model="openai/gpt-oss-120b",
                                   flags={"--pipeline-parallel-size": "2", "--nnodes": "2"}),
    "cpu-fixture": dict(gpus=0, cold_start=300, model="/models/gptoss-fixture",
                        flags={"--dtype": "float32", "--gpu-memory-utilization": "0.25", "--model": "/models/gptoss-fixture"}),
}


def test_every_preset_has_expectations():
    assert sorted(EXPECT) == PRESETS


def dockerfile_uid() -> int:
    match = re.search(r"^ARG APP_UID=(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert match, "deploy/Dockerfile has no ARG APP_UID"
    return int(match.group(1))


def probe_budget(probe: dict) -> int:
    return probe["failureThreshold"] * probe["periodSeconds"]


@pytest.mark.parametrize("preset", PRESETS)
def test_probes_sized_for_cold_start(helm, preset):
    docs = helm.render(preset)
    for role, pod in serving_pod_templates(docs).items():
        c = vllm_container(pod)
        if role == "worker":  # headless multi-node worker: no HTTP server to probe
            assert not any(k in c for k in ("startupProbe", "readinessProbe", "livenessProbe", "ports")), role
            continue
        port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            assert probe["httpGet"]["path"] == "/health", (kind, probe)
            assert probe["httpGet"]["port"] in port_names, (kind, probe)
        startup, liveness = probe_budget(c["startupProbe"]), probe_budget(c["livenessProbe"])
        assert startup >= EXPECT[preset]["cold_start"], f"{preset}: startup budget {startup}s < {EXPECT[preset]['cold_start']}s"
        assert 30 <= liveness < startup, f"{preset}: liveness budget {liveness}s vs startup {startup}s"
        assert port_names["http"] == int(flag_value(c["args"], "--port"))


def test_startup_failure_threshold_is_ceil_of_budget(helm):
    docs = helm.render("gpt-oss-20b", ("probes.startup.maxColdStartSeconds=1205", "probes.startup.periodSeconds=10"))
    probe = vllm_container(serving_pod_templates(docs)["single"])["startupProbe"]
    assert probe["failureThreshold"] == 121 and probe["periodSeconds"] == 10


@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_requests_and_limits(helm, preset):
    docs = helm.render(preset)
    want = EXPECT[preset]["gpus"]
    for role, pod in serving_pod_templates(docs).items():
        res = vllm_container(pod)["resources"]
        if want == 0:
            assert GPU not in res.get("requests", {}) and GPU not in res.get("limits", {}), res
            assert "nvidia" not in str(docs), "CPU preset mentions nvidia"
        else:
            assert res["limits"][GPU] == str(want) and res["requests"][GPU] == str(want), (role, res)
        assert "memory" in res["limits"] and "cpu" in res["requests"], res
    if want:
        c = vllm_container(next(iter(serving_pod_templates(docs).values())))
        tp = int(flag_value(c["args"], "--tensor-parallel-size") or 1)
        pp = int(flag_value(c["args"], "--pipeline-parallel-size") or 1)
        nodes = int(flag_value(c["args"], "--nnodes") or 1)
        assert tp * pp == want * nodes, f"{preset}: TP {tp} x PP {pp} != {want} GPUs x {nodes} nodes"


@pytest.mark.parametrize("preset", PRESETS)
def test_dev_shm_is_memory_backed(helm, preset):
    for role, pod in serving_pod_templates(helm.render(preset)).items():
        mounts = {m["mountPath"]: m["name"] for m in vllm_container(pod)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        shm = volumes[mounts["/dev/shm"]]
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"], (role, shm)


@pytest.mark.parametrize("preset", PRESETS)
def test_model_cache(helm, preset):
    docs = helm.render(preset)
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    for role, pod in serving_pod_templates(docs).items():
        c = vllm_container(pod)
        env = env_map(c)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        if preset == "cpu-fixture":  # the model is baked into the image; nothing to cache
            assert not pvcs and "model-cache" not in volumes
            assert env["HF_HUB_OFFLINE"]["value"] == "1"
            continue
        assert len(pvcs) == 1
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == pvcs[0]["metadata"]["name"]
        assert env["HF_HOME"]["value"].startswith(mounts["model-cache"] + "/")
        assert env["VLLM_CACHE_ROOT"]["value"].startswith(mounts["model-cache"] + "/"), "compile cache should persist"
        # weights come through the prefetch init container; vLLM itself then never calls the Hub
        init = {i["name"]: i for i in pod["spec"].get("initContainers", [])}["prefetch-weights"]
        init_env = env_map(init)
        assert init_env["MODEL_ID"]["value"] == EXPECT[preset]["model"]
        assert "original/*" in init_env["IGNORE_PATTERNS"]["value"]
        assert init_env["HF_HOME"]["value"] == env["HF_HOME"]["value"]
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
    if pvcs and preset != "gpt-oss-120b-multinode":
        assert pvcs[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    if preset == "gpt-oss-120b-multinode":
        assert pvcs[0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_existing_claim_and_secrets_are_referenced_not_created(helm):
    docs = helm.render(*VARIANTS["existing-secrets"])
    assert not by_kind(docs, "PersistentVolumeClaim") and not by_kind(docs, "Secret")
    pod = serving_pod_templates(docs)["single"]
    env = env_map(vllm_container(pod))
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "gpt-oss-api-key", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["model-cache"]["persistentVolumeClaim"]["claimName"] == "models"


@pytest.mark.parametrize("preset", PRESETS)
def test_security_context_non_root(helm, preset):
    uid = dockerfile_uid()
    docs = helm.render(preset)
    for role, pod in serving_pod_templates(docs).items():
        psc = pod["spec"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == uid and psc["runAsUser"] != 0, psc
        assert psc["fsGroup"] == uid, "the cache volume must be writable by the image user"
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["spec"]["automountServiceAccountToken"] is False
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (c["name"], sc)


@pytest.mark.parametrize("preset", PRESETS)
def test_api_key_from_secret(helm, preset):
    docs = helm.render(preset)
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    for role, pod in serving_pod_templates(docs).items():
        c = vllm_container(pod)
        ref = env_map(c)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["data"], "the referenced Secret key is not rendered"
        assert "--api-key" not in c["args"], "the key must not appear on the command line"
        assert "value" not in env_map(c)["VLLM_API_KEY"]


def test_api_key_value_is_used_when_given(helm):
    import base64
    docs = helm.render("gpt-oss-20b", ("apiKey.value=s3cret-key",))
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == "s3cret-key"


@pytest.mark.parametrize("preset", PRESETS)
def test_serving_flags(helm, preset):
    docs = helm.render(preset)
    for role, pod in serving_pod_templates(docs).items():
        c = vllm_container(pod)
        args, env = c["args"], env_map(c)
        assert flag_value(args, "--reasoning-parser") == "openai_gptoss"
        assert flag_value(args, "--tool-call-parser") == "openai"
        assert "--enable-auto-tool-choice" in args
        assert "VLLM_GPTOSS_DISABLE" not in env, "the plugin must be on"
        for flag, value in EXPECT[preset]["flags"].items():
            assert flag_value(args, flag) == value, f"{preset}: {flag} is {flag_value(args, flag)!r}, expected {value!r}"
        model = flag_value(args, "--model") if preset == "cpu-fixture" else args[0]
        assert model == EXPECT[preset]["model"]
        if preset == "cpu-fixture":
            assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
            assert env["VLLM_TARGET_DEVICE"]["value"] == "cpu" and env["VLLM_CPU_KVCACHE_SPACE"]["value"] == "1"
            assert c["image"].startswith("vllm-gptoss-cpu:")
        else:
            assert c["command"] == ["vllm", "serve"]


def test_plugin_can_be_switched_off(helm):
    c = vllm_container(serving_pod_templates(helm.render(*VARIANTS["plugin-off"]))["single"])
    assert env_map(c)["VLLM_GPTOSS_DISABLE"]["value"] == "1"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_images_are_pinned(helm, variant):
    docs = helm.render(*VARIANTS[variant])
    for doc in docs:
        for image in re.findall(r"'image': '([^']+)'", str(doc)):
            assert "@sha256:" in image or (":" in image and not image.endswith(":latest")), image


@pytest.mark.parametrize("preset", PRESETS)
def test_prometheus_scraping_and_pdb(helm, preset):
    docs = helm.render(preset)
    pods = serving_pod_templates(docs)
    serving = pods.get("single") or pods["leader"]
    ann = serving["metadata"]["annotations"]
    port = str(vllm_container(serving)["ports"][0]["containerPort"])
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == port and ann["prometheus.io/path"] == "/metrics"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] >= 1, "a PDB with no allowed disruption blocks node drains"
    for pod in pods.values():
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())


@pytest.mark.parametrize("preset", PRESETS)
def test_service_reaches_the_api_server(helm, preset):
    docs = helm.render(preset)
    svc = one(docs, "Service")
    pods = serving_pod_templates(docs)
    serving = pods.get("single") or pods["leader"]
    assert all(serving["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    if "worker" in pods:  # the headless workers serve no HTTP: the Service must not select them
        assert not all(pods["worker"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in vllm_container(serving)["ports"]}


def test_service_monitor(helm):
    docs = helm.render(*VARIANTS["servicemonitor"])
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_keda_scales_on_waiting_requests(helm):
    docs = helm.render(*VARIANTS["keda"])
    so, deploy = one(docs, "ScaledObject"), one(docs, "Deployment")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]}
    query = so["spec"]["triggers"][0]["metadata"]["query"]
    assert query == f'sum(vllm:num_requests_waiting{{model_name="openai/gpt-oss-20b",namespace="{NAMESPACE}"}})'
    assert "replicas" not in deploy["spec"], "the autoscaler owns the replica count"
    assert not by_kind(docs, "HorizontalPodAutoscaler")


def test_hpa_scales_on_waiting_requests(helm):
    docs = helm.render(*VARIANTS["hpa"])
    hpa, deploy = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert "replicas" not in deploy["spec"]


def test_multinode_leader_worker_set(helm):
    docs = helm.render(*VARIANTS["multinode-keda"])
    assert not by_kind(docs, "Deployment")
    lws = one(docs, "LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    pods = serving_pod_templates(docs)
    leader, worker = vllm_container(pods["leader"])["args"], vllm_container(pods["worker"])["args"]
    assert flag_value(leader, "--node-rank") == "0" and "--headless" not in leader
    assert flag_value(worker, "--node-rank") == "$(LWS_WORKER_INDEX)" and "--headless" in worker
    for args in (leader, worker):
        assert flag_value(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert flag_value(args, "--nnodes") == "2"
        assert args[0] == "openai/gpt-oss-120b"
    so = one(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet" and so["spec"]["scaleTargetRef"]["name"] == lws["metadata"]["name"]
    assert "replicas" not in lws["spec"]


def test_extra_args_and_env(helm):
    c = vllm_container(serving_pod_templates(helm.render(*VARIANTS["extras"]))["single"])
    assert c["args"][-2:] == ["--max-log-len", "100"]
    assert env_map(c)["VLLM_LOGGING_LEVEL"] == {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}
    assert flag_value(c["args"], "--served-model-name") == "gpt-oss"


def test_air_gapped_variant(helm):
    docs = helm.render(*VARIANTS["air-gapped"])
    pod = serving_pod_templates(docs)["single"]
    env = env_map(vllm_container(pod))
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["VLLM_NO_USAGE_STATS"]["value"] == "1"
    assert not pod["spec"].get("initContainers"), "no download step in an air-gapped cluster"
    assert flag_value(vllm_container(pod)["args"], "--revision") == "0123456789abcdef0123456789abcdef01234567"


def test_drain_handling(helm):
    pod = serving_pod_templates(helm.render("gpt-oss-120b-h100"))["single"]
    c = vllm_container(pod)
    drain = int(flag_value(c["args"], "--shutdown-timeout"))
    assert drain > 0 and pod["spec"]["terminationGracePeriodSeconds"] > drain + 5
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_helm_test_pod_checks_the_served_model(helm):
    docs = helm.render("cpu-fixture")
    pods = [d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    env = env_map(pods[0]["spec"]["containers"][0])
    assert env["SERVED_MODEL"]["value"] == "gptoss-fixture"
    assert env["BASE_URL"]["value"] == f"http://{one(docs, 'Service')['metadata']['name']}:8000"
    assert "secretKeyRef" in env["VLLM_API_KEY"]["valueFrom"]


def test_readme_documents_every_preset():
    readme = (DEPLOY / "README.md").read_text()
    for preset in PRESETS:
        assert f"presets/{preset}.yaml" in readme, f"deploy/README.md does not mention presets/{preset}.yaml"
    assert (CHART / "values.schema.json").exists()
