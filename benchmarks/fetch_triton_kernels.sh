#!/usr/bin/env bash
# Fetch OpenAI's triton_kernels as vLLM 0.32 ships it (the comparator of benchmarks/gpu_moe.py).
#
#   bash benchmarks/fetch_triton_kernels.sh [DEST]
#
# The CUDA wheel vllm==0.32.0 (PyPI, ~326 MB) carries it under vllm/third_party/triton_kernels/
# (pure Python). This downloads the wheel once into a cache ($VLLM_GPTOSS_CACHE, else
# ~/.cache/vllm-gptoss), extracts only that folder plus the two vLLM files that show how vLLM calls
# it (for reading, never imported), and leaves DEST/triton_kernels importable with DEST on sys.path.
# DEST defaults to benchmarks/.third_party (git-ignored: nothing of it is committed).
# Idempotent: a second run with the folder present does nothing.
set -euo pipefail
VERSION=0.32.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/.third_party}"
cache="${VLLM_GPTOSS_CACHE:-$HOME/.cache/vllm-gptoss}"
if [ -f "$dest/triton_kernels/__init__.py" ] && [ -f "$dest/VLLM_VERSION" ] && [ "$(cat "$dest/VLLM_VERSION")" = "$VERSION" ]; then
  echo "triton_kernels already at $dest/triton_kernels (from vllm $VERSION)"
  exit 0
fi
mkdir -p "$cache" "$dest"
wheel="$(ls "$cache"/vllm-"$VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  py="${PYTHON:-python3}"
  # the CUDA wheel, any x86-64 manylinux tag; no dependencies (nothing of vLLM is installed)
  "$py" -m pip download --no-deps --only-binary=:all: --platform manylinux_2_31_x86_64 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --python-version 3.12 --implementation cp --abi abi3 \
      -d "$cache" "vllm==$VERSION"
  wheel="$(ls "$cache"/vllm-"$VERSION"-*.whl | head -1)"
fi
echo "wheel: $wheel"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
keep = ("vllm/third_party/triton_kernels/",
        "vllm/model_executor/layers/quantization/utils/mxfp4_utils.py",
        "vllm/model_executor/layers/fused_moe/experts/gpt_oss_triton_kernels_moe.py")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(keep)]
    if not any(n.startswith(keep[0]) for n in names):
        sys.exit(f"{wheel} holds no {keep[0]}")
    for n in names:
        z.extract(n, out)
    print(f"extracted {len(names)} files")
PY
rm -rf "$dest/triton_kernels" "$dest/vllm_sources"
mv "$tmp/vllm/third_party/triton_kernels" "$dest/triton_kernels"
mkdir -p "$dest/vllm_sources"
find "$tmp/vllm" -name '*.py' -path '*model_executor*' -exec cp {} "$dest/vllm_sources/" \;
echo "$VERSION" > "$dest/VLLM_VERSION"
echo "triton_kernels at $dest/triton_kernels ($(find "$dest/triton_kernels" -name '*.py' | wc -l) .py files, $(du -sh "$dest/triton_kernels" | cut -f1))"
