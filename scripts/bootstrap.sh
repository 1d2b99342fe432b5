#!/usr/bin/env bash
# Create .venv (if missing) and install Tether into it; "test" also installs test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
echo "installing tether${extras} into .venv ..." >&2
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet -e ".${extras}" >&2
