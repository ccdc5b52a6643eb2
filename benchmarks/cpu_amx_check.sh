#!/usr/bin/env bash
# The native MoE's many-token paths on the lent GPU machine's host CPU, in one call (~3 minutes):
# that host may be an Intel Xeon with AMX (Sapphire Rapids or later), the one kind of CPU where the
# MoE's AMX path has not been timed (issue 11). Needs torch and g++ only (no vLLM, no GPU).
#   1. the CPU (lscpu, flags) into cpu.txt: worth keeping whatever it is;
#   2. on AMX CPUs, the AMX unit tests on the real instructions (test_cpu_native.py -k amx);
#   3. benchmarks/cpu_moe_ab.py at 20b shapes, experts from DRAM, one process: our build's AVX512_BF16
#      path vs its AMX path (AMX CPUs) vs torch_bf16 (a bf16 MoE of stock vLLM-CPU's kind on oneDNN,
#      which multiplies on AMX tiles where it can): 64 and 512 tokens on 2 threads, 512 on all cores.
# Everything lands in $OUT (ab_*.json, logs); a failed step does not stop the next.
#
#   device run:  command "bash benchmarks/cpu_amx_check.sh", timeout_s 300 (alone, or after
#                gpu_check.sh in the same command when the lease has the time)
#   CPU dry run: QUICK=1 OUT=/tmp/cac bash benchmarks/cpu_amx_check.sh   (small shapes, any x86 CPU)
set -u
OUT="${OUT:-/tmp/cpu_amx_check}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="kernels${PYTHONPATH:+:$PYTHONPATH}"

{ lscpu; echo "nproc: $(nproc)"; g++ --version 2>&1 | head -1
  "$PY" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
} > "$OUT/cpu.txt" 2>&1
grep -E "Model name|^CPU\(s\)|L2 cache|L3 cache" "$OUT/cpu.txt"
if grep -qw amx_bf16 /proc/cpuinfo; then AMX=1; else AMX=0; fi
echo "AMX: $AMX"

if [ "${QUICK:-0}" = 1 ]; then
  SHAPE="--experts 8 --hidden 256 --intermediate 256 --layers 2"; R64=2; R512=2
else
  SHAPE="--experts 32 --hidden 2880 --intermediate 2880 --layers 3"; R64=8; R512=3
fi
REVS="WORKTREE"
if [ "$AMX" = 1 ]; then
  REVS="WORKTREE WORKTREE+amx"
  echo "== AMX unit tests"
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cpu_native.py -k "amx and not setting" \
    > "$OUT/pytest_amx.log" 2>&1
  echo "pytest rc=$?" | tee -a "$OUT/pytest_amx.log"; tail -2 "$OUT/pytest_amx.log"
fi

ab() {  # name, then cpu_moe_ab.py arguments
  local name=$1; shift
  echo "== $name"
  # shellcheck disable=SC2086
  timeout 150 "$PY" benchmarks/cpu_moe_ab.py --revs $REVS --torch-bf16 --no-onednn $SHAPE "$@" \
    --out "$OUT/ab_$name.json" > "$OUT/ab_$name.log" 2>&1
  echo "rc=$?" >> "$OUT/ab_$name.log"; tail -5 "$OUT/ab_$name.log"
}
ab T64_2threads --tokens 64 --rounds "$R64" --threads 2
ab T512_2threads --tokens 512 --rounds "$R512" --threads 2
ab T512_allcores --tokens 512 --rounds "$R512" --threads "$(nproc)"
