#!/usr/bin/env bash
# Run the whole check (ruff, ruff format, mypy, pytest) once per supported torch release, each in a venv
# of its own, and print one summary line per release. The releases named in pyproject's torch range
# are the ones this has passed on.
#
#   bash scripts/test_torch_matrix.sh                        # 2.13.0 2.14.1 2.15.0
#   bash scripts/test_torch_matrix.sh 2.15.0                 # one release
#   bash scripts/test_torch_matrix.sh 2.15.0 -- -k dynamo    # arguments after -- go to pytest
#   RNNEXPORT_MATRIX_DIR=/big/disk bash scripts/test_torch_matrix.sh
#
# The venvs live in ${RNNEXPORT_MATRIX_DIR:-.matrix}/torch-VERSION and are reused by later runs. From
# 2.14 on, the default torch wheel on Linux is a CUDA build of several GB: put the folder on a disk with
# room. PYTHON picks the interpreter for new venvs (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

releases=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    releases+=("$1")
    shift
done
[ $# -gt 0 ] && shift # the "--"
[ ${#releases[@]} -gt 0 ] || releases=(2.13.0 2.14.1 2.15.0)

matrix=${RNNEXPORT_MATRIX_DIR:-.matrix}
mkdir -p "$matrix"
matrix=$(cd "$matrix" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Prints the installed torch version of venv $1 (empty when none).
torch_version() { "$1/bin/python" -m pip show torch 2>/dev/null | sed -n 's/^Version: //p'; }

# Sets up venv $2 for torch $1; fails (non-zero) with a message on stderr.
prepare() {
    local release=$1 venv=$2 before after
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv" || return 1
    fi
    # torch first and alone, so that installing the project afterwards finds its requirement met and
    # must keep it: a project whose range excluded this release would make pip replace it, which the
    # check below reports instead of silently testing another torch.
    "$venv/bin/python" -m pip install --quiet "torch==$release" || return 1
    before=$(torch_version "$venv")
    "$venv/bin/python" -m pip install --quiet -e "$repo[build,cpu,dev]" || return 1
    after=$(torch_version "$venv")
    if [ "$before" != "$after" ]; then
        echo "Installing rnnexport replaced torch $before by torch $after in $venv: the range in" \
            "pyproject.toml does not admit torch $release. Widen it, or drop $release from the list." >&2
        return 1
    fi
}

summaries=()
failed=0
for release in "${releases[@]}"; do
    venv=$matrix/torch-$release
    log=$matrix/torch-$release.log
    start=$SECONDS
    echo "== torch $release ($venv, log in $log)"
    if ! prepare "$release" "$venv"; then
        summaries+=("torch $release: could not set up $venv (see the messages above)")
        failed=1
        continue
    fi
    steps=()
    "$venv/bin/ruff" check . && steps+=("ruff ok") || steps+=("ruff FAILED")
    "$venv/bin/ruff" format --check . >/dev/null && steps+=("format ok") || steps+=("format FAILED")
    "$venv/bin/mypy" && steps+=("mypy ok") || steps+=("mypy FAILED")
    "$venv/bin/python" -m pytest -q "$@" 2>&1 | tee "$log"
    code=${PIPESTATUS[0]}
    counts=$(grep -E '^=* ?[0-9]+ (passed|failed|skipped|error)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//')
    line="torch $(torch_version "$venv"): $(IFS=,; echo "${steps[*]}" | sed 's/,/, /g'), pytest ${counts:-no summary} (exit $code), $((SECONDS - start)) s"
    summaries+=("$line")
    if [ "$code" -ne 0 ] || [[ "${steps[*]}" == *FAILED* ]]; then
        failed=1
    fi
done

echo
echo "== summary"
printf '%s\n' "${summaries[@]}"
exit $failed
