import json
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli


def test_help_does_not_import_torch_qt_or_sqlalchemy():
    code = ("import sys; from wattlens.app import cli; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: cli.main(['--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'PySide6', 'sqlalchemy', 'numpy') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sampling_path_does_not_import_torch():
    code = ("import sys\nfrom wattlens.profiler.session import ProfilingSession\n"
            "from wattlens.profiler.meter import EnergyMeter\n"
            "print([m for m in ('torch', 'transformers', 'PySide6') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_attach_end_to_end_json_then_show_sessions_and_reports(torch_child, db_path, tmp_path):
    child = torch_child(30)
    r = run_cli("attach", str(child.pid), "--duration", "2", "--interval", "0.1", "--no-stacks",
                "--db", str(db_path), "--json", "--name", "e2e")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["status"] == "completed" and doc["duration_s"] >= 2.0
    (cpu,) = [s for s in doc["sources"] if s["id"] == "cpu-model"]
    assert cpu["method"] == "estimated" and cpu["energy_j"] > 0 and cpu["mean_power_w"] > 0
    assert doc["target"]["energy_j"] > 0
    assert doc["target"]["energy_j"] <= doc["energy_j"] + 1e-9  # attributed ≤ measured
    assert doc["target"]["mean_cpu_pct"] > 0  # the child is busy (how busy depends on the machine load)
    assert any("stack sampling was switched off" in n for n in doc["notes"]), doc["notes"]  # why no layers
    sid = doc["session_id"]

    listing = json.loads(run_cli("sessions", "--db", str(db_path), "--json").stdout)
    assert [s["id"] for s in listing] == [sid] and listing[0]["name"] == "e2e"
    # both energies with their method, as `show` gives them (the listing gave bare joules)
    assert (listing[0]["energy_j"], listing[0]["energy_method"]) == (doc["energy_j"], doc["energy_method"])
    assert (listing[0]["target_energy_j"], listing[0]["target_energy_method"]) == (
        doc["target"]["energy_j"], doc["target"]["method"])
    text = run_cli("sessions", "--db", str(db_path)).stdout
    assert "estimated" in text and "target" in text and "machine" in text, text

    show = run_cli("show", str(sid), "--db", str(db_path))
    assert show.returncode == 0 and "estimated" in show.stdout and "target energy" in show.stdout
    assert "steps: n/a — attach mode measures the whole process" in show.stdout  # why none, and what gives them
    shown = json.loads(run_cli("show", str(sid), "--db", str(db_path), "--json").stdout)
    assert shown["summary"]["target"]["energy_j"] == pytest.approx(doc["target"]["energy_j"], rel=1e-6)

    for fmt in ("json", "md", "csv"):
        out = tmp_path / f"r.{fmt}"
        rr = run_cli("report", str(sid), "--format", fmt, "-o", str(out), "--db", str(db_path))
        assert rr.returncode == 0, rr.stderr
        assert out.stat().st_size > 100
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["session_id"] == sid
    assert "estimated" in (tmp_path / "r.md").read_text()
    assert "## Per step\n\nn/a — attach mode measures the whole process" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "session_id,series,unit,method,t_s,value"


def test_target_that_exits_ends_the_session_as_target_exited(torch_child, db_path, tmp_path):
    stop = tmp_path / "stop"  # the child exits when told, once wattlens is measuring it: a fixed
    child = torch_child(600, "--exit-code", "3", "--stop-file", str(stop))  # lifetime races start-up
    attach = subprocess.Popen(
        [sys.executable, "-m", "wattlens.app", "attach", str(child.pid), "--duration", "600", "--no-stacks",
         "--db", str(db_path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in attach.stderr:  # "wattlens: measuring PID ..." once the session started
            seen.append(line)
            if "measuring PID" in line:
                break
        time.sleep(1.0)  # a few ticks of data before the exit
        stop.touch()
        out, err = attach.communicate(timeout=300)
    finally:
        if attach.poll() is None:
            attach.kill()
    assert attach.returncode == 0, "".join(seen) + err
    doc = json.loads(out)
    assert doc["status"] == "target-exited" and doc["duration_s"] < 600  # ended by the exit, not the duration
    s = json.loads(run_cli("show", str(doc["session_id"]), "--db", str(db_path), "--json").stdout)
    assert "exited" in s["session"]["end_reason"]
    assert s["summary"]["energy_j"] > 0  # the data measured before the exit is kept


def test_a_target_that_exits_keeps_where_native_reads_paused_it(torch_child, db_path, tmp_path, monkeypatch):
    """A training target that exits mid-session (its sampler then stops early) still has its
    native runs stored: the plots and the report shade where they stopped it."""
    monkeypatch.setenv("WATTLENS_NATIVE_LITE", "0")  # py-spy's runs from the start (lite reads unavailable)
    from wattlens.app.report.data import build_report
    from wattlens.profiler.store import Store

    stop = tmp_path / "stop"
    child = torch_child(600, "--stop-file", str(stop))
    attach = subprocess.Popen(
        [sys.executable, "-m", "wattlens.app", "attach", str(child.pid), "--duration", "600",
         "--db", str(db_path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in attach.stderr:
            if "measuring PID" in line:
                break
        time.sleep(10.0)  # its first backward starts a native run (5 s) within a second or two
        stop.touch()
        out, err = attach.communicate(timeout=300)
    finally:
        if attach.poll() is None:
            attach.kill()
    assert attach.returncode == 0, err
    doc = json.loads(out)
    assert doc["status"] == "target-exited"
    store = Store(db_path)
    try:
        runs = [r for e in store.events(doc["session_id"]) for r in (e.data.get("native_runs") or ())]
        paused = build_report(store, doc["session_id"])["paused"]
        layers = store.layer_costs(doc["session_id"])
        notes = [e.message for e in store.events(doc["session_id"])]
    finally:
        store.close()
    assert runs and all(r["t_start_ns"] < r["t_end_ns"] for r in runs), runs
    assert len(paused["spans_s"]) == len(runs) and paused["note"]
    # its layer rows are in the table, never "no layer figures"; where the stack sampler saw the
    # exit before the session ended (a race on a busy machine), a note says where the rows end
    assert layers and not any("no layer figures" in n for n in notes), notes
    ended = [n for n in notes if "layer rows end" in n]
    assert len(ended) <= 1 and all(re.match(r"the layer rows end after \d+ window\(s\): process \d+ exited", n)
                                   for n in ended), ended


def _one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("wattlens: error:")
    return lines[0]


def test_pid_that_does_not_exist(db_path):
    r = run_cli("attach", "999999", "--db", str(db_path))
    assert r.returncode == 2
    assert "no process with PID 999999" in _one_line_error(r)
    assert r.stdout == ""


def test_corrupt_database_is_refused_untouched(db_path):
    db_path.write_bytes(b"\x00garbage" * 50)
    r = run_cli("sessions", "--db", str(db_path))
    assert r.returncode == 2 and "--db" in _one_line_error(r)
    assert db_path.read_bytes() == b"\x00garbage" * 50


def test_unwritable_db_path(tmp_path, torch_child):
    blocker = tmp_path / "f"
    blocker.write_text("")
    r = run_cli("sessions", "--db", str(blocker / "x.db"))
    assert r.returncode == 2 and "writable" in _one_line_error(r)


def test_bad_usage_is_one_line_exit_2():
    r = run_cli("report", "1", "--format", "docx", "-o", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "--help" in r.stderr
    r = run_cli("show", "42")
    assert r.returncode == 2 and "no session 42" in _one_line_error(r)


def test_doctor_json_lists_usable_and_unavailable_with_fixes():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert any(s["id"] == "cpu-model" for s in doc["usable"])
    assert all(u["fix"] for u in doc["unavailable"])
    assert {c["name"].split()[0] for c in doc["checks"]} >= {"py-spy", "database"}


def test_doctor_counts_the_stored_sessions_in_words(db_path):
    from wattlens.profiler.store import Store

    store = Store(db_path)
    store.create_session(name="one", kind="run", started_at=1.7e9, start_ns=0)
    store.close()
    doc = json.loads(run_cli("doctor", "--json", "--db", str(db_path)).stdout)
    (check,) = [c for c in doc["checks"] if c["name"] == "database"]
    assert check["ok"] and check["detail"] == f"{db_path} (1 session)"  # was '(1 sessions)'


def test_attached_training_is_split_by_autograd_op_by_lite_reads_with_their_measured_cost(torch_child, db_path):
    """By default (x86-64, ptrace allowed) the backward is split by lite native reads from the
    start: op rows within seconds, no native py-spy run (and its start-up stop) in the first
    minute, and the note says how many reads stopped the thread for how long, measured."""
    from wattlens.profiler.store import Store

    child = torch_child(60)
    r = run_cli("attach", str(child.pid), "--duration", "12", "--db", str(db_path), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]
    store = Store(db_path)
    try:
        events = [e for e in store.events(sid) if e.kind == "backward-ops"]
        layers = store.layer_costs(sid)
    finally:
        store.close()
    if not events:
        pytest.skip("no backward read in 12 s on this machine (busy)")
    assert not [r for e in events for r in e.data.get("native_runs") or ()]  # no py-spy run yet
    note = events[-1].message
    assert "lite native reads" in note and re.search(r"stopping the thread \d+ ms in all \(measured", note), note
    ops = {r.path.removeprefix("backward/") for r in layers if r.path.startswith("backward/")}
    assert ops & {"AddmmBackward0", "MmBackward0"}, ops  # the MLP's Linear layers, named


def test_attached_training_stores_the_backward_split_its_note_states(torch_child, db_path, monkeypatch):
    """The backward rows of every stored window add up to what the session's backward-ops event
    says (the whole pool), not to the few reads pooled when an early window closed."""
    monkeypatch.setenv("WATTLENS_NATIVE_LITE", "0")  # the py-spy runs' split (lite reads unavailable)
    from wattlens.profiler.store import Store

    child = torch_child(60)
    r = run_cli("attach", str(child.pid), "--duration", "12", "--db", str(db_path), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]
    store = Store(db_path)
    events = [e for e in store.events(sid) if e.kind == "backward-ops"]
    layers = store.layer_costs(sid)
    from wattlens.app.report.data import build_report
    from wattlens.app.report.paused import NOTE

    paused = build_report(store, sid)["paused"]
    store.close()
    if not events or not events[-1].data["classes"]:
        pytest.skip("no native read reached the backward in 12 s on this machine (busy)")
    # the report shades each native run where it stopped the target, and says their cost as the note does
    runs = [r for e in events for r in e.data["native_runs"]]
    assert len(paused["spans_s"]) == len(runs) >= 1 and all(0 <= a < b for a, b in paused["spans_s"])
    cost = paused["note"].removeprefix(NOTE + ": ").removesuffix(" (estimated)")
    assert cost in events[-1].message, (paused["note"], events[-1].message)
    classes = events[-1].data["classes"]  # {class path: [share of the backward, se]}
    buckets = [r for r in layers if r.path == "backward"]
    assert buckets, [r.path for r in layers]
    for bucket in buckets:
        kids = {r.path.removeprefix("backward/"): r for r in layers
                if r.window_start_ns == bucket.window_start_ns and r.path.startswith("backward/")}
        assert sum(k.time_s for k in kids.values()) == pytest.approx(bucket.time_s)  # shared out
        for path, (share, se) in classes.items():
            assert kids[path].time_s == pytest.approx(bucket.time_s * share), (path, bucket.window_start_ns)
            assert kids[path].split_se_s == pytest.approx(bucket.time_s * se)


def test_a_reader_that_leaves_is_not_an_internal_error(db_path):
    """`wattlens show 1 | head -2`: the reader closes the pipe; it printed 'internal error:
    BrokenPipeError … please report it' and exited 1."""
    assert run_cli("run", "--db", str(db_path), "--", "true").returncode == 0
    # a run that reported no step says so as a run (it read "attach mode measures the whole process")
    assert "steps: n/a — the in-process agent reported no step" in run_cli("show", "1", "--db", str(db_path)).stdout
    for args in (["show", "1"], ["sessions"], ["advise", "1"]):
        p = subprocess.Popen([sys.executable, "-m", "wattlens.app", *args, "--db", str(db_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdout.close()  # the reader is gone before the first line
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(timeout=120) == 128 + 13 and err == "", (args, err)


def test_attach_to_its_own_shell_measures_the_shell_not_wattlens(db_path):
    """`wattlens attach $$` from a script: the shell's tree holds wattlens and its py-spy, which
    were measured (and stack-sampled) as the target's work; `exec wattlens attach $$` is wattlens
    itself, which was measured without a word."""
    cmd = f"{sys.executable} -m wattlens.app attach $$ --duration 3 --json --db {db_path}"
    r = subprocess.run(["bash", "-c", f"{cmd}; true"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    shell = doc["target"]["pid"]
    assert doc["target"]["mean_cpu_pct"] < 5, doc["target"]  # an idle shell; wattlens was ~20-50 %
    # the stack sampler looked for Python in the shell's tree and found wattlens
    assert any(f"process {shell} does not look like a Python program" in n for n in doc["notes"]), doc["notes"]
    r = subprocess.run(["bash", "-c", f"exec {cmd}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is wattlens itself" in r.stderr, r.stderr


def test_sessions_says_why_a_running_session_has_no_energy_yet(db_path):
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store

    session = ProfilingSession(Store(db_path), target=None, kind="attach", name="live", interval_s=0.1,
                               duration_s=None, discovery=discover(gpu=False), stacks=False)
    session.start()
    try:
        r = run_cli("sessions", "--db", str(db_path))
        assert r.returncode == 0 and "running" in r.stdout, r.stdout
        assert "`wattlens show ID` gives them so far" in r.stdout, r.stdout
    finally:
        session.stop()
