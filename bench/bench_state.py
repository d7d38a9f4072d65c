"""P5: saving and loading a 10k-task state file, against plain json.dumps/loads of the same document."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from dispatch.models import ContextItem, PhaseState, TaskContext, TaskResult, TaskSpec
from dispatch.store.state import load_state_file, save_state_file


def big_state(n: int) -> PhaseState:
    tasks = [TaskSpec(task_id=f"t{i}", agent="echo", description=f"task number {i} of the benchmark",
                      dependencies=[f"t{i - 1}"] if i else [], input_data={"i": i}) for i in range(n)]
    item = ContextItem(id="src/a.py:1-40", source="src/a.py:1-40", content="def f():\n    return 1\n" * 10,
                       score=1.5, tokens=60)
    return PhaseState(run_id="bench", tasks_data=tasks,
                      task_contexts={t.task_id: TaskContext(task_id=t.task_id, items=[item], total_tokens=60)
                                     for t in tasks},
                      task_results=[TaskResult(task_id=t.task_id, agent="echo", success=True,
                                               output={"ok": True, "i": i}, duration_ms=1.0, worker="w@h")
                                    for i, t in enumerate(tasks)])


def run(n: int = 10_000, repeat: int = 3) -> list[dict]:
    state = big_state(n)
    document = state.model_dump(mode="json")
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path, raw = Path(tmp) / "state.json", Path(tmp) / "raw.json"
        for _ in range(repeat):
            t0 = time.perf_counter()
            save_state_file(state, path)
            load_state_file(path)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            raw.write_text(json.dumps(document, indent=2))
            json.loads(raw.read_text())
            base.append(time.perf_counter() - t0)
        size_mb = path.stat().st_size / 1e6
    o, b = statistics.median(ours), statistics.median(base)
    return [{"name": f"P5 save+load state, {n} tasks ({size_mb:.1f} MB), validated + atomic vs json.dumps/loads",
             "value": round(o * 1000), "unit": "ms", "baseline": round(b * 1000), "ratio": round(o / b, 2),
             "target": "(reference)"}]


if __name__ == "__main__":
    for row in run():
        print(row)
