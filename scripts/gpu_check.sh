#!/usr/bin/env bash
# GPU checks in one command: CUDA parity for every architecture, re-verification on CUDA, the
# per-architecture CUDA errors, and the CUDA benchmarks (scripts/bench.py and 'rnnexport bench').
#
#   bash scripts/gpu_check.sh
#       on a fresh GPU machine with access to the package index (sets up .venv like the quickstart;
#       torch==2.13.0 from the index is a CUDA build, and onnxruntime-gpu finds its CUDA/cuDNN
#       libraries through onnxruntime.preload_dlls()).
#   RNNEXPORT_PYTHON=python3 RNNEXPORT_WHEELS=wheels bash scripts/gpu_check.sh
#       on a machine without index access whose python3 already has a CUDA torch: missing packages
#       (onnxruntime-gpu, onnxsim, ...) are installed from the wheel folder, rnnexport runs from this tree.
#
# Exits non-zero if the CUDA provider cannot run here: on a GPU machine that is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${RNNEXPORT_PYTHON:-}" ]; then
    PY=$RNNEXPORT_PYTHON
    SITE=${TMPDIR:-/tmp}/rnnexport-site
    if [ -d "${RNNEXPORT_WHEELS:-wheels}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${RNNEXPORT_WHEELS:-wheels}"/*.whl
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    bash scripts/setup.sh
    PY=.venv/bin/python
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'PY'
import onnxruntime, torch
from rnnexport.runtime import probe_provider
probe = probe_provider("cuda")
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), onnxruntime {onnxruntime.__version__}: {probe}")
raise SystemExit(0 if probe.available else f"CUDA provider unavailable on this GPU machine: {probe.reason}")
PY

RESULTS=${TMPDIR:-/tmp}/rnnexport-gpu
"$PY" -m pytest -p no:cacheprovider -v -rs -s tests/scenarios/test_cuda.py tests/runtime/test_providers.py
"$PY" -m rnnexport build --all --device auto --force --out "$RESULTS" --json > "$RESULTS.json"
"$PY" - "$RESULTS.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"{'arch':<24} {'provider':<9} {'status':<8} {'max abs':>10} {'max rel':>10}  tolerance")
for artifact in summary["artifacts"]:
    for provider, r in artifact.get("providers", {}).items():
        tol = r.get("tolerance", {})
        print(f"{artifact['arch']:<24} {provider.removesuffix('ExecutionProvider'):<9} {r['status']:<8} "
              f"{r.get('max_abs_error', float('nan')):>10.2e} {r.get('max_rel_error', float('nan')):>10.2e}  {tol}")
raise SystemExit(0 if summary["passed"] else 1)
PY
# Speed on the GPU: every architecture at both sizes (CUDA provider vs PyTorch on CUDA vs the plain
# export), then 'rnnexport bench' on one shipped artifact as a user would run it. Reported, not
# held to targets: the figures depend on the GPU.
"$PY" scripts/bench.py --device cuda --skip-build --rounds 3 --json "$RESULTS-bench.json" || true
"$PY" -m rnnexport bench "$RESULTS/attention" --device cuda --batch 1,64 --seq 1,100,1000 \
    --json > "$RESULTS-bench-attention.json"
echo "GPU checks done: $RESULTS.json, $RESULTS-bench.json, $RESULTS-bench-attention.json"
