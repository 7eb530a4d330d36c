#!/bin/bash
# Cold text search, the code of BEFORE (default f4942f2) vs this checkout, alternating run by run,
# over the collections benchmarks/cli_latency.py builds in /tmp/cli-latency (run that first).
# Needs root (drops the page cache). Run from anywhere: bash benchmarks/cold_search_ab.sh [BEFORE]
set -e -o pipefail
BEFORE=${1:-f4942f2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
PKG=$(cd "$ROOT" && "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import cli_latency; from pathlib import Path; print(cli_latency.checkout_as_installed('$BEFORE', Path('/tmp/cold-bench')))" | tail -1)
cd /tmp  # not the checkout: python -m puts the current folder first on sys.path
export HF_HOME=/tmp/clipsearch-peers/hf HF_HUB_OFFLINE=1 CLIPSEARCH_DEVICE=cpu
unset PYTHONDONTWRITEBYTECODE
uptime; date -u
for r in 1 2 3; do
 for db in db-vit db-tiny; do
  sync; echo 3 > /proc/sys/vm/drop_caches
  PYTHONPATH=$PKG /usr/bin/time -f "before $db %e wall %U user %S sys %M KB" $PY -m clipsearch.cli search "a red square" --db /tmp/cli-latency/$db 2>&1 >/dev/null | tail -1
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f "after  $db %e wall %U user %S sys %M KB" $PY -m clipsearch.cli search "a red square" --db /tmp/cli-latency/$db 2>&1 >/dev/null | tail -1
 done
done
uptime; date -u
