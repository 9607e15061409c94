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
and counts an error. On the GPT-2 benchmark that was under 1 % of samples, and the shares stayed
within 3 points of an in-process hook timer; a window where more than
``_HIGH_ERROR_SHARE`` of the reads failed is logged, since long-running calls are then
over-represented (their stacks are the stable ones). Pass ``nonblocking=False`` for exact stacks
where the pause is affordable.

Nothing here raises on a target we cannot read: :attr:`StackSampler.available` turns False and
:attr:`StackSampler.reason` says why in one line, so the caller keeps measuring power.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wattlens.profiler.errors import BadInputError
from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks.parse import SourceIndex, SourceResolver, window_costs

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
_MAX_FAILED_STARTS = 3
_SUMMARY_RE = re.compile(r"Samples: (\d+) Errors: (\d+)")


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
        self.rate_hz = float(rate_hz)
        self.window_s = float(window_s)
        self.gpu = gpu
        self.nonblocking = nonblocking
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
        self._tmpdir = tempfile.TemporaryDirectory(prefix="wattlens-stacks-")
        self._thread = threading.Thread(
            target=self._run, name=f"wattlens-stacks-{self.pid}", daemon=True
        )
        self._thread.start()
        self._first.wait(wait_s)

    def stop(self) -> None:
        """Stop sampling; the window in progress is cut short, processed and handed over."""
        self._stop.set()
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
            self._first.set()

    def _command(self, output: str) -> list[str]:
        assert self._exe is not None
        return [
            self._exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(int(self.rate_hz)),
            "--format",
            "raw",
            "--idle",
            "--threads",
            "--full-filenames",
            "--output",
            output,
        ] + (["--nonblocking"] if self.nonblocking else [])

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
            )
        except OSError as exc:
            self._give_up(f"py-spy could not be started ({exc.strerror}): {INSTALL_HINT}")
            return "failed"
        with self._lock:
            self._proc = proc
        try:
            return self._drive(proc, out_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            with self._lock:
                self._proc = None

    def _drive(self, proc: subprocess.Popen[str], out_path: str) -> str:
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
        try:
            tail, err = proc.communicate(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            tail, err = proc.communicate()
        if target_ended or not _pid_alive(self.pid):
            self._give_up(_exited_reason(self.pid))
        m = _SUMMARY_RE.search(tail)
        if m:
            n_ok, n_err = int(m.group(1)), int(m.group(2))
            self.samples += n_ok
            self.errors += n_err
            if n_err > _HIGH_ERROR_SHARE * (n_ok + n_err):
                log.warning(
                    "py-spy could not read %d of %d stacks of process %d in this window "
                    "(non-blocking reads of fast-changing stacks); shares lean towards "
                    "long-running calls",
                    n_err,
                    n_ok + n_err,
                    self.pid,
                )
        try:
            with open(out_path, encoding="utf-8", errors="replace") as fh:
                raw = fh.read()
        except FileNotFoundError:
            log.warning("py-spy wrote no output for window ending %d: %s", t_end_ns, err.strip())
            return "ended" if target_ended else "ok"
        self._emit(raw, t_start_ns, t_end_ns)
        return "ended" if target_ended else "ok"

    def _emit(self, raw: str, t_start_ns: int, t_end_ns: int) -> None:
        try:
            energy_j = self._energy_between(t_start_ns, t_end_ns)
        except Exception:
            log.exception(
                "energy_between(%d, %d) failed; window energy unknown", t_start_ns, t_end_ns
            )
            energy_j = None
        rows = window_costs(
            raw,
            window_start_ns=t_start_ns,
            window_end_ns=t_end_ns,
            rate_hz=self.rate_hz,
            window_energy_j=energy_j,
            gpu=self.gpu,
            target_pid=self.pid,
            index=self._index,
        )
        if rows:
            self.windows += 1
            try:
                self._on_window(rows)
            except Exception:  # the consumer's fault: keep sampling, say so once per window
                log.exception("on_window failed for the window ending %d", t_end_ns)
