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
# Bytecode for dispatch's own modules: an editable install compiles none, and where Python may not write
# it (PYTHONDONTWRITEBYTECODE, as on this project's CI machine) every CLI start compiled about 140 modules
# again (a quarter of a one-task run's time); only changed files are compiled again.
.venv/bin/python -m compileall -q dispatch cli.py worker.py >/dev/null 2>&1 || true
