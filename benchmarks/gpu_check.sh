#!/usr/bin/env bash
# One call on a lent GPU: the `gpu`-marked kernel tests, then the GPTQ and QuantizedLinear benchmarks on
# CUDA (each with its launch-parameter sweep). About 5 minutes on an H100/H200; every step has its own
# timeout, so a hang in one still leaves the others' results. Logs and JSON go to $OUT; a summary is last.
#
# With the device tool (see /work/.library/device/METHOD.md; build the bundle once with
# `bash ../shared/tools/gpu-bundle.sh`):
#   run(command="source .gpu-bundle/activate.sh && bash benchmarks/gpu_check.sh",
#       carry=[".gpu-bundle"], timeout_s=540)
# Anywhere else: OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

# bitsmith's import names without installing it (the machine has no registry): bitsmith.kernels -> kernels/ ...
if ! $PY -c "import bitsmith.kernels" 2>/dev/null; then
  shim=$(mktemp -d)
  mkdir -p "$shim/bitsmith"
  for part in platform workers kernels migrations; do ln -s "$root/$part" "$shim/bitsmith/$part"; done
  export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
fi
export RAY_USAGE_STATS_ENABLED=0 BITSMITH_NO_PROGRESS=1

step() {  # step NAME SECONDS CMD...: run, log to $OUT/NAME.log, record the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc" >> "$OUT/status.txt"
  tail -n 25 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw \
  --format=csv > "$OUT/gpu.csv" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())" > "$OUT/versions.txt" 2>&1
: > "$OUT/status.txt"
step gpu_tests 240 $PY -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_triton_gptq.py \
  tests/kernels/test_triton_qlinear.py
step gptq_bench 240 $PY benchmarks/gptq_bench.py --device cuda --sweep --repeats 3 --out "$OUT/gptq_bench.json"
step qlinear_bench 180 $PY benchmarks/qlinear_bench.py --sweep --out "$OUT/qlinear_bench.json"

echo "== summary"
cat "$OUT/gpu.csv" "$OUT/versions.txt" "$OUT/status.txt"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -n 3
grep -E "x[0-9]+ +column-by-column" "$OUT/gptq_bench.log"
! grep -q "rc=[^0]" "$OUT/status.txt"
