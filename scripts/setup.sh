#!/usr/bin/env bash
# Create .venv (if missing) and install dispatch with its test extras into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dispatch-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing dispatch into .venv ..." >&2
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: pip install -e '.[test]' (log above)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
fi
