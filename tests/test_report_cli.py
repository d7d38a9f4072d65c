"""``dispatch report``: where the state comes from, where the report goes, exit codes."""
from __future__ import annotations

import os

import pytest

from dispatch import cli
from conftest import base_env, run_cli
from dispatch.store.state import DirectoryStateStore, save_state_file
from test_report import sample_state


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("DISPATCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DISPATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_report_from_a_state_file_defaults_to_report_run_id_html(env, capsys):
    save_state_file(sample_state(), env / "state.json")
    assert cli.main(["report", str(env / "state.json")]) == 0
    out, err = capsys.readouterr()
    page = (env / "report-run-7f3a.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="task-timeline"' in page
    assert out == "" and "report-run-7f3a.html" in err


def test_report_from_a_run_id_in_the_store(env, capsys):
    DirectoryStateStore(env / "state").save(sample_state())
    assert cli.main(["report", "run-7f3a", "-o", str(env / "out" / "r.html")]) == 2  # no such directory
    assert "cannot write report" in capsys.readouterr().err
    assert cli.main(["report", "run-7f3a", "-o", str(env / "r.html")]) == 0
    assert "dispatch run <code>run-7f3a</code>" in (env / "r.html").read_text(encoding="utf-8")


def test_text_format_goes_to_stdout_or_to_the_output_file(env, capsys):
    DirectoryStateStore(env / "state").save(sample_state())
    assert cli.main(["report", "run-7f3a", "--format", "text"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("dispatch run run-7f3a") and "PHASES" in out and err == ""
    assert cli.main(["report", "run-7f3a", "--format", "text", "-o", "summary.txt"]) == 0
    assert (env / "summary.txt").read_text(encoding="utf-8").startswith("dispatch run run-7f3a")


def test_unknown_source_is_a_usage_error_naming_both(env, capsys):
    assert cli.main(["report", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is neither a state file nor a run id in the state store" in err
    assert cli.main(["report", "missing/state.json"]) == 2
    assert "neither a state file nor a run id" in capsys.readouterr().err


def test_a_corrupt_state_file_is_a_usage_error(env, capsys):
    (env / "bad.json").write_text('{"phases_executed": [', encoding="utf-8")
    assert cli.main(["report", str(env / "bad.json")]) == 2
    assert "corrupt or truncated JSON" in capsys.readouterr().err


def test_the_real_entry_point(tmp_path):
    save_state_file(sample_state(), tmp_path / "state.json")
    env = base_env(tmp_path)
    done = run_cli(["report", str(tmp_path / "state.json"), "-o", str(tmp_path / "r.html")], env=env)
    assert done.returncode == 0 and done.stdout == "" and str(tmp_path / "r.html") in done.stderr
    bad = run_cli(["report", "no-such-run", "--format", "text"], env=env)
    assert bad.returncode == 2 and bad.stdout == "" and "neither a state file nor a run id" in bad.stderr
    usage = run_cli(["report", "--format", "pdf", "x"], env=env)
    assert usage.returncode == 2 and "'pdf' is not one of 'html', 'text'" in usage.stderr
