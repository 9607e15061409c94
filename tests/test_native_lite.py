"""Lite native reads (profiler/stacks/native_lite.py) of real torch processes: one thread stopped
for a stack copy, the autograd op named from torch's symbols in our own process.

Every test reads a real child process; nothing depends on the machine's load (each test reads
until the evidence it needs is there, bounded by MAX_READ_S against a hang)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from wattlens.profiler.stacks.native import ENGINE_OTHER, GRAD_ACCUMULATION
from wattlens.profiler.stacks.native_lite import (
    LiteReader,
    LiteUnavailable,
    ThreadBusy,
    supported,
)

WORKLOAD = Path(__file__).parent / "fixtures" / "pyspy" / "workload.py"
MAX_READ_S = 120.0  # a bound against a hang, not a speed requirement

pytestmark = pytest.mark.skipif(supported() is not None, reason=str(supported()))

# trains an MLP (Linear layers with bias: AddmmBackward0) for a while, says "forward" and from
# then on runs forwards only, with gradients enabled (the nodes are built, never run)
TRAIN_THEN_FORWARD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    for _ in range(200):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    print("forward", flush=True)
    while True:
        model(x).sum()
""")


def _child(args: list[str], ready: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == ready
    return child


def _state(pid: int, tid: int) -> str:
    """The thread's scheduler state (R, S, t for a tracing stop ...) from /proc."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _tracer(tid: int) -> int:
    line = next(ln for ln in Path(f"/proc/{tid}/status").read_text().splitlines()
                if ln.startswith("TracerPid:"))
    return int(line.split()[1])


@pytest.fixture
def training():
    child = _child([str(WORKLOAD), "train", "300"], "ready")
    yield child
    child.kill()
    child.wait()


def test_reads_in_the_backward_name_its_autograd_ops_and_never_leave_the_thread_stopped(training):
    """A training loop of Linear layers: backward reads name AddmmBackward0 (the Linears' node,
    read inside its matrix-product kernel too: no unwinding needed), each read is measured, and
    after every read the thread runs on, traced by no one."""
    reader = LiteReader(training.pid)
    reader.load()
    assert reader.symbols > 100 and reader.load_s is not None
    ops: Counter[str | None] = Counter()
    deadline = time.monotonic() + MAX_READ_S
    while ops["AddmmBackward0"] < 5 and time.monotonic() < deadline:
        read = reader.read()
        ops[read.op] += 1
        assert read.stop_ns > 0 and read.t_ns > 0
        assert _state(training.pid, training.pid) not in ("t", "T"), "left stopped"
        assert _tracer(training.pid) == 0, "left traced"
        time.sleep(0.01)
    assert ops["AddmmBackward0"] >= 5, ops
    assert ops[None] > 0, ops  # the forward, the data loader and the optimizer are not the backward
    labels = set(ops) - {None}
    # every backward read is labelled as native.autograd_node would: a node, or the engine's own work
    assert all(op.endswith(("Backward0", "Backward1")) or op in ("AccumulateGrad", ENGINE_OTHER, GRAD_ACCUMULATION)
               for op in labels), labels
    assert training.poll() is None  # the target lives on


def test_reads_outside_the_backward_are_none_after_a_backward_has_run():
    """Once the training is over, a forward-only loop (gradients on: the nodes are created, not
    run) reads as outside the backward every time, stale engine frames deeper in the stack
    notwithstanding."""
    child = _child(["-c", TRAIN_THEN_FORWARD], "forward")
    try:
        reader = LiteReader(child.pid)
        reader.load()
        reads = [reader.read().op for _ in range(60)]
        assert reads == [None] * 60, Counter(reads)
        assert _state(child.pid, child.pid) not in ("t", "T")
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_gives_a_clear_reason(training):
    reader = LiteReader(training.pid)
    reader.load()
    training.kill()
    training.wait()
    with pytest.raises(LiteUnavailable, match=f"process {training.pid} has exited"):
        reader.read()
    with pytest.raises(LiteUnavailable, match=f"process {training.pid} has exited"):
        LiteReader(training.pid).load()


def test_a_python_process_without_torch_is_not_read():
    child = _child(["-c", "print('ready', flush=True)\nimport time\nwhile True: time.sleep(1)"], "ready")
    try:
        with pytest.raises(LiteUnavailable, match="no torch library"):
            LiteReader(child.pid).load()
    finally:
        child.kill()
        child.wait()


HOLD = textwrap.dedent("""
    import ctypes, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    ok = libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0  # PTRACE_SEIZE: traced, not stopped
    print("held" if ok else "denied", flush=True)
    sys.stdin.read()
""")


def test_a_thread_another_tracer_holds_is_busy_and_read_once_it_is_let_go(training):
    """py-spy's own blocking reads seize the thread too: a read then is ThreadBusy (retry later,
    the session goes on), and the next read after the other tracer lets go works."""
    reader = LiteReader(training.pid)
    reader.load()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(training.pid)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "held":
        holder.kill()
        pytest.skip("this user may not ptrace a process it did not start (yama ptrace_scope)")
    try:
        with pytest.raises(ThreadBusy, match=f"traced by process {holder.pid}"):
            reader.read()
    finally:
        holder.communicate("")
    reader.read()  # let go: reads again
    assert _state(training.pid, training.pid) not in ("t", "T")


DENIED = textwrap.dedent("""
    import os, sys
    from wattlens.profiler.stacks.native_lite import LiteReader, LiteUnavailable
    reader = LiteReader(int(sys.argv[1]))
    reader.load()  # the symbols as root, then the reads as a user that may not ptrace it
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    try:
        reader.read()
    except LiteUnavailable as exc:
        print(exc)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_a_process_we_may_not_ptrace_gives_the_fix(training):
    """ptrace denied (another user's process, no CAP_SYS_PTRACE): the reason says how to allow it."""
    out = subprocess.run([sys.executable, "-c", DENIED, str(training.pid)], capture_output=True,
                         text=True, timeout=MAX_READ_S)
    assert "ptrace of process" in out.stdout and "not permitted" in out.stdout, (out.stdout, out.stderr)
    assert "sudo" in out.stdout
    assert training.poll() is None and _tracer(training.pid) == 0


def test_only_x86_64_linux_is_supported(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    why = supported()
    assert why is not None and "x86-64" in why
    with pytest.raises(LiteUnavailable, match="x86-64"):
        LiteReader(os.getpid()).load()


def test_ptrace_constants_match_the_kernel_abi():
    """user_regs_struct is 27 words on x86-64 (rsp and rip at their kernel offsets)."""
    from wattlens.profiler.stacks.native_lite import _Regs

    assert ctypes.sizeof(_Regs) == 27 * 8
    assert _Regs.rip.offset == 16 * 8 and _Regs.rsp.offset == 19 * 8


# ---------------------------------------------------------------------- in the stack sampler

def _attach(mode: str, until, **options):
    """A StackSampler (1-s windows) on a fresh ``workload.py mode`` child until ``until(sampler,
    windows)`` holds (at most MAX_READ_S); (windows, sampler), stopped."""
    from wattlens.profiler.stacks.sampler import StackSampler, find_pyspy

    if find_pyspy() is None:
        pytest.skip("py-spy is not installed")
    child = _child([str(WORKLOAD), mode, "300"], "ready")
    windows: list = []
    try:
        sampler = StackSampler(child.pid, rate_hz=50, window_s=1.0, on_window=windows.append,
                               energy_between=lambda a, b: 40.0 * (b - a) / 1e9, **options)
        sampler.start()
        assert sampler.available, sampler.reason
        deadline = time.monotonic() + MAX_READ_S
        while not until(sampler, list(windows)) and time.monotonic() < deadline:
            time.sleep(0.25)
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    return windows, sampler


def _split_windows(windows) -> list:
    return [rows for rows in windows if any(r.path.startswith("backward/") for r in rows)]


def test_an_attached_training_loop_is_split_by_op_by_lite_reads_before_any_py_spy_run():
    """Attach mode, defaults: the backward is split by autograd op from the lite reads, while
    the first native py-spy run (whose start stops the target for 0.3-3 s) waits for the budget,
    minutes away; the note says how the split was read and what the reads cost, measured."""
    windows, sampler = _attach(
        "train", lambda smp, w: len(_split_windows(w)) >= 3 and smp.lite_ops["AddmmBackward0"] > 0)
    split = _split_windows(windows)
    assert len(split) >= 3, (sampler.lite_note, sampler.backward_ops)
    assert not sampler.native_spans and not sampler.native_runs  # no py-spy --native started
    assert sampler.lite_reads > 0 and sampler.lite_stop_ns > 0
    assert sampler.backward_ops == sampler.lite_ops and sampler.backward_ops["AddmmBackward0"] > 0
    for rows in split:  # the children share out the bucket, nothing more
        bucket = next(r for r in rows if r.path == "backward")
        kids = [r for r in rows if r.path.startswith("backward/")]
        assert sum(k.energy_j for k in kids) == pytest.approx(bucket.energy_j)
    for rows in windows:  # windows before the first lite reads waited for them
        if any(r.path == "backward" for r in rows) and not any(r.path.startswith("backward/") for r in rows):
            assert sampler.native_pooled_ns is None or sampler.native_pooled_ns > sampler.native_hold_until_ns, \
                [r.path for r in rows]
    message = sampler.backward_message() or ""
    assert "from" in message and "lite native reads (one thread stopped per read" in message, message
    assert f"lite native reads: {sampler.lite_reads}, stopping the thread" in message, message
    assert "ms in all (measured" in message and "native py-spy runs wait to keep within" in message


def test_without_lite_reads_the_py_spy_runs_split_the_backward_as_before(monkeypatch):
    """Where lite reads cannot work (here: another architecture), the first native py-spy run
    starts at once and splits the backward, and the note says why there are no lite reads."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    windows, sampler = _attach("train", lambda smp, w: bool(smp.native_runs) and bool(_split_windows(w)))
    assert sampler.lite_note is not None and "x86-64" in sampler.lite_note
    assert sampler.lite_reads == 0 and not sampler.lite_ops
    assert sampler.native_runs, "the first py-spy run did not start at once"
    assert _split_windows(windows) and sampler.backward_ops == sampler.pyspy_backward_ops
    message = sampler.backward_message() or ""
    assert "native blocking reads" in message and "lite native reads:" not in message, message


def test_lite_reads_replace_py_spy_reads_in_the_pool_and_are_never_mixed():
    """py-spy's backward reads pool until the first lite read in the backward; from then on the
    pool is the lite reads' alone (py-spy's BLAS reads are unnamed, the lite ones named)."""
    from wattlens.profiler.stacks.sampler import StackSampler

    sampler = StackSampler(1, on_window=lambda rows: None, energy_between=lambda a, b: None)
    sampler.pyspy_backward_ops.update({"matmul grad (BLAS kernel; node not unwound)": 5})
    sampler.backward_ops.update(sampler.pyspy_backward_ops)
    sampler._pool_source = "py-spy"
    sampler._pool_lite(None, 1000)  # outside the backward: counted, not pooled
    assert sampler.backward_ops == sampler.pyspy_backward_ops and sampler.lite_reads == 1
    sampler._pool_lite("MmBackward0", 2000)
    sampler._pool_lite("MmBackward0", 3000)
    assert sampler.backward_ops == Counter({"MmBackward0": 2}) and sampler.lite_stop_ns == 6000
    assert sampler.native_pooled_ns is not None and sampler._lite_ok


class _RaiseAtInterrupt:
    """libc, but the thread's PTRACE_INTERRUPT raises instead (once): an exception (Ctrl-C in a
    read on the main thread) between the seize and the stop."""

    def __init__(self, libc):
        self._libc, self.raised = libc, False

    def __getattr__(self, name):
        return getattr(self._libc, name)

    def ptrace(self, request, *args):
        if request == 0x4207 and not self.raised:  # PTRACE_INTERRUPT
            self.raised = True
            raise KeyboardInterrupt
        return self._libc.ptrace(request, *args)


def test_an_exception_between_the_seize_and_the_stop_leaves_the_thread_neither_traced_nor_stopped(training):
    """The detach needs the thread in a stop: an exception before the stop was waited for must
    still end with the thread let go (a traced thread stops for good at its next signal)."""
    reader = LiteReader(training.pid)
    reader.load()
    reader._libc = _RaiseAtInterrupt(reader._libc)
    with pytest.raises(KeyboardInterrupt):
        reader.read()
    assert reader._libc.raised
    assert _tracer(training.pid) == 0, "left traced"
    time.sleep(0.2)
    assert _state(training.pid, training.pid) not in ("t", "T"), "left stopped"
    reader.read()  # and it reads again


def test_a_busy_python_thread_of_ours_does_not_lengthen_the_stop(training):
    """The stop (seize to detach) must not wait for the GIL: a busy Python thread in wattlens
    holds it for a switch interval each time it is handed over (here 50 ms), which the target's
    thread would spend stopped."""
    import statistics
    import threading

    reader = LiteReader(training.pid)
    reader.load()
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    stops_ms = []
    try:
        for _ in range(15):  # at the sampler's pace: the other thread runs between the reads
            stops_ms.append(reader.read().stop_ns / 1e6)
            time.sleep(0.02)
    finally:
        done.set()
        sys.setswitchinterval(interval)
        thread.join()
    assert statistics.median(stops_ms) < 25.0, stops_ms
    assert _state(training.pid, training.pid) not in ("t", "T")
