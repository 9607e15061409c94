"""StackSampler attached to real child processes running real (small) models on CPU.

Each test starts a child (tests/fixtures/pyspy/workload.py), waits for its "ready" line, attaches,
samples a few seconds in short windows and checks the rows. Energy comes from a stand-in for the
power side (the hardware boundary): a constant 40 W over each window's own time span.

Nothing here depends on the machine's load (issue 9): on a busy machine py-spy reads fewer
stacks (it skips those that change under it) and attaches later, so each test samples until the
evidence it needs is there (``until``, bounded by ``MAX_SAMPLE_S``) and asserts shares over all the
samples that were read, never over one short window; the samples lost are in the messages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_DATA,
    BUCKET_IDLE,
    BUCKET_OPTIMIZER,
)
from wattlens.profiler.stacks.sampler import StackSampler, find_pyspy

WORKLOAD = Path(__file__).parent / "fixtures" / "pyspy" / "workload.py"
POWER_W = 40.0
MAX_SAMPLE_S = 90.0  # a bound against a hang, not a speed requirement

pytestmark = pytest.mark.skipif(find_pyspy() is None, reason="py-spy is not installed")


def top_counts(windows) -> dict[str, int]:
    """Read samples per top-level entry (a model's root class or a bucket), over all windows."""
    totals: dict[str, int] = {}
    for rows in windows:
        for r in rows:
            if r.granularity == "bucket" or "/" not in r.path:
                totals[r.path] = totals.get(r.path, 0) + r.n_samples
    return totals


def sample_child(mode: str, sample_s: float, *, window_s: float = 1.0, rate_hz: float = 100,
                 until=None, until_sampler=None, **options):
    """Sample for ``sample_s``, then on until ``until(windows)`` and ``until_sampler(sampler)``
    hold (at most MAX_SAMPLE_S)."""
    child = subprocess.Popen(
        [sys.executable, str(WORKLOAD), mode, "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    windows: list = []
    asked: list[tuple[int, int]] = []

    def energy_between(start_ns: int, end_ns: int) -> float:
        asked.append((start_ns, end_ns))
        return POWER_W * (end_ns - start_ns) / 1e9

    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        sampler = StackSampler(
            child.pid,
            rate_hz=rate_hz,
            window_s=window_s,
            on_window=windows.append,
            energy_between=energy_between,
            **options,
        )
        sampler.start()
        assert sampler.available, sampler.reason
        time.sleep(sample_s)
        deadline = time.monotonic() + MAX_SAMPLE_S
        while ((until is not None and not until(list(windows)))
               or (until_sampler is not None and not until_sampler(sampler))) \
                and time.monotonic() < deadline:
            time.sleep(0.25)
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert windows, "no window was produced"
    return windows, asked, sampler


def paths_of(windows) -> set[str]:
    return {r.path for rows in windows for r in rows}


BLOCK = "GPT2LMHeadModel/GPT2Model/GPT2Block"
LAYER = "BertModel/BertEncoder/BertLayer"
MIN_READ_SAMPLES = 60  # enough read samples that a share is a share, whatever the load


def _hf_evidence(windows) -> bool:
    paths = paths_of(windows)
    return (len(windows) >= 2 and sum(top_counts(windows).values()) >= MIN_READ_SAMPLES
            and {BLOCK, f"{BLOCK}/GPT2Attention", f"{BLOCK}/GPT2MLP", f"{LAYER}/BertAttention"} <= paths
            and any(p.startswith(f"{LAYER}/BertIntermediate") for p in paths)
            and any(p.startswith("BertModel/BertEmbeddings") for p in paths))


def test_transformers_models_windows_paths_and_energy_conservation():
    windows, asked, sampler = sample_child("hf", 3.2, window_s=1.0, until=_hf_evidence)  # GPT-2 and BERT in turn
    lost = f"py-spy read {sampler.samples} stacks and could not read {sampler.errors}"
    assert len(windows) >= 2, lost
    paths = paths_of(windows)
    assert {BLOCK, f"{BLOCK}/GPT2Attention", f"{BLOCK}/GPT2MLP"} <= paths, lost
    assert f"{LAYER}/BertAttention" in paths, lost
    assert any(p.startswith(f"{LAYER}/BertIntermediate") for p in paths), lost
    assert any(p.startswith("BertModel/BertEmbeddings") for p in paths), lost
    assert sampler.available  # stopped by us, not by a failure

    assert len(asked) == len(windows)
    for rows, (start_ns, end_ns) in zip(windows, asked, strict=True):
        assert {(r.window_start_ns, r.window_end_ns) for r in rows} == {(start_ns, end_ns)}
        window_energy_j = POWER_W * (end_ns - start_ns) / 1e9
        # conservation: self energies over all rows (buckets included) give the window energy
        assert sum(r.self_energy_j for r in rows) == pytest.approx(window_energy_j, rel=1e-9)
        top = [r for r in rows if r.granularity == "bucket" or "/" not in r.path]
        assert sum(r.share for r in top) == pytest.approx(1.0)
        by_path = {r.path: r for r in rows}
        for r in rows:  # inclusive >= the children's inclusive, summed
            kids = [
                c for p, c in by_path.items()
                if p.startswith(r.path + "/") and p.count("/") == r.path.count("/") + 1
            ]  # fmt: skip
            assert r.n_samples >= sum(c.n_samples for c in kids)
        assert all(r.method == "stack-sampling" for r in rows)
    # the child does forwards only: over all the samples that were read (one short window may
    # hold two samples: a share of one window is not evidence), the models hold most of them
    totals = top_counts(windows)
    read = sum(totals.values())
    assert read >= MIN_READ_SAMPLES, lost
    models = totals.get("GPT2LMHeadModel", 0) + totals.get("BertModel", 0)
    assert models / read > 0.5, (totals, lost)


def test_plain_module_paths_and_sleeping_main_thread():
    def enough(windows) -> bool:
        return ("TinyNet/Sequential/Block/Mlp/Linear" in paths_of(windows)
                and top_counts(windows).get(BUCKET_IDLE, 0) >= 3)

    windows, _, sampler = sample_child("idle", 2.0, until=enough)  # TinyNet forwards between 20 ms sleeps
    paths = paths_of(windows)
    assert "TinyNet/Sequential/Block/Mlp/Linear" in paths
    assert "gpu-wait" not in paths  # CPU target: loss.item() stays in TinyNet
    # the sleeps are recognised as idle (how large their share is depends on how fast the
    # forwards run, i.e. on the machine's load: not asserted)
    totals = top_counts(windows)
    assert totals.get(BUCKET_IDLE, 0) >= 3, (totals, sampler.samples, sampler.errors)
    assert set(totals) <= {"TinyNet", BUCKET_IDLE, "python (other)"}, totals


def test_native_runs_after_the_first_wait_for_the_budget():
    """No pool cap, so only the budget can hold the second native run back: at a budget of
    0.01 % the first run's measured cost (tenths of a second of py-spy CPU) buys it an hour of
    waiting, so no second py-spy starts while the windows go on (without the budget it would
    start at once); the first run itself was not held back."""
    seen: dict[str, int] = {}
    second: list[bool] = []

    def first_run_done_and_three_windows_more(smp) -> bool:
        if not smp.native_runs:
            return False
        if smp._native_proc is not None:
            second.append(True)
        return smp.windows >= seen.setdefault("windows", smp.windows) + 3

    _, _, sampler = sample_child(
        "llama_train", 1.0, native_hz=20, native_pool_reads=0, native_budget=1e-4, native_lite=False,
        until_sampler=first_run_done_and_three_windows_more)
    assert "windows" in seen, "the first native run never ended"
    assert not second, "a second native run started despite the budget"
    assert len(sampler.native_runs) == 1, sampler.native_runs
    cpu_s, reads, per_read_s = sampler.native_runs[0]
    assert cpu_s > 0 and reads == 5 * 20
    # the CPU per read, measured past the run's start (2 s into its 5 s): what the next run's
    # estimate rests on
    assert per_read_s is not None and 0 < per_read_s < cpu_s
    assert sum(sampler.backward_ops.values()) > 0  # its reads were pooled
    assert "keep within 0.01%" in (sampler.backward_message() or "")


def test_training_loop_buckets():
    wanted = (BUCKET_DATA, BUCKET_OPTIMIZER, BUCKET_BACKWARD, "Sequential")
    windows, _, _ = sample_child("train", 2.5, until=lambda w: all(top_counts(w).get(b, 0) > 0 for b in wanted))
    totals = top_counts(windows)
    for bucket in (BUCKET_DATA, BUCKET_OPTIMIZER, BUCKET_BACKWARD):
        assert totals.get(bucket, 0) > 0, (bucket, totals)
    assert totals.get("Sequential", 0) > 0  # the forward itself


def test_attached_training_loop_stores_backward_rows_by_module_class(tmp_path):
    """A real Llama-style training loop: the backward rows name module classes (LlamaMLP's
    Linears) under a labelled method, no row claims more than the backward bucket had, and they
    survive the store. Native reads at 20 Hz so the evidence comes within seconds."""
    from wattlens.profiler.stacks import backward_map
    from wattlens.profiler.store import Store

    def mlp_rows(windows) -> list:
        return [r for rows in windows for r in rows
                if r.path.startswith(f"{BUCKET_BACKWARD}/") and "LlamaMLP" in r.path]

    windows, _, sampler = sample_child(
        "llama_train", 3.0, until=lambda w: bool(mlp_rows(w)), native_hz=20, native_pool_reads=1,
        native_lite=False,  # the py-spy runs alone (where lite reads are unavailable): test_native_lite.py
        until_sampler=lambda smp: smp.native_paused_note is not None)
    # a pool of 1 read is full after the first run: the native loop waits for its refresh
    # (10 min away), and stop() woke it (the thread is gone, the session did not wait it out)
    assert sampler.native_paused_note is not None, sampler.backward_ops
    assert sampler._native_thread is not None and not sampler._native_thread.is_alive()
    assert "native reads paused after" in (sampler.backward_message() or "")
    # what the run cost the target, from its py-spy's own CPU time (wait4), is measured and said
    assert len(sampler.native_runs) == 1 and sampler.native_runs[0][0] > 0, sampler.native_runs
    assert re.search(r"\d+ native runs? cost the target about", sampler.backward_message() or "")
    rows_mlp = mlp_rows(windows)
    assert rows_mlp, (sampler.backward_ops, sampler.forward_ops)
    assert {r.method for r in rows_mlp} == {backward_map.METHOD}
    assert all(r.phase == "backward" and r.granularity == "bucket" for r in rows_mlp)
    for rows in windows:
        bucket = next((r for r in rows if r.path == BUCKET_BACKWARD), None)
        kids = [r for r in rows if r.path.startswith(f"{BUCKET_BACKWARD}/")]
        if bucket is None:
            assert not kids
            continue
        assert all(k.energy_j <= bucket.energy_j + 1e-12 and k.time_s <= bucket.time_s + 1e-12
                   for k in kids)
        if kids:  # the children share out the bucket, nothing more
            assert sum(k.energy_j for k in kids) == pytest.approx(bucket.energy_j)
            assert bucket.self_energy_j == 0.0
        elif sampler.native_pooled_ns is not None and sampler.native_pooled_ns <= sampler.native_hold_until_ns:
            # the first native reads came in time: the windows before them waited and were split
            pytest.fail(f"a window's backward stayed one bucket: {[r.path for r in rows]}")
    message = sampler.backward_message()
    assert message is not None and backward_map.METHOD in message
    classes = sampler.backward_classes()  # the session event's data: share and se per class
    assert any("LlamaMLP" in path for path in classes), classes
    assert all(0 < share <= 1 and se > 0 for share, se in classes.values())

    store = Store(tmp_path / "s.db")
    sid, _ = store.create_session(name="t", kind="attach", started_at=time.time(),
                                  start_ns=time.monotonic_ns())
    store.write_batch(sid, [], layer_costs=[r for rows in windows for r in rows])
    stored = [r for r in store.layer_costs(sid) if "LlamaMLP" in r.path
              and r.path.startswith(f"{BUCKET_BACKWARD}/")]
    assert stored and {r.method for r in stored} == {backward_map.METHOD}

    # at the session's end every window is split again by the whole pool, as its note says
    parents, final = sampler.final_split()
    assert {(p.window_start_ns, p.path) for p in parents} >= {
        (r.window_start_ns, r.path) for rows in windows for r in rows if r.path == BUCKET_BACKWARD}
    store.replace_split_rows(sid, parents, final)
    after = store.layer_costs(sid)
    store.close()
    untouched = [r for rows in windows for r in rows if not r.path.startswith((BUCKET_BACKWARD, "optimizer/"))]
    assert sorted(r.path for r in after if not r.path.startswith((BUCKET_BACKWARD, "optimizer/"))) == \
        sorted(r.path for r in untouched)
    for bucket in (r for r in after if r.path == BUCKET_BACKWARD):
        kids = {r.path.removeprefix(f"{BUCKET_BACKWARD}/"): r for r in after
                if r.window_start_ns == bucket.window_start_ns and r.path.startswith(f"{BUCKET_BACKWARD}/")}
        for path, (share, se) in classes.items():
            assert kids[path].time_s == pytest.approx(bucket.time_s * share)
            assert kids[path].split_se_s == pytest.approx(bucket.time_s * se)
