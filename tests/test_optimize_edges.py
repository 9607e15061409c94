"""`wattlens optimize` at its edges, from a user trial: a one-round A/B, the latency figure's
interval, the sizes on disk, the progress lines, two runs writing the same --out, and a stop by
Ctrl-C, SIGTERM or `timeout` (temp folders removed, the session stored as stopped).

The models are the cheapest real ones: a two-Linear torch module file (in-process runs) and a
tiny GPT-2 folder where the fresh-interpreter load check must run (the signal tests). No
wall-clock assertions: the machine running these is shared.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import save_hf, tiny_gpt2
from wattlens.profiler.store import Store


def _module_file(folder: Path) -> Path:
    torch.manual_seed(0)
    src = folder / "net.pt"
    torch.save(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)), src)
    return src


def _main(*argv: str) -> tuple[int, str, str]:
    """`wattlens ARGV` in this process: (exit code, stdout, stderr)."""
    from wattlens.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


class SteadyMeter:
    """A meter (the hardware boundary) whose every window reads 10 W over its length: never no
    energy, so a round is never refused for it."""

    interval_s = 0.01
    sources: list = []

    def __init__(self):
        self._opened: dict[str, float] = {}

    def begin_window(self, key: str) -> None:
        self._opened[key] = time.perf_counter()

    def end_window(self, key: str):
        from wattlens.profiler.meter import Measurement

        d = time.perf_counter() - self._opened.pop(key)
        return Measurement(duration_s=d, energy_j={"test": 10.0 * d}, methods={"test": "counter"},
                           attributed_energy_j=10.0 * d, attributed_method="counter (test)")


@pytest.fixture(scope="module")
def int8_runs(tmp_path_factory):
    """quantize-int8 of a module file, first with one A/B round, then with two, into one database.

    The rounds' windows are measured by :class:`SteadyMeter` and none is refused as too short
    (test_verify_windows covers that): on this loaded machine the one round under test was once
    refused, and what is tested here is how a result is stored and printed."""
    from wattlens.advisor import verify

    d = tmp_path_factory.mktemp("edges")
    src, db = _module_file(d), d / "w.db"
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(d / "xdg-data"))
        mp.setenv("XDG_CONFIG_HOME", str(d / "xdg-config"))
        mp.setattr(verify, "_default_meter", SteadyMeter)
        mp.setattr(verify, "window_problem", lambda w, required_s: None)
        for rounds in ("1", "2"):
            out = d / f"int8-r{rounds}"
            code, stdout, stderr = _main("optimize", str(src), "--trust-pickle", "--action", "quantize-int8",
                                         "--out", str(out), "--rounds", rounds, "--db", str(db))
            runs[rounds] = SimpleNamespace(code=code, stdout=stdout, stderr=stderr, out=out, src=src)
    store = Store(db)
    for r in runs.values():
        (r.action,) = [a for a in store.actions() if a["params"]["out"] == str(r.out)]
        r.session = store.session(r.action["session_id"])
    runs["ab"] = store.measurements("ab")
    store.close()
    return runs


def _line(stdout: str, prefix: str) -> str:
    (line,) = [x.strip() for x in stdout.splitlines() if x.strip().startswith(prefix)]
    return line


# --------------------------------------------------------------------------- one round (item 1)


def test_one_round_is_stored_unverified_with_its_reason_and_not_learned_from(int8_runs):
    one, two = int8_runs["1"], int8_runs["2"]
    assert one.code == 0, one.stderr
    assert one.action["status"] == "unverified"
    measured = _line(one.stdout, "measured:")
    # the figure was measured, so it is shown — with why it is not a verified one
    assert "energy per sample" in measured and "one round gives no interval" in measured
    assert "unverified" in measured and "stored as unverified" in one.stdout
    assert one.action["result"]["measured_text"] == measured.removeprefix("measured:").strip()
    assert one.session["status"] == "completed" and "unverified" in one.session["end_reason"]
    # only the two-round result is a point for the regression
    assert two.code == 0, two.stderr
    assert [m["payload"]["action_id"] for m in int8_runs["ab"]] == [two.action["id"]]
    assert two.action["status"] == ("verified" if two.action["result"]["verification"]["saving_interval"]
                                    else "unverified")
    assert "0 earlier A/B results" in _line(two.stdout, "predicted:")


def test_the_fidelity_line_reads_as_every_report_does(int8_runs):
    from wattlens.app import present

    two = int8_runs["2"]
    fidelity = _line(two.stdout, "fidelity:").removeprefix("fidelity:").strip()
    assert fidelity.startswith("cosine ")  # the module file is no language model: its outputs are compared
    assert fidelity == present.fidelity_text(two.action["result"]["fidelity"])


# --------------------------------------------------------------------------- latency (item 5)


def test_the_latency_line_carries_its_interval_as_the_energy_line_does(int8_runs):
    from wattlens.app.optimize_cmd import latency_text
    from wattlens.profiler.figures import UNPROVEN

    two = int8_runs["2"]
    v = two.action["result"]["verification"]
    low, high = v["latency_saving_interval"]
    latency = _line(two.stdout, "latency:")
    assert "time per sample" in latency and "95 % CI" in latency
    assert latency.removeprefix("latency:").strip() == two.action["result"]["latency_text"]
    assert (UNPROVEN in latency) == (low <= 0 <= high)
    assert "no interval" in _line(int8_runs["1"].stdout, "latency:")
    # the trial's bf16 run: −12.4 % with an interval of −59 % … +52 % shows no difference
    trial = SimpleNamespace(latency_saving_fraction=0.124, latency_saving_interval=(-0.52, 0.59),
                            confidence=0.95)
    assert latency_text(trial) == ("−12.4 % time per sample (saving), 95 % CI −59.0 % … +52.0 %; "
                                   f"{UNPROVEN}")


# --------------------------------------------------------------------------- progress (item 6)


def test_each_stage_is_said_once(int8_runs):
    stages = re.findall(r"^wattlens: (\w+)…$", int8_runs["2"].stdout, flags=re.M)
    assert stages.count("save") == 1, stages
    assert stages[:2] == ["load", "save"] and "verify" in stages


# --------------------------------------------------------------------------- sizes (item 7)


def test_sizes_do_not_claim_a_smaller_file_than_written(int8_runs):
    from wattlens.app.present import sizes_text

    two = int8_runs["2"]
    written = (two.out / "model.safetensors").stat().st_size
    sizes = two.action["result"]["sizes"]
    assert sizes["saved_weights_bytes"] == written and sizes["base_weights_bytes"] == two.src.stat().st_size
    assert sizes["weights_quantized_on_load"] is True
    assert sizes["candidate_tensor_bytes"] < sizes["base_tensor_bytes"]  # smaller in memory...
    line = _line(two.stdout, "tensor elements:")
    # ...but the file holds float weights, and the line says what was written
    assert f"→ {written / 2**20:.2f} MiB (float weights, quantized when loaded)" in line
    assert "in memory" in line
    text = sizes_text(sizes)
    assert f"→ {written / 2**20:.2f} MiB" in text and "quantized when loaded" in text


# --------------------------------------------------------------------------- the same --out (item 4)


def test_staged_dir_refuses_a_folder_another_run_filled(tmp_path):
    from wattlens.advisor.modelio import OutputTakenError, staged_dir

    out = tmp_path / "out"
    with pytest.raises(OutputTakenError) as err, staged_dir(out) as tmp:
        (tmp / "mine.txt").write_text("this run")
        out.mkdir()
        (out / "theirs.txt").write_text("the other run")
    assert err.value.exit_code == 2 and "already exists" in str(err.value) and "--out" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


def test_two_runs_writing_one_out_give_the_loser_a_one_line_error(tmp_path, monkeypatch):
    import wattlens.advisor.optimize as optimize_module

    src, db, out = _module_file(tmp_path), tmp_path / "w.db", tmp_path / "out"
    real = optimize_module.measure_fidelity

    def the_other_run_finishes_first(*args, **kwargs):
        out.mkdir()
        (out / "wattlens-optimization.json").write_text("{}")  # the first run's copy
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize_module, "measure_fidelity", the_other_run_finishes_first)
    code, stdout, stderr = _main("optimize", str(src), "--trust-pickle", "--action", "prune-unstructured:0.5",
                                 "--out", str(out), "--rounds", "1", "--db", str(db))
    (line,) = [x for x in stderr.splitlines() if x.startswith("wattlens: error")]
    assert code == 2 and "internal error" not in stderr
    assert f"{out} already exists" in line and "choose a new --out" in line
    assert [p.name for p in out.iterdir()] == ["wattlens-optimization.json"]  # the first's, untouched
    assert (out / "wattlens-optimization.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    (session,) = Store(db).sessions()  # what it measured is kept, as a failed run, with why
    assert session["status"] == "failed" and "already exists" in session["end_reason"]


# --------------------------------------------------------------------------- stops (items 2, 3)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_hf(tiny_gpt2(), tmp_path_factory.mktemp("gpt2") / "gpt2")


def _start(gpt2_dir: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "log.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattlens.app", "optimize", str(gpt2_dir), "--action", "prune-mlp:0.25",
         "--out", str(tmp_path / "out"), "--db", str(tmp_path / "w.db"), *extra],
        stdout=log.open("w"), stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    return proc, log


def _wait_for(proc: subprocess.Popen, found, what: str) -> None:
    deadline = time.monotonic() + 600  # a generous bound on a loaded machine, not a measurement
    while not found():
        assert proc.poll() is None, f"optimize ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after 600 s"
        time.sleep(0.02)


def _assert_stopped_cleanly(proc, tmp_path: Path, code: int, reason: str) -> None:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == code, stderr
    # one line of ours (torchao's import warnings may stand beside it), no traceback
    (line,) = [x for x in stderr.splitlines() if x.startswith("wattlens: stopped")]
    assert line.startswith(f"wattlens: {reason}") and "nothing was written" in line
    assert "Traceback" not in stderr and "interrupted" not in stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert list((tmp_path / "tmp").iterdir()) == []  # no wattlens-plainload-* left either
    (session,) = Store(tmp_path / "w.db").sessions()
    assert session["status"] == "stopped" and session["end_reason"] == reason
    assert f"session {session['id']}" in line


def test_sigterm_during_the_load_check_cleans_up_and_exits_143(gpt2_dir, tmp_path):
    """The trial's `timeout 20 wattlens optimize …` left the staged copy in a hidden folder and
    the fresh-interpreter load check's temp folder: SIGTERM now takes Ctrl-C's path."""
    proc, _ = _start(gpt2_dir, tmp_path, "--rounds", "2")
    _wait_for(proc, lambda: any(p.name.startswith("wattlens-plainload-") for p in (tmp_path / "tmp").iterdir()),
              "the plain-transformers load check")
    os.kill(proc.pid, signal.SIGTERM)  # the process only, as `kill PID`: its child is ended by it
    _assert_stopped_cleanly(proc, tmp_path, 128 + signal.SIGTERM, "stopped by SIGTERM")


def test_ctrl_c_during_the_ab_run_is_stored_as_a_user_stop(gpt2_dir, tmp_path):
    proc, log = _start(gpt2_dir, tmp_path)  # the default rounds: the A/B runs a while
    _wait_for(proc, lambda: "wattlens: verify…" in log.read_text(), "the A/B run")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _assert_stopped_cleanly(proc, tmp_path, 128 + signal.SIGINT, "stopped by the user (Ctrl-C)")


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_sighup_and_sigterm_take_ctrl_cs_path(signum):
    """A closed terminal (SIGHUP) or a `kill` stops optimize as Ctrl-C does: an exception in the
    main thread that runs every cleanup on its way out, and the handlers are restored after."""
    from wattlens.app import optimize_cmd

    def harmless(*_):  # stands in for the default action (which would end this test process)
        return None

    previous = signal.signal(signum, harmless)
    try:
        with pytest.raises(KeyboardInterrupt) as stop, optimize_cmd._RaiseOnStop(
                (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)):
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs between bytecodes of the main thread
                time.sleep(0.001)
        assert stop.value.signum == signum
        assert optimize_cmd.stopped_by(signum) == signal.Signals(signum).name
        assert signal.getsignal(signum) is harmless
    finally:
        signal.signal(signum, previous)
