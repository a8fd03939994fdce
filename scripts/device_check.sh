#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (its runs are recorded in the GPU
# sections of benchmarks/README.md): the CUDA tests, then the step-cost benchmark on the GPU
# in fp32 and bf16. Runs from the repository root with the machine's own python3 / torch
# (nothing installed); writes logs and JSON to
# ${OUT:-runs/device}. Each part has its own time limit, so one failing part leaves the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# optional benchmark peers (higher, torchopt + its optree and graphviz) carried as wheels in .whl/
# (benchmarks/README.md, GPU section, says how to download them)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# the installed layout (pyproject's package-dir) without installing: weightzoo.cli etc.
for d in cli pretrained recipes; do [ -e "weightzoo/$d" ] || ln -s "../$d" "weightzoo/$d"; done
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "from importlib.metadata import version as v; print('peers: higher', v('higher'), 'torchopt', v('torchopt'))"
} 2>&1 | tee "$OUT/environment.txt"
timeout "${TEST_LIMIT:-180}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout "${FP32_LIMIT:-240}" python3 benchmarks/step_cost.py --device cuda --min-seconds 2 ${FP32_SECTIONS:+--sections $FP32_SECTIONS} \
  --out "$OUT/step_cost_cuda.json" 2>&1 | tee "$OUT/step_cost_cuda.log"
timeout "${AMP_LIMIT:-90}" python3 benchmarks/step_cost.py --device cuda --amp --sections meta,frozen,fixmatch \
  --min-seconds 2 --out "$OUT/step_cost_cuda_amp.json" 2>&1 | tee "$OUT/step_cost_cuda_amp.log"
