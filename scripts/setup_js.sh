#!/usr/bin/env bash
# Install what the JavaScript package and its tests need: node and npm, Chromium (Debian's package, for the
# browser tests) and js/'s npm packages (npm ci, which also compiles js/dist). Safe to run again.
# Installing system packages needs root and apt-get (as in CI); elsewhere missing ones are reported and the
# JavaScript tests skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup_js: ${missing[*]} not installed, and this is not root with apt-get; the JavaScript tests will skip." >&2
    fi
fi
if command -v npm >/dev/null 2>&1; then
    # onnxruntime-node's install script would download CUDA libraries; the CPU binding ships in the package.
    (cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
    web=$(cd js && node -p "JSON.parse(require('fs').readFileSync('node_modules/onnxruntime-web/package.json')).version")
    echo "js/ installed: node $(node --version), onnxruntime-web $web"
fi
