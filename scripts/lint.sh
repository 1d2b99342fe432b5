#!/usr/bin/env bash
# ruff and mypy --strict. The package maps three folders onto one import root, which mypy
# cannot follow through an editable install, so it checks a symlinked view of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
view=.typecheck/tether
rm -rf .typecheck && mkdir -p "$view"
for f in sdk/*.py sdk/py.typed; do ln -s "../../$f" "$view/"; done
ln -s ../../engine "$view/engine"
ln -s ../../projections "$view/projections"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
(cd .typecheck && ../.venv/bin/mypy --config-file ../pyproject.toml -p tether)
