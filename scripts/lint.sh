#!/usr/bin/env bash
# ruff and mypy --strict. The package maps three folders onto one import root, which mypy
# cannot follow through an editable install, so it checks a symlinked view of the package
# built in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir -p "$view/tether"
for f in sdk/*; do ln -s "$repo/$f" "$view/tether/"; done
ln -s "$repo/engine" "$view/tether/engine"
ln -s "$repo/projections" "$view/tether/projections"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
(cd "$view" && "$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" \
  --cache-dir "$repo/.mypy_cache" -p tether)
