"""State files and stores: atomic, validated, never a traceback."""
import json
import os

import fakeredis
import pytest

from dispatch.errors import StateFileError
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, TaskSpec
from dispatch.store.state import DirectoryStateStore, RedisStateStore, load_state_file, save_state_file


def sample_state(run_id="r1") -> PhaseState:
    state = PhaseState(run_id=run_id, user_prompt="p",
                       tasks_data=[TaskSpec(task_id="a", agent="echo", description="d")])
    state.record(PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="Task Planning", success=True,
                             duration_ms=1.5))
    return state


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "s.json"
    save_state_file(sample_state(), path)
    loaded = load_state_file(path)
    assert loaded.run_id == "r1" and loaded.saved_at and loaded.has_completed(ExecutionPhase.TASK_PLANNING)
    raw = json.loads(path.read_text())
    for key in ("phases_executed", "current_phase", "global_context", "quorum_result", "tasks_data",
                "user_prompt", "saved_at", "schema_version", "run_id"):
        assert key in raw
    assert raw["phases_executed"][0]["phase"] == "TASK_PLANNING"


def test_save_is_atomic_no_temp_files_left(tmp_path):
    path = tmp_path / "s.json"
    for _ in range(3):
        save_state_file(sample_state(), path)
    assert os.listdir(tmp_path) == ["s.json"]


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ('{"phases_executed": [', "corrupt or truncated JSON"),
    ('{"hello": 1}', "not a dispatch phase state"),
    ('[1]', "not a dispatch phase state"),
    ('{"phases_executed": [], "schema_version": 99, "run_id": "x"}', "schema_version 99 is not supported"),
    ('{"phases_executed": [{"phase": "NOPE"}], "schema_version": 1, "run_id": "x"}', "invalid phase state"),
])
def test_bad_state_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(StateFileError, match=message) as info:
        load_state_file(path)
    assert info.value.exit_code == 2


def test_truncated_real_state_file(tmp_path):
    path = tmp_path / "s.json"
    save_state_file(sample_state(), path)
    path.write_text(path.read_text()[:-40])
    with pytest.raises(StateFileError, match="truncated"):
        load_state_file(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(StateFileError, match="cannot read"):
        load_state_file(tmp_path / "nope.json")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(StateFileError):
        load_state_file(tmp_path / "bin")


@pytest.mark.parametrize("store_factory", [
    lambda tmp: DirectoryStateStore(tmp),
    lambda tmp: RedisStateStore(fakeredis.FakeRedis(), prefix="t", ttl_s=60),
])
def test_stores_save_load_and_list(tmp_path, store_factory):
    store = store_factory(tmp_path)
    for i in range(3):
        store.save(sample_state(f"run-{i}"))
    assert store.load("run-1").run_id == "run-1"
    assert store.load("missing") is None
    assert {s.run_id for s in store.list_runs()} == {"run-0", "run-1", "run-2"}


def test_redis_store_uses_its_prefix_and_ttl():
    client = fakeredis.FakeRedis()
    RedisStateStore(client, prefix="team-a", ttl_s=100).save(sample_state())
    assert client.keys("*") and all(k.startswith(b"team-a:") for k in client.keys("*"))
    assert 0 < client.ttl("team-a:run:r1") <= 100


def test_a_document_without_phases_is_not_a_state(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"run_id": "x", "schema_version": 1}')
    with pytest.raises(StateFileError, match="not a dispatch phase state"):
        load_state_file(path)
