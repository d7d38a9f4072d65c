#!/usr/bin/env bash
# Set up, then run the whole test suite (unit, embedded CLI, real Redis + Celery workers).
# Needs the redis-server binary for the distributed tests; installs it with apt-get when
# missing and running as root, otherwise those tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing redis-server for the distributed tests" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || echo "could not install redis-server" >&2
fi
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
