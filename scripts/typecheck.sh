#!/usr/bin/env bash
# mypy over the package in the shape it is installed: clipsearch/ with indexers/ and ui/ as
# clipsearch.indexers and clipsearch.ui (pyproject's package-dir). mypy cannot follow setuptools'
# editable finder, so this lays that shape out as symlinks under .mypy_cache/pkg (mypy_path in
# pyproject) and checks it. Arguments go to mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.mypy_cache/pkg/clipsearch
rm -rf .mypy_cache/pkg
mkdir -p "$tree"
for entry in clipsearch/*; do
  [[ $entry == */__pycache__ ]] || ln -s "$PWD/$entry" "$tree/"
done
ln -s "$PWD/indexers" "$tree/indexers"
ln -s "$PWD/ui" "$tree/ui"
# Report paths as the repository has them, so editors can jump to them.
.venv/bin/python -m mypy "$@" | sed -e 's#^\.mypy_cache/pkg/clipsearch/\(indexers\|ui\)/#\1/#' -e 's#^\.mypy_cache/pkg/##'
