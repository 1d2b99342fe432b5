#!/usr/bin/env bash
# Create .venv (if missing) and install Tether into it; "test" also installs test tools.
# The install is skipped when pyproject.toml has not changed since the last one with the
# same extras (the package itself is installed editable, so code changes need none).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
stamp=".venv/.tether-installed${extras:+-test}"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "installing tether${extras} into .venv ..." >&2
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet -e ".${extras}" >&2
echo "$wanted" > "$stamp"
