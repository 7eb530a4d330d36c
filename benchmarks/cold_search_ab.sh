#!/bin/bash
# Cold text search, code of f4942f2 (before) vs this branch (after), alternating, ViT and tiny.
cd /tmp
export HF_HOME=/tmp/clipsearch-peers/hf HF_HUB_OFFLINE=1 CLIPSEARCH_DEVICE=cpu
unset PYTHONDONTWRITEBYTECODE
PY=/work/wt/cold/.venv/bin/python
uptime; date -u
for r in 1 2 3; do
 for db in db-vit db-tiny; do
  sync; echo 3 > /proc/sys/vm/drop_caches
  PYTHONPATH=/tmp/cold-bench/code-f4942f2/pkg /usr/bin/time -f "before $db %e wall %U user %S sys %M KB" $PY -m clipsearch.cli search "a red square" --db /tmp/cli-latency/$db 2>&1 >/dev/null | tail -1
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f "after  $db %e wall %U user %S sys %M KB" $PY -m clipsearch.cli search "a red square" --db /tmp/cli-latency/$db 2>&1 >/dev/null | tail -1
 done
done
uptime; date -u
