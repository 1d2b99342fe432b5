#!/usr/bin/env bash
# The whole test suite against a real nats-server (installs what it needs first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
# The dashboard's browser test drives Debian's chromium; install it when it is missing and we
# may (root). Without it the test fails under CI=true and is skipped elsewhere.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver for the browser test ..." >&2
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2 \
      || echo "could not install chromium; the browser test will fail under CI=true" >&2
  else
    echo "chromium/chromedriver missing and not root: the browser test cannot run" >&2
  fi
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
