#!/usr/bin/env bash
# The whole test suite with bt running on cuda (fp32), on a machine with a CUDA GPU, from the repository root:
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bt-gpu}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
BT_TEST_DEVICE=cuda timeout 420 python3 -m pytest -q -p no:cacheprovider -x tests 2>&1 | tee "$out/pytest-suite.log" | tail -30
