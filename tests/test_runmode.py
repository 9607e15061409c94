"""`wattlens run` end to end: a real GPT-2-style script, unchanged, under the agent."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import WORKLOADS, run_cli
from wattlens.profiler.store import Store
from wattlens.profiler.summary import energy_between


@pytest.fixture(scope="module")
def run_session(tmp_path_factory):
    db = tmp_path_factory.mktemp("run") / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / "gpt2_infer.py"), "60",
                timeout=300)
    assert r.returncode == 0, r.stderr
    return db, json.loads(r.stdout), r


def test_run_reports_steps_and_per_token_energy(run_session):
    _, doc, r = run_session
    assert "done" in r.stderr  # the command's own output went to stderr under --json
    assert doc["status"] == "target-exited" and doc["exit_code"] == 0
    steps = doc["steps"]
    assert steps["count"] == 60
    assert steps["samples"] == 60 * 4 and steps["tokens"] == 60 * 4 * 32
    assert steps["with_energy"] >= 55
    assert steps["energy_per_sample_j"] > 0
    assert steps["energy_per_token_j"] == pytest.approx(steps["energy_per_sample_j"] / 32, rel=0.05)


def test_run_stores_per_instance_layers_that_conserve_energy(run_session):
    db, doc, _ = run_session
    store = Store(db)
    layers = store.layer_costs(doc["session_id"])
    paths = {lc.path for lc in layers}
    assert {"transformer.h.0.mlp.c_fc", "transformer.h.1.attn", "outside modules"} <= paths
    assert all(lc.method == "agent-timing" for lc in layers)
    windows: dict[tuple[int, int], list] = {}
    for lc in layers:
        windows.setdefault((lc.window_start_ns, lc.window_end_ns), []).append(lc)
    t, cum = store.series_data(doc["session_id"], ["target/energy_j"])["target/energy_j"]
    checked = 0
    for (t0, t1), rows in windows.items():
        if any(r.self_energy_j is None for r in rows):
            continue
        window_j = energy_between(t, cum, t0, t1)
        if window_j is None:
            continue
        # conservation: the modules' own energy plus "outside modules" is the window's energy
        assert sum(r.self_energy_j for r in rows) == pytest.approx(window_j, rel=1e-6, abs=1e-9)
        checked += 1
    assert checked > 0
    step_j = sum(s.energy_j for s in store.steps(doc["session_id"]) if s.energy_j is not None)
    assert step_j <= doc["target"]["energy_j"] + 1e-6  # steps are part of the target's energy


def test_show_prints_the_costliest_layers(run_session):
    db, doc, _ = run_session
    out = run_cli("show", str(doc["session_id"]), "--db", str(db)).stdout
    assert "costliest layers (agent-timing" in out and "/token" in out


def test_a_script_that_crashes_ends_target_exited_with_its_data(tmp_path):
    db = tmp_path / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / "gpt2_infer.py"), "200",
                "--crash-at", "30", timeout=300)
    assert r.returncode == 1, r.stderr  # the script's own exit code is passed on (issue 9)
    doc = json.loads(r.stdout)
    assert doc["status"] == "target-exited" and doc["exit_code"] == 1
    assert "simulated crash" in r.stderr
    assert doc["steps"]["count"] == 30
    s = Store(db).session(doc["session_id"])
    assert "exit code 1" in s["end_reason"]


@pytest.mark.parametrize("script, args, count, said", [
    ("train_crash.py", ["5"], 5, "; the step it was in is not counted"),  # raised in step 5's backward
    ("train_crash.py", ["0"], 0, "; the step it was in is not counted"),  # before any optimizer.step()
    ("train_crash.py", ["5", "--after"], 5, ", after 5 step(s)"),  # every step done, then raised
    ("gpt2_infer.py", ["200", "--crash-in-forward", "30"], 30, "; the step it was in is not counted"),
])
def test_a_step_cut_short_by_an_exception_is_not_counted_and_the_session_says_how_it_ended(
        tmp_path, script, args, count, said):
    """helper-36's trial: a rank that raised in its backward had that step counted (101 steps where
    100 ran to their end), and nothing in show said the process had crashed."""
    db = tmp_path / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / script), *args,
                timeout=300)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert ((doc.get("steps") or {}).get("count") or 0) == count
    (note,) = [n for n in doc["notes"] if "uncaught" in n]
    assert note.startswith("the process with PID ") and note.endswith(said), note
    assert "simulated crash" in note and "\x1b" not in note  # the exception's text, printable
    assert "simulated crash" in run_cli("show", str(doc["session_id"]), "--db", str(db)).stdout
    # said once in the event list, when it happened (the note at the end was a second event row)
    assert [e.kind for e in Store(db).events(doc["session_id"]) if "uncaught" in e.message] \
        == ["agent-disconnected"]


def test_a_command_that_does_not_exist_is_one_line_exit_2(tmp_path):
    r = run_cli("run", "--db", str(tmp_path / "w.db"), "--", "no-such-program-xyz")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "wattlens: error: command not found: no-such-program-xyz — check the spelling or give a full path"]
    assert Path(tmp_path / "w.db").exists() is True  # the store opened fine; no session was started
    assert Store(tmp_path / "w.db").sessions() == []


def test_a_command_that_ends_at_once_is_a_stored_session_not_a_missing_pid(tmp_path):
    """`wattlens run -- true`: the command often exits before wattlens reads its /proc entry. A
    zombie has no command line, which psutil reports as 'no such process', and run refused its
    own child with "no process with PID …" (exit 2) in 5 of 8 tries. Its energy, when no source's
    share could be attributed in its few milliseconds, is n/a with a reason, never '0 J — None'."""
    db = tmp_path / "w.db"
    for _ in range(5):
        r = run_cli("run", "--db", str(db), "--json", "--", "true")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["status"] == "target-exited" and doc["exit_code"] == 0
        target = doc["target"]
        assert target["method"] is not None or (target["energy_j"] is None and target["reason"]), target
    assert len(Store(db).sessions()) == 5


def test_attach_refuses_a_zombie_in_one_line(tmp_path):
    import subprocess
    import time

    import psutil

    from wattlens.profiler.errors import TargetNotFoundError
    from wattlens.profiler.process import Target

    child = subprocess.Popen(["true"])  # not waited for: a zombie once it exits
    try:
        deadline = time.monotonic() + 60
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(TargetNotFoundError, match="already exited"):
            Target(child.pid)
        assert Target(child.pid, exited_ok=True).cmdline == []  # run mode's own child: ended at once
    finally:
        child.wait()
