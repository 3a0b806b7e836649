#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# What the deploy targets' tests need beyond a build install. OpenVINO publishes wheels for x86-64 and
# ARM64 only: elsewhere its tests skip with that reason (and CI, on x86-64, requires them).
.venv/bin/python -m pip install --quiet -e ".[openvino,triton]" \
    || echo "note: the openvino/triton extras did not install here; their tests will be skipped." >&2
# The JavaScript package (js/) and what its tests need: node, Chromium, npm packages.
bash scripts/setup_js.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
