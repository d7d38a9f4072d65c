#!/usr/bin/env bash
# Set up, then run the bundled example on the embedded default (no server, no API key).
# Extra arguments go to the CLI, e.g.: scripts/example.sh --enable-context --enable-quorum
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python cli.py --config examples/dispatch.toml -f examples/tasks.json "$@"
