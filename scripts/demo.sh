#!/usr/bin/env bash
# The approval walkthrough on an embedded nats-server (installs what it needs first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/tether demo "$@"
