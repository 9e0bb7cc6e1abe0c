#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA GPU and PyTorch, from the repository root:
#   bash benchmarks/gpu_check.sh [--suite] [OUT_DIR]
# Default: the parity tests with bt on cuda (fp32), then the 1 image x 16 texts benchmark in fp32 and bf16.
# --suite: the whole test suite with bt on cuda instead.
# --embed: images/s of the model alone against bt's whole embedding path (decoding in threads, with and without
#   --fast-decode on 12 MP JPEGs), base and large shapes, float32 / bfloat16 / float16 (issue 25).
# If .whl/ holds wheels (e.g. a newer transformers), they are put first on the path.
set -uo pipefail
suite=0
if [ "${1:-}" = "--suite" ]; then suite=1; shift; fi
if [ "${1:-}" = "--embed" ]; then suite=embed; shift; fi
out=${1:-${OUT:-/tmp/bt-gpu}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 BT_TEST_DEVICE=cuda
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"
if [ "$suite" = embed ]; then
    for size in base large; do
        for dtype in float32 bfloat16 float16; do
            (cd benchmarks && timeout 120 python3 bench_embed.py --device cuda --size $size --dtype $dtype --images 64 \
                --batch-size 32 --phone --json "$out/embed-$size-$dtype.json") 2>&1 | tee -a "$out/embed.log" | tail -4
        done
    done
    exit
fi
if [ "$suite" = 1 ]; then
    timeout 420 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest-suite.log" | tail -30
    exit
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider \
    tests/model/test_runtime_parity.py tests/tasks/test_score.py tests/tasks/test_fill_mask.py tests/tasks/test_embed.py 2>&1 \
    | tee "$out/pytest.log" | tail -25
(cd benchmarks && timeout 300 python3 bench_score.py --device cuda --cases 1x16 --repeats 5 --json "$out/bench.json") 2>&1 \
    | tee "$out/bench.log" | tail -12
