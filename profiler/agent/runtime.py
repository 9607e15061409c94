"""The agent object living in the target process: connection, knobs, commands, torch hooks.

Failure policy: the agent never breaks the user's program. Anything that goes wrong is written to
stderr once as ``wattlens agent: ...`` and the agent goes quiet (hooks removed, nothing more sent
except a last goodbye when possible).

Commands from the host go through one dispatch table, :attr:`Agent.COMMANDS`: name -> (handler
method name, runs_at_step_boundary). "Now" commands run on the reader thread (knobs are a dict
assignment); boundary commands are queued and run by the thread that drives the model, at the next
step boundary, which is where issue 5's "apply"/"revert" belong. A command missing from the table
is refused, logged, and answered with a ``refused`` message.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any

from .dist import CollectiveTimer, rank_info
from .importwatch import ImportWatcher, TorchImportWatcher
from .protocol import (
    ENV_CALLS,
    ENV_DEPTH,
    ENV_FLOPS,
    ENV_WINDOW_MS,
    PROTOCOL_VERSION,
    is_knob_value,
)
from .transport import Link

_logged: set[str] = set()


def log_once(key: str, message: str) -> None:
    """Write ``wattlens agent: message`` to stderr, once per ``key``; never raises."""
    if key in _logged:
        return
    _logged.add(key)
    try:
        stream = sys.stderr if sys.stderr is not None else sys.__stderr__
        stream.write(f"wattlens agent: {message}\n")
        stream.flush()
    except Exception:
        pass


def _knob_kind_ok(default: Any, value: Any) -> bool:
    """A host value may replace a knob's value only if it is of the same kind as the default."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return False


def uncaught_exception() -> str | None:
    """The exception that is ending the program, at exit: Python keeps the one that reached the
    top of the main thread in ``sys.last_exc``/``sys.last_value`` before any excepthook runs, so a
    hook the program or its distribution installed (apport, rich) does not hide it; SystemExit
    and ``os._exit`` leave none. In a multiprocessing child, the one that ended its ``run()``
    (:func:`observe_process_children`: multiprocessing catches it, so Python sets neither). One
    line of printable text."""
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None) or _child_crash
    if exc is None:
        return None
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails still ended the program
        text = ""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)  # no escape sequences
    text = " ".join(text.split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def dist_rank() -> int | None:
    """This process's rank as torch.distributed has it (a group set up by the program itself, as
    under torch.multiprocessing.spawn, where no launcher exported RANK); None without a group."""
    d = sys.modules.get("torch.distributed")
    try:
        if d is not None and d.is_available() and d.is_initialized():
            rank = d.get_rank()
            return rank if isinstance(rank, int) and rank >= 0 else None
    except Exception:  # noqa: BLE001 - a group being torn down: no rank to name
        pass
    return None


# ---------------------------------------------------------------------- multiprocessing children
_child_crash: BaseException | None = None  # what ended this multiprocessing child's run()


def observe_process_children(process_module: Any) -> None:
    """Let a multiprocessing child see the exception that ends it, as a main program's is seen.

    ``BaseProcess._bootstrap`` (``multiprocessing.process``) is the entry of every child that
    multiprocessing starts (fork, spawn, forkserver; never called in the parent): it catches what
    ``run()`` raises, prints the traceback and returns exit code 1 (the child then ends by
    ``sys.exit(1)`` or, forked, ``os._exit(1)``), so Python sets no ``sys.last_exc``. Its wrapper
    puts an observer on this process object's ``run`` (an instance attribute, so a subclass's own
    ``run`` is observed too; taken off before the real one runs), which notes the exception and
    re-raises it unchanged: multiprocessing prints it and exits as before. torch's
    ``torch.multiprocessing.spawn`` runs each worker through its ``_wrap``, which catches the
    function's exception itself, writes its traceback for the parent and calls ``sys.exit(1)``:
    that SystemExit (raised by ``_wrap`` itself) carries the exception as its ``__context__``."""
    base = getattr(process_module, "BaseProcess", None)
    original = getattr(base, "_bootstrap", None)
    if original is None or getattr(original, "_wattlens_observed", False):
        return

    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            _observe_run(self)
        except Exception:  # noqa: BLE001 - unobserved, the child runs as it would have
            pass
        return original(self, *args, **kwargs)

    functools.update_wrapper(_bootstrap, original)
    _bootstrap._wattlens_observed = True
    base._bootstrap = _bootstrap


def _observe_run(process: Any) -> None:
    own = process.__dict__.get("run", _MISSING)
    run = process.run

    def run_observed(*args: Any, **kwargs: Any) -> Any:
        global _child_crash
        if own is _MISSING:
            del process.run
        else:
            process.run = own
        try:
            return run(*args, **kwargs)
        except SystemExit as exc:
            _child_crash = _torch_spawn_error(process, exc)
            _drop_frame(exc, sys._getframe())
            raise
        except BaseException as exc:
            _child_crash = exc
            _drop_frame(exc, sys._getframe())
            raise

    process.run = run_observed


def _torch_spawn_error(process: Any, exc: SystemExit) -> BaseException | None:
    """The function's exception when ``exc`` is torch.multiprocessing.spawn's ``_wrap`` ending its
    worker with ``sys.exit(1)`` after catching it; None for any other SystemExit (the function's
    own sys.exit, which ``_wrap`` lets through)."""
    target = getattr(process, "_target", None)
    if (getattr(target, "__name__", None) != "_wrap"
            or getattr(target, "__module__", None) != "torch.multiprocessing.spawn"):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code is not getattr(target, "__code__", None):
        return None  # raised further in, not by _wrap's own sys.exit
    cause = exc.__context__
    return cause if exc.code not in (None, 0) and isinstance(cause, Exception) else None


def _drop_frame(exc: BaseException, frame: Any) -> None:
    """Take the observer's frame off the exception's traceback, so the child prints what it would
    have printed without wattlens (Python 3.11+: a bare ``raise`` adds no entry; 3.10 shows it)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame is frame:
        exc.__traceback__ = tb.tb_next


class Agent:
    COMMANDS: dict[str, tuple[str, bool]] = {
        "set_knob": ("_cmd_set_knob", False),
        "apply": ("_cmd_apply", True),
        "revert": ("_cmd_revert", True),
    }

    def __init__(self, socket_path: str, token: str,
                 link_factory: Callable[..., Any] = Link) -> None:
        self.t_activate_ns = time.monotonic_ns()
        self._lock = threading.Lock()
        self._quiet = False
        self._closed = False
        self._knob_defaults: dict[str, Any] = {}
        self._knobs: dict[str, Any] = {}
        self._pending_knobs: dict[str, Any] = {}
        self._boundary_cmds: collections.deque[dict[str, Any]] = collections.deque()
        self._applied: list[Any] = []  # live.Applied records, oldest first (revert goes LIFO)
        self.tracker: Any = None
        self.collectives: CollectiveTimer | None = None  # torch.distributed calls, timed (dist.py)
        self._watch_requested: Any = None
        self._pid = os.getpid()
        try:
            depth = max(0, int(os.environ.get(ENV_DEPTH, "0")))
        except ValueError:
            depth = 0
        os.environ[ENV_DEPTH] = str(depth + 1)  # what our child processes will report
        hello = {
            "type": "hello", "token": token, "protocol": PROTOCOL_VERSION, "pid": self._pid,
            "ppid": os.getppid(), "depth": depth, "python": sys.version.split()[0],
            "executable": sys.executable or None,
            "argv": [str(a) for a in getattr(sys, "argv", [])],
            "torch": _torch_version(), "t_ns": self.t_activate_ns,
            **rank_info(),  # rank, local_rank, world_size under torchrun (absent otherwise)
        }
        self._link = link_factory(socket_path, hello, on_command=self._on_command,
                                  on_lost=self._on_lost, on_bad_command=self._refuse)
        self._watcher = TorchImportWatcher(self._on_torch)
        # a multiprocessing child's exception never reaches sys.last_exc: observed as it passes
        self._mp_watcher = ImportWatcher(observe_process_children, "multiprocessing.process",
                                         "BaseProcess")
        atexit.register(self.shutdown)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def start(self) -> None:
        self._watcher.install()
        self._mp_watcher.install()

    # ------------------------------------------------------------------ sending / failing
    def send(self, msg: dict[str, Any]) -> None:
        if not self._quiet:
            self._link.send(msg)

    def fail(self, exc: BaseException) -> None:
        """An internal error: report once, switch profiling off, keep the user's program going."""
        if self._quiet:
            return
        log_once("internal", f"internal error ({type(exc).__name__}: {exc}); profiling is off "
                             "for the rest of this run")
        self.send({"type": "event", "t_ns": time.monotonic_ns(), "kind": "agent-error",
                   "message": f"agent internal error: {type(exc).__name__}: {exc}",
                   "data": {}})
        self._quiet = True
        self._stop_tracker()

    def _on_lost(self, why: str) -> None:
        log_once("lost", f"{why}; profiling stopped")
        self._quiet = True
        self._stop_tracker()

    def _stop_tracker(self) -> None:
        timer, self.collectives = self.collectives, None
        if timer is not None:
            try:
                timer.uninstall()
            except Exception:
                pass
        tracker = self.tracker
        if tracker is not None:
            try:
                tracker.uninstall()
            except Exception:
                pass

    # ------------------------------------------------------------------ torch
    def _on_torch(self, torch: Any) -> None:
        if self._quiet:
            return
        try:
            from .tracker import Tracker

            window_ms = float(os.environ.get(ENV_WINDOW_MS, "100"))
            self.tracker = Tracker(
                torch, self.send, self.fail, window_ns=int(window_ms * 1e6),
                count_flops=_flops_policy(os.environ.get(ENV_FLOPS, "auto")),
                on_boundary=self._run_boundary_commands, t_origin_ns=self.t_activate_ns,
                call_path="hooks" if os.environ.get(ENV_CALLS) == "hooks" else "wrap")
            self.tracker.install()
            timer = CollectiveTimer(torch, self.send, self.fail)
            if timer.install():
                self.collectives = timer
            if self._watch_requested is not None:
                model, self._watch_requested = self._watch_requested, None
                self.tracker.watch(model)
        except Exception as exc:
            self.fail(exc)

    def watch(self, model: Any) -> None:
        if self._quiet:
            return
        if self.tracker is None:
            torch = sys.modules.get("torch")
            if torch is not None and hasattr(torch, "nn"):
                self._watcher._fire(torch)
        try:
            if self.tracker is not None:
                self.tracker.watch(model)
            else:
                self._watch_requested = model
        except Exception as exc:
            self.fail(exc)

    def step(self, samples: int | None, tokens: int | None) -> None:
        if self._quiet or self.tracker is None:
            return
        for name, v in (("samples", samples), ("tokens", tokens)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                log_once(f"step-{name}", f"agent.step({name}={v!r}) ignored: give a "
                                         "non-negative int or None")
                return
        try:
            self.tracker.explicit_step(samples, tokens)
        except Exception as exc:
            self.fail(exc)

    # ------------------------------------------------------------------ knobs
    def knob(self, name: str, default: Any) -> Any:
        value = self._knobs.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if not isinstance(name, str) or not is_knob_value(default):
            log_once(f"knob-{name!r}", f"knob {name!r}: the name must be a string and the value "
                                      "an int, float, str, bool or None; it is not tunable")
            return default
        with self._lock:
            self._knob_defaults[name] = default
            self._knobs[name] = default
            pending = self._pending_knobs.pop(name, _MISSING)
        self.send({"type": "knob", "t_ns": time.monotonic_ns(), "name": name, "value": default})
        if pending is not _MISSING:
            self._apply_knob(name, pending)
        return self._knobs[name]

    def _apply_knob(self, name: str, value: Any) -> None:
        default = self._knob_defaults[name]
        if not _knob_kind_ok(default, value):
            self._refuse("set_knob", f"knob {name!r} takes {type(default).__name__} values, "
                                     f"got {type(value).__name__}")
            return
        if isinstance(default, float):
            value = float(value)
        self._knobs[name] = value
        self.send({"type": "knob_set", "t_ns": time.monotonic_ns(), "name": name, "value": value})

    def _cmd_set_knob(self, msg: dict[str, Any]) -> None:
        name, value = msg["name"], msg["value"]
        with self._lock:
            known = name in self._knob_defaults
            if not known:
                self._pending_knobs[name] = value  # applied when the target asks for the knob
        if known:
            self._apply_knob(name, value)

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: dict[str, Any]) -> None:
        entry = self.COMMANDS.get(msg["type"])
        if entry is None:
            self._refuse(msg["type"], "this agent does not know that command")
            return
        handler_name, at_boundary = entry
        if at_boundary:
            self._boundary_cmds.append(msg)
            return
        try:
            getattr(self, handler_name)(msg)
        except Exception as exc:
            self._refuse(msg["type"], f"failed: {type(exc).__name__}: {exc}")

    def _run_boundary_commands(self) -> None:
        """Called by the tracker at each step boundary, on the thread that runs the model."""
        while self._boundary_cmds:
            msg = self._boundary_cmds.popleft()
            handler_name, _ = self.COMMANDS[msg["type"]]
            try:
                getattr(self, handler_name)(msg)
            except Exception as exc:
                self._refuse(msg["type"], f"failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ live apply / revert
    def _main_model(self) -> Any:
        tracker = self.tracker
        main = getattr(tracker, "_main", None) if tracker is not None else None
        return main.ref() if main is not None else None

    def _step_now(self) -> int:
        return self.tracker.steps_done if self.tracker is not None else 0

    def _apply_refused(self, msg: dict[str, Any], reason: str) -> None:
        log_once(f"apply-refused-{msg.get('id')}", f"refused {msg['type']} "
                                                  f"{msg.get('action', '')!s}: {reason}")
        self.send({"type": "apply-refused", "t_ns": time.monotonic_ns(), "id": msg["id"],
                   "action": msg.get("action", "revert"), "step": self._step_now(),
                   "reason": reason})

    def _cmd_apply(self, msg: dict[str, Any]) -> None:
        """At a step boundary: change the main model live (see live.py), or refuse with why."""
        from . import live

        if any(a.id == msg["id"] for a in self._applied):
            self._apply_refused(msg, f"an action with id {msg['id']!r} is already applied")
            return
        model = self._main_model()
        if model is None:
            self._apply_refused(msg, "no main model has run yet in this process")
            return
        torch = self.tracker.torch
        rec = live.Applied(id=msg["id"], action=msg["action"], step=self._step_now())
        try:
            live.apply(torch, model, rec)
        except live.Refused as exc:
            self._apply_refused(msg, str(exc))
            return
        except Exception as exc:
            self._apply_refused(msg, f"failed and was undone: {type(exc).__name__}: {exc}")
            return
        self._applied.append(rec)
        self.send({"type": "applied", "t_ns": time.monotonic_ns(), "id": rec.id,
                   "action": rec.action, "step": rec.step})

    def _cmd_revert(self, msg: dict[str, Any]) -> None:
        from . import live

        ids = [a.id for a in self._applied]
        if msg["id"] not in ids:
            self._apply_refused(msg, f"nothing applied with id {msg['id']!r}")
            return
        later = ids[ids.index(msg["id"]) + 1:]
        if later:
            self._apply_refused(msg, f"revert the later action(s) first: {', '.join(later)}")
            return
        rec = self._applied.pop()
        live.revert(self.tracker.torch, rec)
        self.send({"type": "reverted", "t_ns": time.monotonic_ns(), "id": rec.id,
                   "action": rec.action, "step": self._step_now()})

    def _refuse(self, command: str, reason: str) -> None:
        log_once(f"refused-{command}-{reason}", f"refused command {command!r}: {reason}")
        self.send({"type": "refused", "t_ns": time.monotonic_ns(), "command": command,
                   "reason": reason})

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """At exit: close the last step and window, say goodbye, close the socket."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        uncaught = uncaught_exception()
        dropped = False
        try:
            if self.tracker is not None and not self._quiet:
                dropped = self.tracker.finish(drop_open=uncaught is not None)
            if self.collectives is not None and not self._quiet:
                self.collectives.flush()
        except Exception as exc:
            self.fail(exc)
        try:
            steps = self.tracker.steps_done if self.tracker is not None else 0
            bye = {"type": "bye", "t_ns": time.monotonic_ns(), "steps": steps}
            if uncaught is not None:
                bye["error"], bye["dropped_step"] = uncaught, dropped
                rank = dist_rank()  # a spawned worker's hello had none (no RANK from a launcher)
                if rank is not None:
                    bye["rank"] = rank
            self._link.send(bye)
            self._link.close()
        except Exception:
            pass

    def _after_fork(self) -> None:
        # A forked child (DataLoader worker ...) must never write on the parent's connection.
        self._quiet = True
        self._closed = True
        try:
            if self.tracker is not None:
                self.tracker._on = False
            self._link.abandon()
        except Exception:
            pass


_MISSING = object()


def _flops_policy(value: str) -> str:
    value = value.strip().lower()
    if value in ("0", "off", "no", "false"):
        return "off"
    if value == "force":
        return "force"
    return "auto"


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")
    version = getattr(torch, "__version__", None)
    return str(version) if version is not None else None
