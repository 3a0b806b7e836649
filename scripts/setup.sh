#!/usr/bin/env bash
# Create .venv (if missing) and install rnnexport for building, with its test tools. Safe to run again.
#
#   bash scripts/setup.sh                          # python3 (3.10 or newer); ONNX Runtime picked for this machine
#   PYTHON=python3.12 bash scripts/setup.sh
#   RNNEXPORT_RUNTIME=cpu bash scripts/setup.sh    # force the CPU wheel (or gpu for onnxruntime-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { .venv/bin/python -m pip "$@"; }

# onnxruntime-gpu only where it is published and a GPU answers; the CPU wheel everywhere else.
runtime=${RNNEXPORT_RUNTIME:-}
if [ -z "$runtime" ]; then
    runtime=cpu
    if [ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] && command -v nvidia-smi >/dev/null 2>&1 \
        && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        runtime=gpu
    fi
fi
case "$runtime" in
    cpu) wanted=onnxruntime other=onnxruntime-gpu ;;
    gpu) wanted=onnxruntime-gpu other=onnxruntime ;;
    *) echo "RNNEXPORT_RUNTIME must be cpu or gpu, got '$runtime'." >&2; exit 2 ;;
esac
# Both wheels install the same 'onnxruntime' module; with both present, whichever was installed last
# wins file by file. Remove the other one before installing ours.
if pip show --quiet "$other" >/dev/null 2>&1; then
    pip uninstall --quiet --yes "$other"
    pip uninstall --quiet --yes "$wanted" >/dev/null 2>&1 || true  # its files were overwritten: reinstall
fi

pip install --quiet --upgrade pip
# torch first and alone: that lets a wheel already on the machine (a CPU build, or the CUDA build you
# chose) satisfy it, instead of the resolver fetching the default build and its several GB of CUDA
# packages as a side effect of installing rnnexport. 2.13.0 because CI keeps that release as a CPU-only
# wheel, which installs fast; the project accepts the whole range in pyproject.toml (2.13 to 2.15), and
# scripts/test_torch_matrix.sh runs the suite on each of those releases.
pip install --quiet "torch==2.13.0"
pip install --quiet -e ".[build,$runtime,bench,dev]"
echo "rnnexport installed in .venv with $wanted: $(.venv/bin/rnnexport --version)"
