"""Issue 9 items 8 and 11 (CLI side): numeric arguments are checked at parse time, a session
whose sampler died is never "completed", `run` passes the command's failure on as its exit code,
and a session without layer figures says why."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.conftest import run_cli
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.store import Store


def _one_line_usage(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["attach", "1", "--duration", "nan"], "--duration"),
    (["attach", "1", "--duration", "inf"], "--duration"),
    (["attach", "1", "--duration", "-3"], "--duration"),
    (["attach", "1", "--interval", "inf"], "--interval"),
    (["attach", "1", "--interval", "0"], "--interval"),
    (["attach", "1", "--interval", "1e-9"], "--interval"),
    (["attach", "1", "--stack-rate", "nan"], "--stack-rate"),
    (["attach", "0"], "PID"),
    (["run", "--interval", "nan", "--", "true"], "--interval"),
    (["run", "--duration", "1e400", "--", "true"], "--duration"),
    (["run", "--after-steps", "-1", "--apply", "quantize-int8", "--", "true"], "--after-steps"),
    (["run", "--after-steps", "20", "--", "true"], "--after-steps needs --apply"),  # was silently ignored
    (["run", "--revert-after-steps", "20", "--", "true"], "--revert-after-steps needs --apply"),
    (["show", "-1"], "ID"),
    (["report", "1", "--format", "md", "-o", "x.md", "--grid", "inf"], "--grid"),
    (["optimize", "m", "--max-quality-loss", "nan"], "--max-quality-loss"),
    (["optimize", "m", "--rounds", "0"], "--rounds"),
    (["demo", "--headless", "--duration", "nan"], "--duration"),
])
def test_non_finite_or_out_of_range_numbers_are_refused_at_parse_time(argv, flag, db_path):
    r = run_cli(*argv, "--db", str(db_path), timeout=60) if argv[0] != "run" else \
        run_cli("run", "--db", str(db_path), *argv[1:], timeout=60)
    line = _one_line_usage(r)
    assert flag in line
    assert not db_path.exists()  # refused before anything was opened or recorded


def test_a_sampler_that_dies_ends_the_session_as_failed_not_completed(db_path, monkeypatch):
    from wattlens.profiler import sampler as sampler_mod

    def dying_loop(self):
        raise OverflowError("cannot convert float infinity to integer")  # what --interval inf did

    monkeypatch.setattr(sampler_mod.Sampler, "_loop", dying_loop)
    store = Store(db_path)
    s = ProfilingSession(store, name="dies", interval_s=0.05, duration_s=3600)
    sid = s.start()
    deadline = time.monotonic() + 60  # a bound against a hang only
    while s.end_condition() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    cond = s.end_condition()
    assert cond is not None and cond[0] == "failed" and "OverflowError" in cond[1]
    s.stop("completed", "duration reached")  # whatever the caller asks, it did not complete
    row = store.session(sid)
    assert row["status"] == "failed"
    assert "sampler stopped" in row["end_reason"] and "kept" in row["end_reason"]


def test_sampler_refuses_a_non_finite_interval(db_path):
    from wattlens.profiler.sampler import Sampler

    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="finite"):
            Sampler([], interval_s=bad)


SCRIPT_EXIT_3 = "import sys, time; time.sleep(0.5); sys.exit(3)"


def test_run_exits_with_the_commands_failure_code_and_keeps_its_data(db_path):
    r = run_cli("run", "--db", str(db_path), "--json", "--", sys.executable, "-c", SCRIPT_EXIT_3)
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 3 and doc["status"] == "target-exited"
    stored = Store(db_path).session(doc["session_id"])
    assert stored["status"] == "target-exited" and "exit code 3" in stored["end_reason"]
    assert stored["summary"]["energy_j"] is not None  # the data measured is kept


def test_run_of_a_successful_command_exits_0(db_path):
    r = run_cli("run", "--db", str(db_path), "--json", "--", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr


def test_run_help_documents_the_exit_status():
    r = run_cli("run", "--help")
    assert "Exit" in r.stdout and "128+N" in r.stdout


def test_non_python_command_gets_a_note_why_there_are_no_layers(db_path, tmp_path):
    r = run_cli("run", "--db", str(db_path), "--", "sleep", "1")
    assert r.returncode == 0, r.stderr
    assert "note: no layer figures: no wattlens agent reported" in r.stdout  # the CLI summary
    sid = Store(db_path).sessions()[0]["id"]
    show = run_cli("show", str(sid), "--db", str(db_path))
    assert "no layer figures" in show.stdout  # `show`
    events = Store(db_path).events(sid)
    assert any(e.kind == "note" and "no layer figures" in e.message for e in events)  # stored
    out = tmp_path / "r.md"
    assert run_cli("report", str(sid), "--format", "md", "-o", str(out), "--db", str(db_path)).returncode == 0
    assert "no layer figures" in out.read_text()  # and the report


def test_attach_to_a_non_python_process_says_why_there_are_no_layers(db_path):
    from wattlens.profiler.stacks.sampler import find_pyspy

    if find_pyspy() is None:
        pytest.skip("py-spy is not installed")
    import subprocess

    target = subprocess.Popen(["sleep", "300"])
    try:
        r = run_cli("attach", str(target.pid), "--duration", "1", "--db", str(db_path))
    finally:
        target.kill()
        target.wait()
    assert r.returncode == 0, r.stderr
    assert "no layer figures" in r.stdout and "does not look like a Python program" in r.stdout
    sid = Store(db_path).sessions()[0]["id"]
    assert any(e.kind == "note" and "no layer figures" in e.message for e in Store(db_path).events(sid))


def test_a_figure_per_unit_that_is_unknown_reads_na_per_unit(capsys):
    """helper-37's trial: `show` printed 'n/a/token' for a run that reported no tokens."""
    from wattlens.app.cli import print_summary

    steps = {"count": 12, "with_energy": 12, "mean_duration_s": 0.1, "energy_per_step_j": 0.5,
             "energy_per_sample_j": 0.125, "energy_per_token_j": None, "samples": 48, "tokens": None}
    print_summary({"session_id": 4, "name": "x", "status": "target-exited", "duration_s": 2.0,
                   "sources": [], "steps": steps}, "run")
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("steps:")]
    assert line.strip() == "steps: 12, 0.5 J/step, 0.125 J/sample, n/a per token"


def test_sessions_lists_the_newest_and_says_how_many_more(db_path, monkeypatch):
    """helper-36's trial: 20,000 sessions took 5.4 s and 612 MB to list, every one printed."""
    import json

    from wattlens.profiler.store import Store

    store = Store(db_path)
    for i in range(53):
        store.create_session(name=f"s{i}", kind="run", started_at=1.7e9 + i, start_ns=i)
    store.close()
    table = run_cli("sessions", "--db", str(db_path)).stdout.splitlines()
    ids = [int(x.split()[0]) for x in table[1:] if x.split() and x.split()[0].isdigit()]
    assert ids == list(range(53, 3, -1))  # the newest 50, newest first
    assert f"… and 3 older sessions: `wattlens sessions --db {db_path} --limit 0` lists them all" in table
    everything = run_cli("sessions", "--db", str(db_path), "--limit", "0").stdout
    assert "older session" not in everything and len(everything.splitlines()) >= 54
    assert len(json.loads(run_cli("sessions", "--db", str(db_path), "--json").stdout)) == 53  # scripts: all
    assert [r["id"] for r in json.loads(run_cli("sessions", "--db", str(db_path), "--json", "--limit", "2").stdout)] \
        == [53, 52]
    monkeypatch.setenv("WATTLENS_HOST", "gpu 2")  # another host's: the hint keeps --host, counts its own
    store = Store(db_path)
    for i in range(52):
        store.create_session(name=f"o{i}", kind="run", started_at=1.8e9 + i, start_ns=i)
    store.close()
    monkeypatch.delenv("WATTLENS_HOST")
    other = run_cli("sessions", "--db", str(db_path), "--host", "gpu 2").stdout.splitlines()
    assert f"… and 2 older sessions: `wattlens sessions --db {db_path} --host 'gpu 2' --limit 0` lists them all" \
        in other


def test_a_name_with_control_characters_is_refused_and_a_commands_is_cleaned(db_path, tmp_path):
    """helper-36's trial: a --name with control characters was stored and printed raw (an escape
    sequence drives the terminal of whoever lists the sessions)."""
    import json
    import sys

    marker = tmp_path / "ran"
    r = run_cli("run", "--name", "red\x1b[31m", "--db", str(db_path), "--", sys.executable, "-c",
                f"open({str(marker)!r}, 'w')")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "control character" in lines[0], r.stderr
    assert "\x1b" not in lines[0]  # named, not sent to the terminal
    assert not marker.exists()  # refused before anything was launched
    r = run_cli("run", "--db", str(db_path), "--json", "--", sys.executable, "-c", "import sys\nprint(1)")
    assert r.returncode == 0, r.stderr
    name = json.loads(run_cli("sessions", "--db", str(db_path), "--json").stdout)[0]["name"]
    assert "\n" not in name and name.endswith("-c import sys print(1)")


def test_renaming_checks_the_name_only(db_path, monkeypatch):
    """helper-42's review: rename also checked this machine's host name, so a long WATTLENS_HOST
    refused a good name with a host-name error."""
    from wattlens.profiler.errors import BadInputError
    from wattlens.profiler.store import Store

    store = Store(db_path)
    sid, _ = store.create_session(name="a", kind="run", started_at=1.7e9, start_ns=0)
    monkeypatch.setenv("WATTLENS_HOST", "h" * 300)
    store.rename_session(sid, "a better name")
    assert store.session(sid)["name"] == "a better name"
    with pytest.raises(BadInputError, match="host name"):
        store.create_session(name="b", kind="run", started_at=1.7e9, start_ns=0)
    store.close()


def test_a_summary_stored_by_an_older_wattlens_is_listed_as_show_computes_it(db_path):
    """helper-42's review: the sessions listing reads each session's summary as cached when it
    ended; a multi-rank session stored before a change to its figures kept its old ones there,
    while `show` recomputes them."""
    import json

    from wattlens.profiler.records import SeriesSpec
    from wattlens.profiler.store import Store
    from wattlens.profiler.summary import FIGURES_VERSION

    store = Store(db_path)
    sid, ids = store.create_session(
        name="old", kind="attach", started_at=1.7e9, start_ns=0,
        sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
        series=[SeriesSpec("cpu-model/energy_j", "J", "estimated", "cpu-model")])
    store.write_batch(sid, [(ids["cpu-model/energy_j"], t * 10**9, 10.0 * t) for t in range(4)])
    # what an older wattlens cached: other figures, no version; its notes are its own
    store.finish_session(sid, status="completed", end_reason="done", ended_at=1.7e9 + 3, duration_s=3.0,
                         summary={"energy_j": 999.0, "energy_method": "estimated", "notes": ["kept"]})
    store.close()
    listed = json.loads(run_cli("sessions", "--json", "--db", str(db_path)).stdout)[0]
    shown = json.loads(run_cli("show", str(sid), "--json", "--db", str(db_path)).stdout)
    assert listed["energy_j"] == shown["summary"]["energy_j"] == pytest.approx(30.0)
    assert " 30 J" in run_cli("sessions", "--db", str(db_path)).stdout  # the table too
    again = Store(db_path)
    try:  # recomputed once, kept: with the new version and the old notes
        cached = again.session(sid)["summary"]
    finally:
        again.close()
    assert cached["figures_version"] == FIGURES_VERSION and cached["notes"] == ["kept"]
