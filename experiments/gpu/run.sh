#!/usr/bin/env bash
# One prepared device run (issue 17); see experiments/gpu/run.py for the steps and what is written.
#
#   experiments/gpu/run.sh                 # on the GPU machine: figures under $OUT (default runs/gpu), <= 9 min
#   experiments/gpu/run.sh --dry-run DIR   # the same steps on CPU, tiny, with this machine's python (a test runs it)
#
# On the GPU machine (Python 3.12, torch, lightning, onnx preinstalled, nni absent, no network):
# - hwnas is installed with --no-deps (the image's torch stays); where pip cannot build offline, the repository root
#   goes on PYTHONPATH instead (hwnas and search_spaces are plain packages there);
# - the wheels in experiments/gpu/wheels/ (nni 3.0 without nni_node, 0.9 MB, and the small pure-Python
#   requirements the image lacks; rebuilt from installed files by experiments/gpu/pack_wheels.py) are
#   installed with --no-index --no-deps into /tmp/hwnas-gpu-site; should nni still not import, the run records that
#   the one-shot throughput step was skipped and runs the nni-free steps (env, build, zoo).
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
DIR=${OUT:-runs/gpu}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) DIR=$arg ;;
  esac
done
mkdir -p "$DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
  exec "$PY" -m experiments.gpu.run --out "$DIR" --dry-run
fi
{
  echo "== install (hwnas --no-deps; wheels: $(ls experiments/gpu/wheels/*.whl 2>/dev/null | wc -l))"
  SITE=/tmp/hwnas-gpu-site
  if ls experiments/gpu/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
      experiments/gpu/wheels/*.whl || echo "wheel install failed: continuing without them"
  fi
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --no-cache-dir . 2>&1 | tail -3; then
    echo "pip could not install hwnas offline: using the repository root on PYTHONPATH"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import hwnas, sys; print('hwnas from', hwnas.__file__, 'python', sys.version.split()[0])"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
  echo "== run"
  timeout 540 "$PY" -m experiments.gpu.run --out "$DIR"
  echo "exit $?"
} 2>&1 | tee "$DIR/run.log"
