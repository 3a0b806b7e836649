#!/usr/bin/env bash
# Create .venv (if missing) and install rnnexport with its test tools into it. Safe to run again.
#
#   bash scripts/setup.sh                 # uses python3 (3.10 or newer)
#   PYTHON=python3.12 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, at the exact pin: installing it alone lets a wheel already on the machine (a CPU
# build, or the CUDA build you chose) satisfy it, instead of the resolver fetching the default
# build and its several GB of CUDA packages as a side effect of installing rnnexport.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "rnnexport installed in .venv: $(.venv/bin/rnnexport --version)"
