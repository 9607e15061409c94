"""Sample a running Python process's stacks with py-spy, in rolling windows, without its help.

Each window is one ``py-spy record --pid PID --format raw --idle --threads --full-filenames``
process. py-spy prints "Sampling process ..." once it has attached; we take that moment as the
window start, send SIGINT at the window end (py-spy then stops sampling and writes its file), and
turn the file into :class:`~wattlens.profiler.records.LayerCost` rows with
:mod:`wattlens.profiler.stacks.parse`. SIGINT rather than ``--duration`` because ``--duration``
takes whole seconds only and ends at an unknown moment; here both ends of a window are our own
``time.monotonic_ns()`` readings, the same clock the power sampler uses, so
``energy_between(start_ns, end_ns)`` asks for exactly the sampled span. The few tens of
milliseconds between two windows (py-spy starting) are not sampled and belong to no window.

py-spy runs with ``--nonblocking``: it reads the target's memory while the target runs, so the
target is never paused. py-spy's default (blocking) mode stops every thread of the target for each
sample; on a loaded machine py-spy then has to wait for a CPU while the target stands still, and
benchmarks/bench_stacks.py measured the target 12 % slower at 20 Hz and 24-30 % slower at 50 Hz
that way (2 shared cores), against about 1 % for --nonblocking at 50-100 Hz. The price of not
pausing is that a stack read while it changes is sometimes unreadable: py-spy drops that sample
and counts an error, and a few reads succeed with a stack stitched from two moments (torn). Both
happen more inside short, fast-changing calls, so dropping them over-represents long calls (the
LM head read +2.5 to +4 pp high on a Llama-style model). So each window also runs a second,
**blocking** py-spy at ``calibration_hz`` (default 5 Hz: at the ~0.75 ms a blocking read paused
the target in the benchmark, ~0.4 % of its time): its stacks are exact. They teach
:class:`~wattlens.profiler.stacks.tree.TreeGuard` the real module tree (torn paths are dropped and
counted), and tell :class:`~wattlens.profiler.stacks.lost.LossAccount` where the lost reads (failed
+ torn) fell; the window's lost reads are added back there. :attr:`StackSampler.loss` keeps the
session's counts; :meth:`StackSampler.loss_message` says them in one line. Pass
``nonblocking=False`` for exact stacks where the pause is affordable (no calibration then), or
``calibration_hz=0`` to switch the calibration off (the lost reads are then spread in proportion,
which keeps the bias, and the message says so).

Once a window shows a backward, the backward is split by autograd op (:mod:`.native`): by lite
native reads of the main thread (:mod:`.native_lite`, :meth:`StackSampler._lite_loop`: one
thread stopped ~0.3 ms per read, their stops measured and said in the backward note, not shaded
in the plots: too short to see) where they work, with the native py-spy runs (for the forward
map and the optimizer split) kept within the budget from the first one on; else by the native
py-spy runs alone, the first one at once, as before lite reads.

Nothing here raises on a target we cannot read: :attr:`StackSampler.available` turns False and
:attr:`StackSampler.reason` says why in one line, so the caller keeps measuring power.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from wattlens.profiler.errors import BadInputError
from wattlens.profiler.process import pid_cpu_s
from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks import backward_map
from wattlens.profiler.stacks.lost import CALIBRATION_RATE_HZ, LossAccount
from wattlens.profiler.stacks.native import (
    LITE_RATE_HZ,
    LITE_READY_TIMEOUT_S,
    LITE_REFRESH_HZ,
    NATIVE_BUDGET,
    NATIVE_FIRST_RUN_CPU_S,
    NATIVE_OWN_CORE_PER_CPU_S,
    NATIVE_POOL_BACKWARD_READS,
    NATIVE_RATE_HZ,
    NATIVE_REFRESH_EVERY_S,
    NATIVE_REFRESH_RUN_S,
    backward_ops,
    lite_wait_s,
    native_budget_wait,
    native_cost_phrase,
    native_next_cost_s,
    native_read_cost_s,
    native_run,
    native_schedule,
    op_shares,
    optimizer_ops,
    split_optimizer,
)
from wattlens.profiler.stacks.native_lite import (
    LiteReader,
    LiteUnavailable,
    ThreadBusy,
    lite_enabled,
)
from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_OPTIMIZER,
    SourceIndex,
    SourceResolver,
    aggregate,
    collapse,
    window_reads,
)
from wattlens.profiler.stacks.tree import TreeGuard

log = logging.getLogger(__name__)

# 50 Hz, non-blocking, 5 s windows: 250 samples a window (a 2 % share is ~5 samples; shares over
# a minute rest on 3000), py-spy uses ~4 % of one core, and the target is not paused. Measured in
# benchmarks/bench_stacks.py; the numbers are in benchmarks/results/stacks.md.
DEFAULT_RATE_HZ = 50.0
DEFAULT_WINDOW_S = 5.0
DEFAULT_NONBLOCKING = True
_HIGH_ERROR_SHARE = 0.2

INSTALL_HINT = "install py-spy: pip install py-spy"
_STARTED_MARK = "Sampling process"
_MIN_RUN_S = 0.05  # py-spy installs its SIGINT handler just after printing the mark
_START_TIMEOUT_S = 20.0  # py-spy retries attaching for a few seconds before giving up
_STOP_TIMEOUT_S = 15.0
_NATIVE_HOLD_SLACK_S = 10.0  # beyond the first native run's length: its start, stop and parse
_NATIVE_MARK_S = 2.0  # into a native run, its start is done (~0.65 s of py-spy CPU): per-read cost after
_MAX_FAILED_STARTS = 3
_SUMMARY_RE = re.compile(r"Samples: (\d+) Errors: (\d+)")


def native_command(exe: str, pid: int, rate_hz: int, duration_s: int, output: str) -> list[str]:
    """The ``py-spy record --native`` command of one native run (raw stacks into ``output``)."""
    return [exe, "record", "--pid", str(pid), "--rate", str(rate_hz), "--duration", str(duration_s),
            "--format", "raw", "--native", "--threads", "--full-filenames", "--output", output]


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_starter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the py-spy child when the thread that started
    it ends: if wattlens is killed (SIGKILL, OOM, a crash), no py-spy stays attached to the target
    (a calibration or native one would go on pausing it, and its output file growing, until the
    target ends). The signal follows the starting *thread*, not the process, so each py-spy is
    started by the thread that waits for it and reaps it (``_one_window``, ``_native_loop``).
    None where prctl is unavailable (then a killed wattlens can leave py-spy behind, as before).
    prctl is looked up here, before the fork: the child runs only the call."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, sig = os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # wattlens died between the fork and the prctl
            os._exit(1)

    return preexec


def sweep_stale_tmp(tmp_root: str | None = None) -> int:
    """Remove the py-spy window folders of wattlens processes that no longer run (a SIGKILLed
    one cannot remove its own); they are named ``wattlens-stacks-<pid>-…``. Returns how many."""
    root = Path(tmp_root or tempfile.gettempdir())
    removed = 0
    with contextlib.suppress(OSError):
        for path in root.glob("wattlens-stacks-*-*"):
            owner = path.name.split("-")[2]
            if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
                shutil.rmtree(path, ignore_errors=True)
                removed += not path.exists()
    return removed


def _signal_unreaped(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal ``proc`` if it is not reaped yet (its pid is still ours). Call with the sampler's
    lock held (the native thread reaps under it: ``StackSampler._reap``), or from that thread."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def find_pyspy(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The py-spy executable: ``explicit`` if given (and only it), else on PATH, else next to the
    running interpreter (a venv's ``bin/`` is often not on PATH), else in the user scripts folder
    (``pip install --user`` puts py-spy there, beside the `wattlens` script, e.g. ~/.local/bin)."""
    if explicit is not None:
        path = Path(explicit)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("py-spy")
    if found:
        return found
    import sysconfig

    name = "py-spy.exe" if os.name == "nt" else "py-spy"
    folders = [Path(sys.executable).parent]
    with contextlib.suppress(KeyError):
        folders.append(Path(sysconfig.get_path("scripts", f"{os.name}_user")))
    for folder in folders:
        beside = folder / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _exited_reason(pid: int) -> str:
    return f"process {pid} has exited: there are no layer figures after its end"


def explain_failure(output: str, pid: int) -> str:
    """Map py-spy's error text to one line that says why there are no layer figures and what to
    do. Kept apart from the process handling so the wording is testable on real messages."""
    return _classify_failure(output, pid)[0]


def _classify_failure(output: str, pid: int) -> tuple[str, bool]:
    """(reason, permanent): permanent failures are not worth another attempt."""
    text = output.strip()
    if "Permission Denied" in text or "Operation not permitted" in text or "SYS_PTRACE" in text:
        return (
            f"py-spy may not read process {pid} (ptrace denied): run wattlens with sudo, or allow "
            "it with `echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope`, or in a container "
            "start it with --cap-add SYS_PTRACE"
        ), True
    m = re.search(r"Unsupported version of Python: ?([^\s]*)", text)
    if m:
        version = m.group(1) or "this version"
        return (
            f"py-spy cannot read Python {version} in process {pid}: "
            "upgrade it (pip install -U py-spy), or attach with --no-stacks"
        ), True
    if (
        "Failed to find python version" in text
        or "Failed to find a python interpreter" in text
        or "Both python and libpython are invalid" in text
        or "failed to find _PyRuntime" in text
    ):
        return (
            f"process {pid} does not look like a Python program (py-spy found no interpreter "
            "in it): attach to the Python process that runs the model"
        ), True
    if (
        "Failed to get process executable name" in text
        or "No such process" in text
        or not _pid_alive(pid)
    ):
        return _exited_reason(pid), True
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
    first = first.removeprefix("Error: ")
    return (
        f"py-spy failed on process {pid} ({first}): try `py-spy dump --pid {pid}` to see why",
        False,
    )


def check_pyspy(
    pid: int, *, pyspy_path: str | os.PathLike[str] | None = None, timeout_s: float = 15.0
) -> str | None:
    """Quick probe for ``wattlens doctor``: None when py-spy can read process ``pid``'s Python
    stacks, else the one-line reason. Runs ``py-spy dump`` once (pauses the target for a moment).
    """
    exe = find_pyspy(pyspy_path)
    if exe is None:
        return f"py-spy not found: {INSTALL_HINT}"
    if not _pid_alive(pid):
        return _exited_reason(pid)
    try:
        proc = subprocess.run(
            [exe, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"py-spy did not answer within {timeout_s:.0f} s for process {pid}: try again"
    except OSError as exc:
        return f"py-spy could not be started ({exc.strerror}): {INSTALL_HINT}"
    if proc.returncode == 0:
        return None
    return explain_failure(proc.stderr + "\n" + proc.stdout, pid)


class StackSampler:
    """Per-module-class CPU-side time (and energy) of a running PyTorch process, window by window.

    ``rate_hz`` is a whole number of samples per second (py-spy's --rate); ``window_s`` the length
    of each window; ``gpu`` marks a GPU target (synchronising calls become the gpu-wait bucket);
    ``nonblocking`` chooses py-spy's mode (see the module docstring); ``pyspy_path`` overrides
    the search for the py-spy binary; ``source_resolver`` maps file names in py-spy's output to
    readable paths (default: the names themselves). ``samples`` / ``errors`` count py-spy's reads.
    ``rank`` (the process's torch.distributed rank, when it is one) is written into every row.

    ``on_window(rows)`` and ``energy_between(start_ns, end_ns)`` are called from the sampler's own
    thread, once per window, after the window has ended; ``energy_between`` returns the target's
    energy over that span in joules, or None when it is not known (then the rows' energies are
    None). A window with no samples produces no call.
    """

    def __init__(
        self,
        pid: int,
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        window_s: float = DEFAULT_WINDOW_S,
        on_window: Callable[[list[LayerCost]], None],
        energy_between: Callable[[int, int], float | None],
        gpu: bool = False,
        pyspy_path: str | os.PathLike[str] | None = None,
        source_resolver: SourceResolver | None = None,
        nonblocking: bool = DEFAULT_NONBLOCKING,
        calibration_hz: int = CALIBRATION_RATE_HZ,
        native_hz: int = NATIVE_RATE_HZ,
        native_pool_reads: int = NATIVE_POOL_BACKWARD_READS,
        native_budget: float = NATIVE_BUDGET,
        native_lite: bool | None = None,
        rank: int | None = None,
    ):
        if not 1 <= rate_hz <= 1000 or rate_hz != int(rate_hz):
            raise BadInputError(
                f"stack sampling rate {rate_hz!r} Hz is not usable",
                hint="give a whole number of samples per second between 1 and 1000",
            )
        if not window_s >= 0.2:
            raise BadInputError(
                f"stack window {window_s!r} s is too short", hint="use 0.2 s or more (default 5)"
            )
        self.pid = int(pid)
        self.rank = rank
        self.rate_hz = float(rate_hz)
        self.window_s = float(window_s)
        self.gpu = gpu
        self.nonblocking = nonblocking
        # exact (blocking) reads beside the non-blocking ones; none needed when all are blocking
        self.calibration_hz = int(calibration_hz) if nonblocking and calibration_hz > 0 else 0
        self.loss = LossAccount()
        self.tree = TreeGuard()
        # native (C++) reads that split the backward by autograd op; started on the first backward
        self.native_hz = int(native_hz) if native_hz > 0 else 0
        # pooled backward reads after which native runs become rare refreshes (0: never)
        self.native_pool_reads = max(0, int(native_pool_reads))
        self.native_paused_note: str | None = None  # said once, when that happened
        # the share of the attach's time native runs after the first may hold the target (0: no cap)
        self.native_budget = max(0.0, float(native_budget))
        # (CPU seconds of the native py-spy, reads asked of it, CPU per read after its start or
        # None) per finished native run: the CPU is spent with the target stopped, so it is what
        # the native reads' cost is counted from
        self.native_runs: list[tuple[float, int, float | None]] = []
        # [start, end (None while it runs) in monotonic ns, py-spy CPU seconds or None] of every
        # native run started: where the target was paused, for the plots
        self.native_spans: list[list] = []
        self._t_start_ns: int | None = None
        self._t_stop_ns: int | None = None  # when stopping was asked
        # the pool that splits the backward: the lite reads' once they have any, else py-spy's
        # (never both: py-spy leaves BLAS reads unnamed, the lite reads name them)
        self.backward_ops: Counter[str] = Counter()
        self.pyspy_backward_ops: Counter[str] = Counter()  # the native py-spy runs' backward reads
        self._pool_source: str | None = None  # "lite" or "py-spy", once backward_ops has reads
        # lite native reads (native_lite): one thread stopped per read, started with the py-spy ones
        # None: on unless WATTLENS_NATIVE_LITE=0 (native_lite.lite_enabled)
        self.native_lite = lite_enabled() if native_lite is None else bool(native_lite)
        self.lite_ops: Counter[str] = Counter()  # their backward reads per op
        self.lite_reads = 0  # reads made (in the backward or not)
        self.lite_stop_ns = 0  # the thread's stops of all those reads, measured (seize to detach)
        self.lite_busy = 0  # reads put off: another tracer (py-spy's blocking reads) held the thread
        self.lite_note: str | None = None  # why there are none (unavailable), said once
        self._lite_thread: threading.Thread | None = None
        self._lite_ready = threading.Event()  # the lite reader read once, or will not
        self._lite_ok = False
        self.optimizer_ops: Counter[tuple[str, str]] = Counter()  # (part, tensor op) -> reads
        # the same reads in the forward: (class path, tensor op) -> reads, to map ops to classes
        self.forward_ops: Counter[tuple[str, str]] = Counter()
        # forward self samples per class path, pooled (backward_map weighs the classes by them)
        self.forward_time: Counter[str] = Counter()
        self._native_thread: threading.Thread | None = None
        self._native_proc: subprocess.Popen[str] | None = None
        # windows whose backward waits for the first native reads (sampler thread only), and
        # until when they may wait (the first native run's length, plus its start and stop)
        self._held: list[list[LayerCost]] = []
        # each delivered window's rows that the native reads split (its backward bucket, its
        # optimizer parts), before the split: split again by the whole session's pool at the end
        self._split_parents: list[list[LayerCost]] = []
        # each delivered window's class rows (non-blocking reads only): folded at the end where
        # the whole session's evidence shows a path torn (final_tree)
        self._class_rows: list[list[LayerCost]] = []
        self.final_tree_note: str | None = None
        self.native_hold_until_ns = 0
        self.native_pooled_ns: int | None = None  # when the first native reads were pooled
        self._on_window = on_window
        self._energy_between = energy_between
        self._pyspy_path = pyspy_path
        self._index = SourceIndex(source_resolver) if source_resolver else SourceIndex()
        self._exe: str | None = None
        self._reason: str | None = None
        self._last_failure: str | None = None
        self._stop = threading.Event()
        self._first = threading.Event()  # first window attached, or the sampler gave up
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.windows = 0  # windows handed to on_window
        self.samples = 0  # stack samples py-spy reported, all windows
        self.errors = 0  # samples py-spy failed to read, all windows

    # ----------------------------------------------------------------- public state

    @property
    def available(self) -> bool:
        """False once we know there will be no (more) layer figures; :attr:`reason` says why."""
        return self._reason is None

    @property
    def reason(self) -> str | None:
        """One line: why there are no layer figures, and what to do. None while available."""
        return self._reason

    @property
    def exited(self) -> bool:
        """True when sampling stopped because the process exited."""
        return self._reason == _exited_reason(self.pid)

    def _give_up(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
            log.info("stack sampling of %d stops: %s", self.pid, reason)
        self._first.set()

    # ----------------------------------------------------------------- lifecycle

    def start(self, *, wait_s: float = 10.0) -> None:
        """Start sampling in a background thread; returns once py-spy has attached (or failed,
        then :attr:`available` is False), or after ``wait_s`` seconds."""
        if self._thread is not None:
            raise RuntimeError("StackSampler.start() called twice")
        self._exe = find_pyspy(self._pyspy_path)
        if self._exe is None:
            self._give_up(f"py-spy not found: {INSTALL_HINT}")
            return
        if not _pid_alive(self.pid):
            self._give_up(_exited_reason(self.pid))
            return
        sweep_stale_tmp()
        self._tmpdir = tempfile.TemporaryDirectory(prefix=f"wattlens-stacks-{os.getpid()}-")
        self._t_start_ns = time.monotonic_ns()
        self._thread = threading.Thread(
            target=self._run, name=f"wattlens-stacks-{self.pid}", daemon=True
        )
        self._thread.start()
        self._first.wait(wait_s)

    def wait_attached(self, timeout_s: float) -> bool:
        """Wait until py-spy has attached for the first window (or the sampler gave up)."""
        return self._first.wait(timeout_s)

    def request_stop(self) -> None:
        """Ask the window in progress to end now, without waiting (several samplers stop together)."""
        if self._stop.is_set():
            return
        with self._lock:  # with the native thread's start and reap: one of us signals py-spy
            self._t_stop_ns = time.monotonic_ns()
            self._stop.set()
            native = self._native_proc
            if native is not None:
                _signal_unreaped(native, signal.SIGINT)  # it writes what it has read so far

    def stop(self) -> None:
        """Stop sampling; the window in progress is cut short, processed and handed over."""
        self.request_stop()
        if self._lite_thread is not None:  # a read in progress ends within milliseconds
            self._lite_thread.join(_STOP_TIMEOUT_S)
        if self._native_thread is not None:
            self._native_thread.join(_STOP_TIMEOUT_S + 5.0)
            with self._lock:  # a native py-spy hung past its stop: do not leave it attached
                if self._native_proc is not None:
                    _signal_unreaped(self._native_proc, signal.SIGKILL)
        thread = self._thread
        if thread is not None:
            thread.join(_START_TIMEOUT_S + _STOP_TIMEOUT_S)
            if thread.is_alive():  # py-spy hung: do not leave it attached
                with self._lock:
                    proc = self._proc
                if proc is not None and proc.poll() is None:
                    proc.kill()
                thread.join(5.0)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> StackSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- the sampling thread

    def _run(self) -> None:
        failed_starts = 0
        try:
            while not self._stop.is_set() and self.available:
                outcome = self._one_window()
                if outcome == "failed":
                    failed_starts += 1
                    if failed_starts >= _MAX_FAILED_STARTS and self.available:
                        self._give_up(self._last_failure or "py-spy kept failing to attach")
                    self._stop.wait(0.5)
                else:
                    failed_starts = 0
        except Exception as exc:  # never let a sampling fault take the session down
            log.exception("stack sampler thread failed")
            self._give_up(f"stack sampling failed ({exc}): attach again, or use --no-stacks")
        finally:
            with self._lock:  # the target exited, or stopping was asked: the attach's end
                self._t_stop_ns = self._t_stop_ns or time.monotonic_ns()
            self._first.set()
            if self._held:  # the native py-spy was asked to stop: its reads split them
                native = self._native_thread
                if native is not None:
                    native.join(_STOP_TIMEOUT_S + 5.0)
                self._flush_held()

    def final_split(self) -> tuple[list[LayerCost], list[LayerCost]]:
        """(every window's rows that the native reads split, those rows split again by the pool
        of the whole session): after :meth:`stop`, so that what is stored reads as the session's
        note does. A window was split by the reads pooled when it closed — the first windows by
        a few dozen (a class read 11 % of the job there and 4 % over the session) — and the
        whole pool is the better estimate for every window. Nothing when no native read came, or
        while the sampler's thread still runs (it could deliver a window after this)."""
        pools = self._pools()
        thread = self._thread
        if (not pools.backward and not pools.optimizer) or (thread is not None and thread.is_alive()):
            return [], []  # no pool; or py-spy hung past stop() and a window may still come
        windows = list(self._split_parents)
        return ([r for window in windows for r in window],
                [r for window in windows for r in _split(window, pools)])

    def final_tree(self) -> tuple[list[LayerCost], list[LayerCost]]:
        """(the stored class rows to replace, their replacements): the rows of the class paths
        that the whole session's evidence shows torn (:meth:`TreeGuard.final_torn`), folded into
        their nearest ancestor that is not, after :meth:`stop` and before :meth:`final_split`
        (those paths leave the backward's pool too). A window let a torn read through while its
        exact reads were few; by the end there are hundreds. Nothing while the sampler's thread
        still runs (a window could come after this)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return [], []
        torn = self.tree.final_torn()
        if not torn:
            return [], []
        keys = {"/".join(p) for p in torn}
        with self._lock:
            for key in keys & set(self.forward_time):
                del self.forward_time[key]
        old: list[LayerCost] = []
        new: list[LayerCost] = []
        for rows in self._class_rows:
            o, n = fold_torn(rows, torn)
            old += o
            new += n
        folded = {r.path for r in old} & keys
        if folded:
            samples = sum(self.tree.kept_reads[r] for r in self.tree.kept_reads if r.att.path in torn)
            self.final_tree_note = (
                f"{len(folded)} class path(s) that the whole session's exact reads show torn "
                f"({samples} sample(s), let through while those reads were few) were folded into "
                f"the nearest module above them: {', '.join(sorted(folded)[:5])}"
                + (" …" if len(folded) > 5 else ""))
        return old, new

    def _pools(self) -> _Pools:
        """A copy of the pooled native reads and forward times (the native thread adds to them)."""
        with self._lock:
            return _Pools(Counter(self.backward_ops), Counter(self.optimizer_ops),
                          Counter(self.forward_ops), Counter(self.forward_time))

    def loss_message(self) -> str:
        """One line: how many stack reads were lost (failed, torn) and how that was handled."""
        return self.loss.message()

    def backward_message(self) -> str | None:
        """One line: the backward's split by autograd op, with its method and uncertainty."""
        shares = op_shares(self.backward_ops)
        if not shares:
            return None
        top = ", ".join(f"{op} {p:.0%} ± {se:.0%}" for op, (p, se) in list(shares.items())[:5])
        pools = self._pools()
        by_class = backward_map.class_message(pools.backward, pools.forward, pools.forward_time)
        if self._pool_source == "lite":
            how = (f"lite native reads (one thread stopped per read for a copy of its stack, "
                   f"the op named from torch's symbols in wattlens; {LITE_RATE_HZ:g} Hz, then "
                   f"{LITE_REFRESH_HZ:g} Hz once {self.native_pool_reads} are pooled, slower where "
                   f"they would pass {self.native_budget:.2%} of the attach"
                   + (f"; {self.native_paused_note.replace('native reads', 'native py-spy runs')}"
                      if self.native_paused_note else ""))
        else:
            how = (f"native blocking reads ({native_run(0, self.native_hz)[1]} Hz for the first "
                   f"{native_run(0)[0]} s, then {self.native_hz} Hz"
                   + (f"; {self.native_paused_note}" if self.native_paused_note else ""))
        return (
            f"backward split by autograd op from {sum(pools.backward.values())} {how}"
            + (f"; {self.native_cost_message()}" if self.native_runs or self.lite_reads else "")
            + f"; estimate, binomial standard error): {top}"
        ) + (f"; {by_class}" if by_class else "")

    def _native_spent_s(self) -> float:
        """What the finished native py-spy runs cost the target (own-core seconds, estimated)."""
        return NATIVE_OWN_CORE_PER_CPU_S * sum(c for c, _, _ in self.native_runs)

    def _reads_spent_s(self) -> float:
        """What all native reads cost the target so far: the py-spy runs' (estimated) and the
        lite reads' stops (measured). The budget counts this."""
        return self._native_spent_s() + self.lite_stop_ns / 1e9

    def native_cost_message(self) -> str:
        """What the native reads cost the target: the py-spy runs' CPU time, measured, times the
        measured own-core time per CPU second; the lite reads' stops, measured."""
        spent_s = self._native_spent_s()
        elapsed_s = ((self._t_stop_ns or time.monotonic_ns()) - (self._t_start_ns or 0)) / 1e9
        parts = []
        if self.native_runs:
            parts.append(f"{native_cost_phrase(len(self.native_runs), spent_s)} "
                         f"({spent_s / max(elapsed_s, 1e-9):.2%} of the attach; estimated: "
                         f"{NATIVE_OWN_CORE_PER_CPU_S} × their py-spy's CPU time, spent with the "
                         "target stopped)")
        if self.lite_reads:
            lite_s = self.lite_stop_ns / 1e9
            parts.append(f"lite native reads: {self.lite_reads}, stopping the thread "
                         f"{lite_s * 1e3:.0f} ms in all (measured; {lite_s / max(elapsed_s, 1e-9):.2%} "
                         "of the attach; not shaded in the plots: too short to see)")
        if not parts:
            parts.append(native_cost_phrase(0, 0.0))
        which = "native py-spy runs" if self._lite_ok else "runs after the first"
        cap = f"; {which} wait to keep within {self.native_budget:.2%}" if self.native_budget else ""
        return "; ".join(parts) + cap

    def native_run_spans(self) -> list[dict[str, Any]]:
        """Each native run as stored with the session (the plots shade them): its start and end
        (monotonic ns, the samples' clock; a run still going ends now) and what it cost the
        target (estimated as in :meth:`native_cost_message`; None while it runs or where its CPU
        time could not be read)."""
        now_ns = time.monotonic_ns()
        return [{"t_start_ns": t0, "t_end_ns": now_ns if t1 is None else t1,
                 "target_cost_s": None if cpu_s is None else NATIVE_OWN_CORE_PER_CPU_S * cpu_s}
                for t0, t1, cpu_s in list(self.native_spans)]

    def backward_classes(self) -> dict[str, list[float]]:
        """{class path: [share of the backward, standard error]} (:mod:`.backward_map`)."""
        pools = self._pools()
        return {p.name: [p.share, p.se] for p in backward_map.backward_by_class(
            pools.backward, pools.forward, pools.forward_time) if p.kind == "class"}

    # ----------------------------------------------------------------- native reads

    def _maybe_start_native(self) -> None:
        if self.native_hz and self._native_thread is None and not self._stop.is_set():
            first_s = native_run(0, self.native_hz)[0]
            self.native_hold_until_ns = time.monotonic_ns() + int((first_s + _NATIVE_HOLD_SLACK_S) * 1e9)
            if self.native_lite:  # before the py-spy runs: they wait to see whether it works
                self._lite_thread = threading.Thread(
                    target=self._lite_loop, name=f"wattlens-lite-{self.pid}", daemon=True)
                self._lite_thread.start()
            self._native_thread = threading.Thread(
                target=self._native_loop, name=f"wattlens-native-{self.pid}", daemon=True
            )
            self._native_thread.start()

    def _lite_loop(self) -> None:
        """Lite native reads of the target's main thread (:mod:`.native_lite`) until stopping is
        asked: the symbols first (here, not with the target stopped), then one read every
        1/:data:`LITE_RATE_HZ` s (1/:data:`LITE_REFRESH_HZ` s once the pool is full), slower where
        the native reads would pass their budget (:func:`.native.lite_wait_s`). Their
        backward reads are the pool that splits the backward. Unavailable (not x86-64, ptrace
        denied, no symbols, a GPU's engine threads): said once in :attr:`lite_note`, and the
        py-spy runs do as they did without it."""
        try:
            reader = LiteReader(self.pid)
            reader.load()
            log.info("lite native reads of %d: %d autograd symbols loaded in %.2f s", self.pid,
                     reader.symbols, reader.load_s or 0.0)
            while not self._stop.is_set():
                try:
                    read = reader.read()
                except ThreadBusy:
                    with self._lock:
                        self.lite_busy += 1
                else:
                    self._pool_lite(read.op, read.stop_ns)
                with self._lock:
                    full = self.native_pool_reads and sum(self.lite_ops.values()) >= self.native_pool_reads
                    mean_stop_s = self.lite_stop_ns / 1e9 / max(1, self.lite_reads)
                elapsed_s = (time.monotonic_ns() - (self._t_start_ns or time.monotonic_ns())) / 1e9
                # slower rather than past the budget when a read holds the thread long (a busy machine)
                self._stop.wait(lite_wait_s(LITE_REFRESH_HZ if full else LITE_RATE_HZ, self._reads_spent_s(),
                                            elapsed_s, mean_stop_s, self.native_budget))
        except LiteUnavailable as exc:
            if not self.lite_reads:
                self.lite_note = f"no lite native reads: {exc}"
                log.info("%s; native py-spy runs split the backward", self.lite_note)
            else:  # the target ended (or its thread): the sampler says so from py-spy's side
                log.info("lite native reads of %d stop: %s", self.pid, exc)
        except Exception as exc:  # never let it take the session down: py-spy's runs go on
            log.exception("lite native reads failed")
            if not self.lite_reads:
                self.lite_note = f"no lite native reads: they failed ({exc})"
        finally:
            self._lite_ready.set()

    def _pool_lite(self, op: str | None, stop_ns: int) -> None:
        """One lite read counted (its stop, measured) and, in the backward, pooled; the first
        pooled one replaces py-spy's reads in the pool (the two are not mixed)."""
        with self._lock:
            self.lite_reads += 1
            self.lite_stop_ns += stop_ns
            if op is not None:
                self.lite_ops[op] += 1
                if self._pool_source != "lite":
                    self.backward_ops.clear()
                    self._pool_source = "lite"
                self.backward_ops[op] += 1
                if self.native_pooled_ns is None:
                    self.native_pooled_ns = time.monotonic_ns()
        if not self._lite_ok:
            self._lite_ok = True
            self._lite_ready.set()

    def _wait_lite_ready(self) -> bool:
        """Wait (at most LITE_READY_TIMEOUT_S) for the lite reader to read once or give up:
        does it work? False at once when it was not started."""
        if self._lite_thread is None:
            return False
        deadline = time.monotonic() + LITE_READY_TIMEOUT_S
        while not self._lite_ready.wait(0.1):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
        return self._lite_ok

    def _native_loop(self) -> None:
        assert self._exe is not None and self._tmpdir is not None
        out_path = os.path.join(self._tmpdir.name, "native.txt")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        runs = 0
        # with lite reads splitting the backward, the first py-spy run waits for the budget too
        budget_all = self._wait_lite_ready()
        if not budget_all:  # as without lite reads: the first run now, windows held for it
            first_s = native_run(0, self.native_hz)[0]
            self.native_hold_until_ns = max(self.native_hold_until_ns, time.monotonic_ns() + int(
                (first_s + _NATIVE_HOLD_SLACK_S) * 1e9))
        while not self._stop.is_set() and self.available:
            with self._lock:
                pooled = sum(self.pyspy_backward_ops.values())
            wait_s, duration_s, rate_hz = native_schedule(runs, pooled, self.native_hz,
                                                          self.native_pool_reads)
            if wait_s and not self.native_paused_note:
                self.native_paused_note = (
                    f"native reads paused after {pooled} backward reads (the op split's standard "
                    f"error is at most {50 / math.sqrt(pooled):.1f} pp): one "
                    f"{NATIVE_REFRESH_RUN_S}-s run every {NATIVE_REFRESH_EVERY_S // 60} min "
                    "keeps it current")
                log.info("%s", self.native_paused_note)
            if wait_s and self._stop.wait(wait_s):
                return
            # the first run waits for nothing, unless lite reads split the backward meanwhile
            if (runs or budget_all) and self._t_start_ns is not None:
                if len(self.native_runs) < runs:  # a run's cost could not be read: the budget
                    log.info("native py-spy's CPU time could not be read: no more native runs "
                             "(the budget could not be kept)")
                    return
                next_cpu_s = (native_next_cost_s(self.native_runs, duration_s * rate_hz)
                              if self.native_runs else NATIVE_FIRST_RUN_CPU_S)
                next_s = NATIVE_OWN_CORE_PER_CPU_S * next_cpu_s
                while True:  # the lite reads spend while it waits: until the run fits
                    elapsed_s = (time.monotonic_ns() - self._t_start_ns) / 1e9
                    budget_wait_s = native_budget_wait(self._reads_spent_s(), elapsed_s, next_s,
                                                       duration_s, self.native_budget)
                    if budget_wait_s <= 0:
                        break
                    log.debug("native run %d waits %.0f s: its reads would exceed %.2f %% of the "
                              "attach", runs, budget_wait_s, 100 * self.native_budget)
                    if self._stop.wait(min(budget_wait_s, 30.0)):
                        return
            runs += 1
            cmd = native_command(self._exe, self.pid, rate_hz, duration_s, out_path)
            span = [time.monotonic_ns(), None, None]
            err_path = out_path + ".stderr"
            try:
                with open(err_path, "w+", encoding="utf-8", errors="replace") as err_file:
                    proc = subprocess.Popen(
                        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=err_file, text=True, start_new_session=True,
                        preexec_fn=_die_with_starter(),
                    )  # fmt: skip
            except OSError as exc:
                log.warning("native py-spy could not be started: %s", exc.strerror)
                return
            self.native_spans.append(span)  # started: shaded from its start on, live
            with self._lock:
                self._native_proc = proc
                stopping = self._stop.is_set()  # request_stop() ran before: it saw no process
            if stopping:
                _signal_unreaped(proc, signal.SIGINT)
            cpu_s, mark_cpu_s, after_mark_s = self._reap(
                proc, duration_s + _START_TIMEOUT_S + _STOP_TIMEOUT_S,
                mark_after_s=_NATIVE_MARK_S if duration_s >= 2 * _NATIVE_MARK_S else None)
            with self._lock:
                self._native_proc = None
            span[1:] = [time.monotonic_ns(), cpu_s]
            if cpu_s is not None:
                reads_after = min(duration_s * rate_hz, after_mark_s * rate_hz)
                self.native_runs.append((cpu_s, duration_s * rate_hz,
                                         native_read_cost_s(cpu_s, mark_cpu_s, reads_after)))
            try:
                with open(err_path, encoding="utf-8", errors="replace") as fh:
                    err = fh.read()
                os.unlink(err_path)
            except OSError:
                err = ""
            try:
                with open(out_path, encoding="utf-8", errors="replace") as fh:
                    raw = fh.read()
                os.unlink(out_path)
            except FileNotFoundError:  # e.g. --native unsupported here: say so once, stop trying
                log.info("no native stacks from py-spy (%s): the backward stays one bucket",
                         err.strip().splitlines()[-1] if err.strip() else "no output")
                return
            ops = backward_ops(raw, self._index)
            opt_ops = optimizer_ops(raw, self._index)
            fwd_ops = backward_map.forward_ops(raw, self._index)
            with self._lock:
                self.pyspy_backward_ops.update(ops)
                if self._pool_source != "lite" and ops:  # lite reads, once any, are the pool
                    self.backward_ops.update(ops)
                    self._pool_source = "py-spy"
                    if self.native_pooled_ns is None:
                        self.native_pooled_ns = time.monotonic_ns()
                self.optimizer_ops.update(opt_ops)
                self.forward_ops.update(fwd_ops)

    def _reap(self, proc: subprocess.Popen[str], timeout_s: float, mark_after_s: float | None = None
              ) -> tuple[float | None, float | None, float]:
        """Wait for a native py-spy to end (killed after ``timeout_s``): its CPU seconds, from
        ``wait4`` (None if someone else reaped it); its CPU seconds ``mark_after_s`` into the run
        (its start's symbol loading done, on a machine not starved), or None; and the seconds it
        ran after that mark. Reaped under the lock, so :meth:`request_stop` never signals a
        process id that is no longer ours."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        mark_cpu_s: float | None = None
        t_mark = 0.0
        while True:
            if mark_after_s is not None and mark_cpu_s is None and time.monotonic() - t0 >= mark_after_s:
                t_mark = time.monotonic()
                mark_cpu_s = pid_cpu_s(proc.pid)
                if mark_cpu_s is None:
                    mark_after_s = None
            if self._stop.is_set():  # asked to stop: it has its stop timeout, as stop() waits
                deadline = min(deadline, time.monotonic() + _STOP_TIMEOUT_S)
            with self._lock:
                try:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    if proc.returncode is None:
                        proc.returncode = -1
                    return None, None, 0.0
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    after_s = time.monotonic() - t_mark if mark_cpu_s is not None else 0.0
                    return usage.ru_utime + usage.ru_stime, mark_cpu_s, after_s
                if time.monotonic() > deadline:  # hung
                    _signal_unreaped(proc, signal.SIGKILL)
            time.sleep(0.05)

    def _command(self, output: str, *, calibration: bool = False) -> list[str]:
        assert self._exe is not None
        rate = self.calibration_hz if calibration else int(self.rate_hz)
        return [
            self._exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--idle",
            "--threads",
            "--full-filenames",
            "--output",
            output,
        ] + (["--nonblocking"] if self.nonblocking and not calibration else [])

    def _one_window(self) -> str:
        """Record one window. Returns "ok", "failed" (py-spy never attached) or "ended"."""
        assert self._tmpdir is not None
        out_path = os.path.join(self._tmpdir.name, f"window-{self.windows}.txt")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_path)
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}  # keep stderr small
        try:
            proc = subprocess.Popen(
                self._command(out_path),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a Ctrl-C in the user's terminal is ours to forward
                preexec_fn=_die_with_starter(),
            )
        except OSError as exc:
            self._give_up(f"py-spy could not be started ({exc.strerror}): {INSTALL_HINT}")
            return "failed"
        with self._lock:
            self._proc = proc
        cal: subprocess.Popen[str] | None = None
        cal_path = out_path + ".calibration"
        if self.calibration_hz:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cal_path)
            try:
                cal = subprocess.Popen(
                    self._command(cal_path, calibration=True),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                    preexec_fn=_die_with_starter(),
                )
            except OSError as exc:  # the window goes on without calibration
                log.warning("calibration py-spy could not be started: %s", exc.strerror)
        try:
            return self._drive(proc, out_path, cal, cal_path)
        finally:
            for p in (proc, cal):
                if p is None:
                    continue
                if p.poll() is None:
                    p.kill()
                    p.wait()
                for stream in (p.stdout, p.stderr):
                    if stream is not None:
                        stream.close()
            with self._lock:
                self._proc = None

    def _drive(
        self,
        proc: subprocess.Popen[str],
        out_path: str,
        cal: subprocess.Popen[str] | None = None,
        cal_path: str = "",
    ) -> str:
        assert proc.stdout is not None and proc.stderr is not None
        head: list[str] = []
        started = False
        for line in proc.stdout:  # blocks until py-spy attached (or failed and closed stdout)
            head.append(line)
            if _STARTED_MARK in line:
                started = True
                break
        if not started:
            try:
                _, err = proc.communicate(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            reason, permanent = _classify_failure(err + "\n" + "".join(head), self.pid)
            if permanent:
                self._give_up(reason)
            else:  # maybe passing (py-spy caught the target mid-change): try again, a few times
                self._last_failure = reason
                log.warning("py-spy could not attach to process %d: %s", self.pid, reason)
            return "failed"

        t_start_ns = time.monotonic_ns()
        self._first.set()
        cal_started = cal is not None and _wait_mark(cal)
        deadline_ns = t_start_ns + int(self.window_s * 1e9)
        target_ended = False
        while True:
            if proc.poll() is not None:  # py-spy stops by itself only when the target exits
                target_ended = True
                break
            remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
            if remaining_s <= 0:
                break
            if self._stop.wait(min(remaining_s, 0.05)):
                break
        t_end_ns = time.monotonic_ns()
        if not target_ended:
            ran_s = (t_end_ns - t_start_ns) / 1e9
            if ran_s < _MIN_RUN_S:
                time.sleep(_MIN_RUN_S - ran_s)
            proc.send_signal(signal.SIGINT)
        if cal is not None and cal.poll() is None:
            cal.send_signal(signal.SIGINT)
        tail, err = _finish(proc)
        cal_raw = ""
        if cal is not None:
            _finish(cal)
            if cal_started:
                with contextlib.suppress(FileNotFoundError):
                    with open(cal_path, encoding="utf-8", errors="replace") as fh:
                        cal_raw = fh.read()
        if target_ended or not _pid_alive(self.pid):
            self._give_up(_exited_reason(self.pid))
        m = _SUMMARY_RE.search(tail)
        n_err = 0
        if m:
            n_ok, n_err = int(m.group(1)), int(m.group(2))
            self.samples += n_ok
            self.errors += n_err
            if n_err > _HIGH_ERROR_SHARE * (n_ok + n_err):
                log.warning(
                    "py-spy could not read %d of %d stacks of process %d in this window "
                    "(non-blocking reads of fast-changing stacks); the lost reads are %s",
                    n_err,
                    n_ok + n_err,
                    self.pid,
                    self.loss.handling if self.loss.calibration_reads else "spread in proportion",
                )
        try:
            with open(out_path, encoding="utf-8", errors="replace") as fh:
                raw = fh.read()
        except FileNotFoundError:
            log.warning("py-spy wrote no output for window ending %d: %s", t_end_ns, err.strip())
            return "ended" if target_ended else "ok"
        self._emit(raw, t_start_ns, t_end_ns, failed=n_err, calibration_raw=cal_raw)
        return "ended" if target_ended else "ok"

    def _emit(
        self,
        raw: str,
        t_start_ns: int,
        t_end_ns: int,
        *,
        failed: int = 0,
        calibration_raw: str = "",
    ) -> None:
        counts = self._counts(raw, failed, calibration_raw)
        if sum(counts.values()) <= 0:
            return  # nothing read (a window cut right after it began): no rows, no energy asked
        try:
            energy_j = self._energy_between(t_start_ns, t_end_ns)
        except Exception:
            log.exception(
                "energy_between(%d, %d) failed; window energy unknown", t_start_ns, t_end_ns
            )
            energy_j = None
        has_backward = any(att.bucket == BUCKET_BACKWARD for att in counts)
        if has_backward:
            self._maybe_start_native()  # a training job: break its backward down
        with self._lock:
            self.forward_time.update(backward_map.forward_time(counts))
            # a path let through by an earlier window and judged torn since stops feeding the
            # backward's split (the tree is only written on this thread)
            for key in [k for k in self.forward_time if k != backward_map.OUTSIDE_MODULES
                        and not self.tree.plausible(tuple(k.split("/")))]:
                del self.forward_time[key]
        rows = aggregate(
            counts,
            window_start_ns=t_start_ns,
            window_end_ns=t_end_ns,
            rate_hz=self.rate_hz,
            window_energy_j=energy_j,
        )
        if self.loss.torn:
            log.debug("torn stacks dropped so far: %s", dict(self.tree.torn_paths))
        if not rows:
            return
        if self._waits_for_native(has_backward):
            self._held.append(rows)
            return
        self._flush_held()
        self._deliver(rows)

    def _waits_for_native(self, has_backward: bool) -> bool:
        """A window with a backward (and every window after one held) waits while the first
        native run is reading: held a few seconds, its backward is split like the later ones'
        instead of stored as one bucket (11 % of a 60-s training attach was, measured)."""
        readers = [t for t in (self._native_thread, self._lite_thread) if t is not None]
        if not any(t.is_alive() for t in readers) or time.monotonic_ns() > self.native_hold_until_ns:
            return False
        with self._lock:
            if self.backward_ops:
                return False
        return bool(self._held) or has_backward

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for rows in held:
            self._deliver(rows)

    def _deliver(self, rows: list[LayerCost]) -> None:
        """Split the window's backward and optimizer by the pooled native reads, hand it over."""
        pools = self._pools()
        if self.rank is not None:
            rows = [dataclasses.replace(r, rank=self.rank) for r in rows]
        parents = [r for r in rows if _splittable(r)]
        if parents:
            self._split_parents.append(parents)
        if self.nonblocking:
            self._class_rows.append([r for r in rows if r.granularity == "class"])
        rows = _split(rows, pools)
        self.windows += 1
        try:
            self._on_window(rows)
        except Exception:  # the consumer's fault: keep sampling, say so once per window
            log.exception("on_window failed for the window ending %d", rows[0].window_end_ns)

    def _counts(self, raw: str, failed: int, calibration_raw: str) -> dict:
        """One window's samples per attribution: torn paths dropped, lost reads added back."""
        reads = window_reads(raw, gpu=self.gpu, target_pid=self.pid, index=self._index)
        if not self.nonblocking:  # the target was paused for every read: all stacks are exact
            self.tree.learn_exact(reads)
            counts = collapse(reads)
            return self.loss.correct(counts, failed=failed, torn=0, calibration=counts)
        cal = window_reads(calibration_raw, gpu=self.gpu, target_pid=self.pid, index=self._index)
        self.tree.learn_exact(cal)
        kept, torn = self.tree.filter(reads)
        return self.loss.correct(kept, failed=failed, torn=torn, calibration=collapse(cal))


class _Pools(NamedTuple):
    backward: Counter[str]  # native backward reads per autograd op
    optimizer: Counter[tuple[str, str]]  # native optimizer reads per (part, tensor op)
    forward: Counter[tuple[str, str]]  # native forward reads per (class path, op)
    forward_time: Counter[str]  # sampled forward self time per class path


def _split(rows: list[LayerCost], pools: _Pools) -> list[LayerCost]:
    """A window's rows with its backward and optimizer parts split by the pooled native reads."""
    return split_optimizer(backward_map.split_backward(rows, pools.backward, pools.forward, pools.forward_time),
                           pools.optimizer)


def fold_torn(rows: list[LayerCost], torn: set[tuple[str, ...]]) -> tuple[list[LayerCost], list[LayerCost]]:
    """(a window's class rows to replace, their replacements): each row of a torn path goes, its
    self time and energy to its nearest ancestor that is not torn (whose inclusive figures
    already hold them); a path torn from its root gives them to the window's largest other root,
    inclusive figures too. The window's totals do not change. Nothing when no row is torn, or
    when every root is (nowhere to fold to)."""
    by_path = {tuple(r.path.split("/")): r for r in rows}
    gone = [p for p in by_path if p in torn]
    roots = [p for p in by_path if len(p) == 1 and p not in torn]
    if not gone or not roots:
        return [], []
    largest_root = max(roots, key=lambda p: (by_path[p].time_s, p))
    grow: dict[tuple[str, ...], list[LayerCost]] = {}
    for p in gone:
        to = p[:-1]
        while to and to in torn:
            to = to[:-1]
        grow.setdefault(to or largest_root, []).append(by_path[p])
    new = []
    for to, moved in grow.items():
        r = by_path[to]
        self_s = sum(m.self_time_s or 0.0 for m in moved)
        self_j = [m.self_energy_j for m in moved if m.self_energy_j is not None]
        r2 = dataclasses.replace(
            r, self_time_s=(r.self_time_s or 0.0) + self_s,
            self_energy_j=r.self_energy_j + sum(self_j) if r.self_energy_j is not None else None)
        extra = [m for m in moved if "/" not in m.path]  # another root: its inclusive figures too
        if extra:
            r2 = dataclasses.replace(
                r2, time_s=r2.time_s + sum(m.time_s for m in extra),
                share=r2.share + sum(m.share for m in extra),
                n_samples=(r2.n_samples or 0) + sum(m.n_samples or 0 for m in extra),
                energy_j=(r2.energy_j + sum(m.energy_j or 0.0 for m in extra)
                          if r2.energy_j is not None else None))
        new.append(r2)
    return [by_path[p] for p in gone] + [by_path[to] for to in grow], new


def _splittable(row: LayerCost) -> bool:
    """A row the native reads split: the backward bucket, an optimizer part."""
    return row.granularity == "bucket" and (
        row.path == BUCKET_BACKWARD or row.path.startswith(BUCKET_OPTIMIZER + "/"))


def _wait_mark(proc: subprocess.Popen[str]) -> bool:
    """Read py-spy's stdout until it says it is sampling; False if it ended first."""
    assert proc.stdout is not None
    return any(_STARTED_MARK in line for line in proc.stdout)


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for py-spy to write its file and exit (kill it if it hangs); (stdout, stderr)."""
    try:
        return proc.communicate(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
