#!/usr/bin/env bash
# Set up, then run the whole test suite (unit, embedded CLI, real Redis + Celery workers, the
# report in a real browser).  Needs the redis-server binary for the distributed tests and Debian's
# chromium for the browser tests; installs them with apt-get when missing and running as root,
# otherwise those tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
install_missing() {  # install_missing COMMAND PACKAGE WHAT
  if ! command -v "$1" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 for $3" >&2
    (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null 2>&1 || echo "could not install $2" >&2
  fi
}
install_missing redis-server redis-server "the distributed tests"
install_missing chromium chromium "the report's browser tests"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
