#!/usr/bin/env bash
# One command on a fresh machine: make .venv, install clipsearch, build the sample collection,
# index it with the bundled model and run a few searches. Safe to run again (it resumes).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# PyTorch and its CUDA libraries take ~6 GB in .venv, plus room for pip to unpack them: fail
# up front with what to do rather than halfway through with pip's "No space left on device".
need_gb=8
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  for dir in "$PWD" "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
    if (( free_gb < need_gb )); then
      echo "error: only ${free_gb} GB free at $dir; installing PyTorch needs about ${need_gb} GB." >&2
      echo "Free some space there (or point TMPDIR at a larger disk) and run this script again." >&2
      exit 1
    fi
  done
fi
echo "==> installing PyTorch (CPU/CUDA wheel pinned for torchvision compatibility)"
.venv/bin/python -m pip install -q --upgrade pip
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu skips the ~4 GB of CUDA libraries.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
  ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
echo "==> installing clipsearch (editable, with the test extra: everything the tests need, and the"
echo "    fast CPU backends ONNX Runtime + OpenVINO: about 100 MB of wheels, 310 MB installed)"
.venv/bin/python -m pip install -q -e ".[test]"

export CLIPSEARCH_DB=${CLIPSEARCH_DB:-$PWD/sample/db}
echo "==> writing the sample collection to sample/"
.venv/bin/python examples/make_sample_collection.py sample/files
echo "==> indexing it with the bundled model (clipsearch-tiny)"
.venv/bin/clipsearch index sample/files --model clipsearch-tiny --name "Sample collection"
.venv/bin/clipsearch info
echo "==> text → image:   clipsearch search \"a red star\""
.venv/bin/clipsearch search "a red star" -k 5
echo "==> text → moment:  clipsearch search \"a blue circle\" --moments"
.venv/bin/clipsearch search "a blue circle" --moments -k 3
echo "==> text → page:    clipsearch search \"a green triangle\" --kind doc"
.venv/bin/clipsearch search "a green triangle" --kind doc -k 3
echo
echo "Done. Try: source .venv/bin/activate && export CLIPSEARCH_DB=$CLIPSEARCH_DB && clipsearch serve"
