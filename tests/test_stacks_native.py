"""Backward by autograd op (profiler/stacks/native.py) on a recorded `py-spy record --native` window
of a Llama-style training loop (forward, backward, AdamW; torch 2.13 CPU, Python 3.11)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace as dataclass_replace
from pathlib import Path

import pytest

from wattlens.profiler.stacks.native import (
    ENGINE_OTHER,
    OPTIMIZER_NO_OP,
    PYTHON_FUNCTION,
    autograd_node,
    backward_ops,
    op_shares,
    optimizer_ops,
    split_backward,
    split_optimizer,
)
from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_OPTIMIZER,
    OPTIMIZER_STEP_OTHER,
    aggregate,
    window_counts,
)

RAW = (Path(__file__).parent / "fixtures" / "pyspy" / "llama_train_native_py311.txt").read_text()


def test_every_backward_sample_gets_an_autograd_op():
    ops = backward_ops(RAW)
    buckets = {att.key: n for att, n in window_counts(RAW).items()}
    assert sum(ops.values()) == buckets[BUCKET_BACKWARD]  # nothing in the backward is left out
    assert ops["MmBackward0"] > 0 and ops["SiluBackward0"] > 0
    assert ops["ScaledDotProductFlashAttentionForCpuBackward0"] > 0
    named = sum(n for op, n in ops.items() if op != ENGINE_OTHER)
    assert named >= 0.8 * sum(ops.values())


def test_innermost_node_wins_and_python_functions_are_named():
    parts = [
        "torch::autograd::generated::MulBackward0::apply (libtorch_cpu.so)",
        "torch::autograd::generated::MmBackward0::apply (libtorch_cpu.so)",
        "at::mm (libtorch_cpu.so)",
    ]
    assert autograd_node(parts) == "MmBackward0"
    assert autograd_node(["torch::autograd::PyNode::apply (libtorch_python.so)"]) == PYTHON_FUNCTION
    assert autograd_node(["<module> (x.py:1)"]) is None


def test_split_keeps_the_windows_energy_and_the_bucket_as_parent():
    rows = aggregate(
        window_counts(RAW), window_start_ns=0, window_end_ns=10**9, rate_hz=20.0,
        window_energy_j=12.0,
    )
    ops = backward_ops(RAW)
    split = split_backward(rows, ops)
    assert sum(r.self_energy_j for r in split) == pytest.approx(12.0)
    parent = next(r for r in split if r.path == BUCKET_BACKWARD)
    before = next(r for r in rows if r.path == BUCKET_BACKWARD)
    assert parent.energy_j == pytest.approx(before.energy_j) and parent.self_energy_j == 0.0
    mm = next(r for r in split if r.path == "backward/MmBackward0")
    assert mm.phase == "backward" and mm.n_samples == ops["MmBackward0"]
    assert mm.energy_j == pytest.approx(before.energy_j * ops["MmBackward0"] / sum(ops.values()))
    assert split_backward(rows, Counter()) == rows  # no native reads yet: unchanged


def test_op_shares_carry_a_binomial_standard_error():
    shares = op_shares(Counter({"MmBackward0": 30, "SiluBackward0": 10}))
    p, se = shares["MmBackward0"]
    assert p == pytest.approx(0.75) and se == pytest.approx(math.sqrt(0.75 * 0.25 / 40))
    assert op_shares(Counter()) == {}


def test_blas_leaf_in_the_backward_is_a_matmul_grad_and_forward_nodes_do_not_count():
    py = "<module> (/x/train.py:12);Tensor.backward (/s/torch/_tensor.py:623)"
    blas = f"thread (1): MainThread;{py};mkl_blas_def_sgemm_kernel_0_zen (/s/libmkl.so) 3"
    # a forward stack that names a node it is creating: not backward work
    fwd = (
        "thread (1): MainThread;<module> (/x/train.py:11);Linear.forward (/s/torch/nn/modules/"
        "linear.py:134);torch::autograd::generated::AddmmBackward0::AddmmBackward0 (/s/lib.so) 2"
    )
    # the engine's own thread on a GPU: no Python frames, a node on the native stack
    engine = "thread (2);torch::autograd::generated::MmBackward0::apply (/s/lib.so) 4"
    ops = backward_ops("\n".join([blas, fwd, engine]))
    assert ops == Counter({"matmul grad (BLAS kernel; node not unwound)": 3, "MmBackward0": 4})


def test_optimizer_native_reads_name_the_tensor_ops_of_each_part():
    """The capture's optimizer samples: Adam's single-tensor update in mul_ (4) and add_ (1),
    and the step's profiler hook (record_function: no tensor op)."""
    assert optimizer_ops(RAW) == Counter({
        ("_single_tensor_adam", "mul_"): 4,
        ("_single_tensor_adam", "add_"): 1,
        (OPTIMIZER_STEP_OTHER, OPTIMIZER_NO_OP): 1,
    })


def test_split_optimizer_keeps_the_window_energy():
    counts = window_counts(RAW)
    rows = aggregate(counts, window_start_ns=0, window_end_ns=10**9, rate_hz=1,
                     window_energy_j=50.0)
    out = {r.path: r for r in split_optimizer(split_backward(rows, backward_ops(RAW)),
                                              optimizer_ops(RAW))}
    part = out[f"{BUCKET_OPTIMIZER}/_single_tensor_adam"]
    mul = out[f"{BUCKET_OPTIMIZER}/_single_tensor_adam/mul_"]
    add = out[f"{BUCKET_OPTIMIZER}/_single_tensor_adam/add_"]
    assert part.self_energy_j == 0.0 and part.energy_j == pytest.approx(mul.energy_j + add.energy_j)
    assert mul.self_energy_j == pytest.approx(4 * add.self_energy_j)
    assert (mul.n_samples, add.n_samples) == (4, 1)
    assert sum(r.self_energy_j for r in out.values()) == pytest.approx(50.0)
    assert split_optimizer(rows, Counter()) == rows  # no native reads: unchanged


def test_native_runs_are_few_so_their_start_up_stop_is_paid_rarely():
    """Each native py-spy stops the target once while it loads symbols (0.3-0.65 s measured) and
    slows it for seconds after: the first run is short and fast (the split starts early, on ~50
    reads), then the runs are long, so a session pays that start a few times."""
    from wattlens.profiler.stacks.native import native_run

    first_s, first_hz = native_run(0)
    assert first_s <= 5 and first_s * first_hz >= 50
    assert native_run(0, 20) == (first_s, 20)  # a higher steady rate is never lowered
    runs = [native_run(n) for n in range(12)]
    assert all(hz == 1 for _, hz in runs[1:]) and runs[-1][0] >= 300

    def starts_within(limit_s: float) -> int:
        t, n = 0, 0
        while t < limit_s:
            t, n = t + native_run(n)[0], n + 1
        return n

    assert starts_within(60) <= 2 and starts_within(180) <= 3 and starts_within(600) <= 4


def test_native_reads_become_rare_refreshes_once_the_pool_carries_the_split():
    """The steady 1-Hz reads still pause the target (~5 ms each): once the pooled backward reads
    bound every op share's standard error to 2.5 pp they stop, but for a short refresh run every
    10 minutes; a pool of 0 (the cap switched off) never stops them."""
    from wattlens.profiler.stacks.native import (
        NATIVE_POOL_BACKWARD_READS,
        native_run,
        native_schedule,
    )

    assert 0.5 / NATIVE_POOL_BACKWARD_READS ** 0.5 <= 0.025
    for n in range(5):  # before the pool is full: the runs of native_run, back to back
        assert native_schedule(n, NATIVE_POOL_BACKWARD_READS - 1) == (0.0, *native_run(n))
    wait_s, run_s, hz = native_schedule(3, NATIVE_POOL_BACKWARD_READS)
    assert wait_s >= 300 and run_s <= 60 and hz == 1
    assert run_s * hz / (wait_s + run_s) < 0.15  # a small fraction of the steady reads
    assert native_schedule(3, 10**6, pool_reads=0) == (0.0, *native_run(3))


def test_native_runs_after_the_first_keep_the_target_within_the_budget():
    """A native run's cost (its py-spy's CPU, spent with the target stopped) counts against a
    share of the attach's time: the next run waits until, once it ends, the total stays within
    it. The first run is never held back (the split in the first minute needs it)."""
    from wattlens.profiler.stacks.native import (
        NATIVE_BUDGET,
        native_budget_wait,
        native_next_cost_s,
        native_read_cost_s,
    )

    assert 0 < NATIVE_BUDGET <= 0.005
    # the measured shape of a training attach: a first run of 50 reads costing 0.86 s of py-spy
    # CPU, its start ~0.65 s of it (attach_native_runs_train.md), then runs of 120 reads at 1 Hz
    unsplit = [(0.86, 50, None)]  # the per-read CPU could not be measured: start counted per read
    assert native_next_cost_s(unsplit, 120) == pytest.approx(0.86 / 50 * 120)
    split = [(0.86, 50, 0.0033)]  # measured after the start: the start is 0.86 - 50 x 3.3 ms
    next_s = native_next_cost_s(split, 120)
    assert next_s == pytest.approx(0.86 - 50 * 0.0033 + 120 * 0.0033)
    assert next_s < native_next_cost_s(unsplit, 120)  # the second run waits less
    wait_s = native_budget_wait(0.86, 15.0, next_s, 120.0)
    assert (0.86 + next_s) / (15.0 + wait_s + 120.0) == pytest.approx(NATIVE_BUDGET)
    # spent within budget already, and the next run fits: no wait
    assert native_budget_wait(0.1, 1000.0, 0.5, 120.0) == 0.0
    # the largest start and per-read cost seen count (errs on the target's side) ...
    runs = [(0.86, 50, 0.0033), (1.5, 300, 0.004)]
    assert native_next_cost_s(runs, 60) == pytest.approx(max(0.86 - 50 * 0.0033, 1.5 - 300 * 0.004) + 60 * 0.004)
    # ... and a short run never looks cheaper than the cheapest run so far (it pays a start)
    assert native_next_cost_s([(0.86, 50, None), (2.5, 300, None)], 60) == 0.86
    assert native_next_cost_s([(0.86, 50, 0.0), (0.9, 300, None)], 1) == 0.86
    assert native_next_cost_s([], 60) == 0.0
    # the per-read CPU: after the mark, over the reads after it; none without a mark or reads
    assert native_read_cost_s(0.86, 0.76, 30) == pytest.approx(0.1 / 30)
    assert native_read_cost_s(0.86, None, 30) is None and native_read_cost_s(0.86, 0.86, 0.4) is None
    assert native_read_cost_s(0.86, 0.9, 30) == 0.0  # clock noise never makes it negative
    assert native_budget_wait(100.0, 1.0, 100.0, 1.0, budget=0) == 0.0  # budget off


def _bucket(w: int, path: str, time_s: float, rank: int | None = None):
    from wattlens.profiler.records import LayerCost

    return LayerCost(window_start_ns=w, window_end_ns=w + 5, path=path, granularity="bucket",
                     method="stack-sampling", time_s=time_s, share=0.5, energy_j=2 * time_s,
                     self_time_s=time_s, self_energy_j=2 * time_s, phase="backward", rank=rank)


def test_the_session_end_splits_every_window_by_the_whole_pool_and_the_store_keeps_that(tmp_path):
    """A window is split by the native reads pooled when it closes; the first ones by few. At the
    end every window is split again by the whole pool (what the session's note says), and the
    store replaces those rows, and only those."""
    import time

    from wattlens.profiler.records import LayerCost
    from wattlens.profiler.stacks.sampler import StackSampler
    from wattlens.profiler.store import Store

    delivered: list[list[LayerCost]] = []
    sampler = StackSampler(1, on_window=delivered.append, energy_between=lambda a, b: None, rank=3)
    forward = LayerCost(0, 5, "M/Linear", "class", "stack-sampling", 1.0, 0.5, 2.0, 1.0, 2.0)
    sampler.backward_ops.update({"MmBackward0": 1, "SiluBackward0": 3})  # the first few reads
    sampler._deliver([forward, _bucket(0, BUCKET_BACKWARD, 4.0)])
    sampler.backward_ops.update({"MmBackward0": 29, "SiluBackward0": 7})  # the session: 30 / 10
    sampler._deliver([dataclass_replace(forward, window_start_ns=10, window_end_ns=15),
                      _bucket(10, BUCKET_BACKWARD, 2.0)])
    first = {r.path: r for r in delivered[0]}
    assert first["backward/MmBackward0"].time_s == pytest.approx(1.0)  # 1 of 4 reads

    parents, rows = sampler.final_split()
    assert [(p.window_start_ns, p.path, p.rank) for p in parents] == [(0, BUCKET_BACKWARD, 3), (10, BUCKET_BACKWARD, 3)]
    by = {(r.window_start_ns, r.path): r for r in rows}
    assert by[(0, "backward/MmBackward0")].time_s == pytest.approx(3.0)  # 30 of 40 reads
    assert by[(0, "backward/MmBackward0")].split_se_s == pytest.approx(4.0 * math.sqrt(0.75 * 0.25 / 40))
    assert by[(10, "backward/SiluBackward0")].energy_j == pytest.approx(4.0 * 0.25)
    assert by[(0, BUCKET_BACKWARD)].self_time_s == 0.0 and by[(0, BUCKET_BACKWARD)].rank == 3

    store = Store(tmp_path / "s.db")
    sid, _ = store.create_session(name="t", kind="attach", started_at=time.time(), start_ns=0)
    other, _ = store.create_session(name="o", kind="attach", started_at=time.time(), start_ns=0)
    for s in (sid, other):
        store.write_batch(s, [], layer_costs=[r for w in delivered for r in w])
    store.replace_split_rows(sid, parents, rows)
    after = {(r.window_start_ns, r.path): r for r in store.layer_costs(sid)}
    assert len(store.layer_costs(sid)) == len(store.layer_costs(other))  # the same rows, re-split
    assert after[(0, "backward/MmBackward0")].time_s == pytest.approx(3.0)
    assert after[(0, "M/Linear")] == dataclass_replace(forward, rank=3)  # the forward is not touched
    assert {(r.window_start_ns, r.path): r.time_s for r in store.layer_costs(other)}[
        (0, "backward/MmBackward0")] == pytest.approx(1.0)  # nor is another session
    store.close()




def test_no_final_split_while_the_samplers_thread_still_runs():
    """stop() gave up on a hung py-spy: a window may still be delivered after the final split,
    so there is none (each window keeps the split it had)."""
    import threading

    from wattlens.profiler.stacks.sampler import StackSampler

    sampler = StackSampler(1, on_window=lambda rows: None, energy_between=lambda a, b: None)
    sampler.backward_ops.update({"MmBackward0": 3})
    sampler._deliver([_bucket(0, BUCKET_BACKWARD, 1.0)])
    assert sampler.final_split()[0]
    release = threading.Event()
    sampler._thread = threading.Thread(target=release.wait)
    sampler._thread.start()
    try:
        assert sampler.final_split() == ([], [])
    finally:
        release.set()
        sampler._thread.join()
    assert sampler.final_split()[0]


def test_a_processes_cpu_so_far_is_read_by_pid_and_none_once_it_is_gone():
    """The native runs' per-read cost is read from their py-spy's CPU 2 s in (``pid_cpu_s``):
    a live process's CPU time grows with the work it does; a reaped one reads None, not 0."""
    import subprocess
    import sys

    from wattlens.profiler.process import pid_cpu_s

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\nprint('done', flush=True)\n"
                             "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert busy.stdout is not None and busy.stdout.readline().strip() == "done"
    cpu_s = pid_cpu_s(busy.pid)
    assert cpu_s is not None and cpu_s >= 0.3
    busy.communicate("")
    assert pid_cpu_s(busy.pid) is None


def test_lite_reads_slow_down_rather_than_pass_the_budget():
    """Beside a test suite our own reader thread waited for a CPU while it held the target
    stopped: 678 lite reads stopped it 1.46 s, 1.00 % of a 146-s attach, at a steady 5 Hz."""
    from wattlens.profiler.stacks.native import NATIVE_BUDGET, lite_wait_s

    assert lite_wait_s(5.0, spent_s=0.03, elapsed_s=60.0, read_cost_s=0.0003) == 0.2  # quiet: 5 Hz
    # loaded (2 ms a read): the next read waits until the reads' share is back within the budget
    wait_s = lite_wait_s(5.0, spent_s=0.6, elapsed_s=60.0, read_cost_s=0.002)
    assert (0.6 + 0.002) / (60.0 + wait_s) == pytest.approx(NATIVE_BUDGET)
    # simulated: whatever a read costs, the reads never hold the target past the budget for long
    for cost_s in (0.0003, 0.002, 0.02):
        t_s = spent_s = 0.0
        while t_s < 600.0:
            t_s += lite_wait_s(5.0, spent_s, t_s, cost_s)
            spent_s += cost_s
        assert spent_s / t_s <= NATIVE_BUDGET * 1.01 or cost_s * 5.0 <= NATIVE_BUDGET
    assert lite_wait_s(5.0, spent_s=10.0, elapsed_s=1.0, read_cost_s=0.1, budget=0) == 0.2  # off
