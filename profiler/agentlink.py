"""Host side of the agent link: the socket the in-process agent reports to, and its commands.

:class:`AgentServer` makes a private runtime directory (mode 0700) holding a Unix socket and a
random token, and gives the child the environment that activates the agent (:meth:`env`). One
listener thread accepts connections, checks the token on the first line (and that the peer runs as
our user), validates every later line against :mod:`wattlens.profiler.agent.protocol`, and turns
messages into :mod:`wattlens.profiler.records` objects handed to the callbacks. Anything that
does not check out is dropped and logged, never executed; a bad client never stops the server.

Energy: ``energy_between(t0_ns, t1_ns)`` gives the target's attributed energy between two
``time.monotonic_ns()`` instants (or None when the sampler has not caught up / cannot tell).
A rank of a torch.distributed job gets its own energy, ``rank_energy_between(rank, t0_ns, t1_ns)``
(its process's CPU time and GPU device share: :mod:`wattlens.profiler.rank_energy`); where that
has no figure for the rank (it raises LookupError), the fallback is an equal split, the target's
energy ÷ the ranks on the host.
Steps get their own window's energy; layer rows share their window's energy by time, with a
bucket row "optimizer" for the timed ``optimizer.step()`` calls (where the agent timed them) and
a bucket row "outside modules" for the rest, so the rows' ``self_energy_j`` add up to the
window's energy (conservation). Records whose energy is not known yet wait in a small FIFO and are retried
for ``energy_wait_s`` before they go out with ``energy_j=None``.

All callbacks run on the listener thread, in arrival order. ``on_hello`` is called when an agent
connects and again whenever it reports a model; each call carries that process's full picture.
Several agents may connect (a target that starts Python subprocesses: spawn workers, torchrun);
each says hello with its ``pid`` and ``depth`` (0 = the first Python process of the run, 1 = its
children ...). Their steps are passed on as they come, so with several model-running processes
the step numbers interleave.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import secrets
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattlens.profiler import figures
from wattlens.profiler.agent.protocol import (
    AGENT_MESSAGES,
    ENV_DEPTH,
    ENV_SOCKET,
    ENV_TOKEN,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    decode,
    encode,
    is_knob_value,
    validate,
)
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.stacks.parse import BUCKET_OPTIMIZER

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "agent" / "bootstrap"
OUTSIDE_MODULES = "outside modules"
_MAX_LOGGED_DROPS = 20  # per client; later drops are counted, not logged one by one

JOB_FIELDS = ("rank", "local_rank", "world_size")
EnergyBetween = Callable[[int, int], "float | None"]
RankEnergyBetween = Callable[[int, int, int], "float | None"]  # (rank, t0_ns, t1_ns); LookupError: none


@dataclass
class _Client:
    sock: socket.socket
    connected_ns: int
    buf: bytearray = field(default_factory=bytearray)
    hello: dict[str, Any] | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    said_bye: bool = False
    error: str | None = None  # the uncaught exception that ended the target (its goodbye said)
    dropped_step: bool = False  # and the step it cut short was left out
    error_rank: int | None = None  # torch.distributed's rank then (a spawned worker's hello has none)
    steps: int = 0  # steps its goodbye counted
    drops: int = 0
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int | None:
        return self.hello.get("pid") if self.hello else None

    @property
    def job(self) -> dict[str, int]:
        """rank / local_rank / world_size from the hello of a torch.distributed worker, else {}."""
        h = self.hello or {}
        return {k: h[k] for k in JOB_FIELDS if h.get(k) is not None}

    @property
    def energy_split(self) -> int:
        """Ranks on this host sharing the target's energy (1 outside a job): the fallback when a
        rank has no energy of its own, an equal share, so summing ranks counts the job's energy
        once (an estimate)."""
        n = (self.hello or {}).get("local_world_size")
        return n if isinstance(n, int) and n > 1 and "rank" in self.job else 1


@dataclass
class _Pending:
    """Records waiting for the sampler to cover their time span."""

    kind: str  # "steps" | "layers"
    msg: dict[str, Any]
    deadline_s: float
    job: dict[str, int] = field(default_factory=dict)  # the sender's rank fields
    split: int = 1  # its energy is the target's ÷ split (ranks on this host)


class AgentServer:
    """Listen for the in-process agent of one ``wattlens run`` target.

    Construct, pass :meth:`env` to the child (see :func:`wattlens.profiler.launch.launch`),
    call :meth:`stop` when the run ends (also a context manager).
    """

    def __init__(
        self,
        *,
        on_step: Callable[[StepRecord], None] | None = None,
        on_layer_costs: Callable[[list[LayerCost]], None] | None = None,
        on_event: Callable[[EventRecord], None] | None = None,
        on_hello: Callable[[dict[str, Any]], None] | None = None,
        energy_between: EnergyBetween | None = None,
        rank_energy_between: RankEnergyBetween | None = None,
        energy_wait_s: float = 5.0,
        hello_timeout_s: float = 10.0,
        runtime_parent: str | os.PathLike[str] | None = None,
    ) -> None:
        self._on_step = on_step
        self._on_layer_costs = on_layer_costs
        self._on_event = on_event
        self._on_hello = on_hello
        self._energy_between = energy_between
        self._rank_energy_between = rank_energy_between
        self._energy_wait_s = energy_wait_s
        self._hello_timeout_s = hello_timeout_s
        self.token = secrets.token_hex(32)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="wattlens-", dir=_runtime_parent(runtime_parent)))
        os.chmod(self.runtime_dir, 0o700)
        self.socket_path = str(self.runtime_dir / "agent.sock")
        if len(self.socket_path.encode()) >= 100:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            raise BadInputError(f"runtime directory path too long for a Unix socket: {self.runtime_dir}",
                                hint="set TMPDIR to a shorter directory")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self._listener.listen(16)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._clients: dict[int, _Client] = {}  # fileno -> client
        self._lock = threading.Lock()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._outbox: collections.deque[tuple[_Client, bytes, str]] = collections.deque()
        self._knob_requests: dict[str, Any] = {}
        self._knobs: dict[str, Any] = {}
        self._model_commands: list[dict[str, Any]] = []  # apply/revert waiting for a main model
        self._energy_error_logged = False
        self._hello_event = threading.Event()
        self._stopping = False
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="wattlens-agentlink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: ``base`` (default ``os.environ``) plus the agent variables.

        The bootstrap folder goes first on PYTHONPATH, before anything already there.
        """
        out = dict(os.environ if base is None else base)
        out[ENV_SOCKET] = self.socket_path
        out[ENV_TOKEN] = self.token
        out.pop(ENV_DEPTH, None)  # a nested `wattlens run` starts counting again
        existing = out.get("PYTHONPATH")
        out["PYTHONPATH"] = str(BOOTSTRAP_DIR) + (os.pathsep + existing if existing else "")
        return out

    def set_knob(self, name: str, value: Any) -> None:
        """Ask the target to change a knob (``agent.knob(name, default)`` returns it from then on).

        Sent to every connected agent, and to agents that connect later.
        """
        if not isinstance(name, str) or not name:
            raise BadInputError(f"bad knob name {name!r}", hint="give the knob's name as a string")
        if not is_knob_value(value):
            raise BadInputError(f"bad value for knob {name}: {value!r}",
                                hint="use an int, float, string, bool or null")
        msg = {"type": "set_knob", "name": name, "value": value}
        with self._lock:
            self._knob_requests[name] = value
            clients = [c for c in self._clients.values() if c.hello is not None]
        for client in clients:
            self._send(client, msg)

    def apply(self, action: str, id: str | None = None) -> str:
        """Ask the target to apply ``action`` live to its main model at its next step boundary.

        Returns the action's id (``id`` or a new one); the agent answers with an ``applied`` or
        ``apply-refused`` message, passed on as an "action-applied" / "action-refused" event.
        Sent to every agent that has reported a main model, or to the first one that does.
        """
        from wattlens.profiler.agent.live import LIVE_ACTIONS, Refused, parse_action

        if not isinstance(action, str):
            raise BadInputError(f"bad action {action!r}",
                                hint=f"live actions are: {', '.join(LIVE_ACTIONS)}")
        try:
            parse_action(action)
        except Refused as exc:
            raise BadInputError(f"{exc}".split("; live actions")[0] + " cannot be applied live",
                                hint=f"live actions are: {', '.join(LIVE_ACTIONS)}") from None
        action_id = id if id is not None else secrets.token_hex(4)
        if not isinstance(action_id, str) or not action_id:
            raise BadInputError(f"bad action id {id!r}", hint="give the id as a non-empty string")
        self._send_to_model_clients({"type": "apply", "action": action, "id": action_id})
        return action_id

    def revert(self, id: str) -> None:
        """Ask the target to undo the live action ``id`` at its next step boundary."""
        if not isinstance(id, str) or not id:
            raise BadInputError(f"bad action id {id!r}", hint="give the id AgentServer.apply returned")
        self._send_to_model_clients({"type": "revert", "id": id})

    def _send_to_model_clients(self, msg: dict[str, Any]) -> None:
        with self._lock:
            clients = [c for c in self._clients.values()
                       if c.hello is not None and any(m["main"] for m in c.models.values())]
            if not clients:
                self._model_commands.append(msg)
        for client in clients:
            self._send(client, msg)

    @property
    def knobs(self) -> dict[str, Any]:
        """Knob values as the target last reported them (registered or applied)."""
        with self._lock:
            return dict(self._knobs)

    def wait_for_hello(self, timeout_s: float) -> bool:
        """True once an agent has connected with the right token."""
        return self._hello_event.wait(timeout_s)

    def stop(self) -> None:
        """Stop listening, flush records still waiting for energy, remove the runtime dir."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5.0)
        if not self._thread.is_alive():  # the listener is ours alone now
            try:  # an agent that connected while the listener was stopping: its records count too
                self._accept()
            except OSError:
                pass
        for client in list(self._clients.values()):
            self._read_rest(client)
        for client in list(self._clients.values()):
            self._drop_client(client, reason=None)
        self._flush_pending(final=True)
        for s in (self._listener, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        self._selector.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self) -> AgentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ listener thread
    def _serve(self) -> None:
        while not self._stopping:
            try:
                events = self._selector.select(timeout=0.1)
            except OSError:
                break
            for key, _ in events:
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read(key.data)
                except Exception:
                    log.exception("agent link: unexpected error (the server keeps running)")
            try:
                self._drain_outbox()
                self._expire_silent_clients()
                self._flush_pending(final=False)
            except Exception:
                log.exception("agent link: unexpected error (the server keeps running)")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            uid = _peer_uid(sock)
            if uid is not None and uid != os.getuid():
                self._refuse_connection(sock, f"peer runs as uid {uid}, not ours")
                continue
            sock.setblocking(False)
            client = _Client(sock=sock, connected_ns=time.monotonic_ns())
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> bool:
        """Read and handle one chunk; False when nothing more is to be read now."""
        try:
            chunk = client.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_client(client, reason="eof")
            return False
        client.buf += chunk
        while True:
            nl = client.buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(client.buf[:nl])
            del client.buf[: nl + 1]
            if not self._handle_line(client, line):
                return False  # client dropped
        if len(client.buf) > MAX_LINE_BYTES:
            self._drop_client(client, reason="line too long")
            return False
        return True

    def _read_rest(self, client: _Client) -> None:
        """At stop: handle whatever the agent wrote before we stopped listening."""
        while self._read(client):
            pass

    def _expire_silent_clients(self) -> None:
        limit_ns = int(self._hello_timeout_s * 1e9)
        now = time.monotonic_ns()
        for client in list(self._clients.values()):
            if client.hello is None and now - client.connected_ns > limit_ns:
                self._refuse_connection(client.sock, "no hello in time", client)

    # ------------------------------------------------------------------ messages
    def _handle_line(self, client: _Client, line: bytes) -> bool:
        if not line.strip():
            return True
        try:
            msg = decode(line)
        except (ValueError, UnicodeDecodeError) as exc:
            if client.hello is None:
                self._refuse_connection(client.sock, f"first line is not a hello ({exc})", client)
                return False
            self._dropped(client, f"malformed line ({exc})")
            return True
        if client.hello is None:
            return self._handle_hello(client, msg)
        reason = validate(msg, AGENT_MESSAGES)
        if reason is None and msg["type"] == "hello":
            reason = "a second hello"
        if reason is not None:
            self._dropped(client, reason)
            return True
        handler = getattr(self, "_msg_" + msg["type"].replace("-", "_"))
        handler(client, msg)
        return True

    def _handle_hello(self, client: _Client, msg: dict[str, Any]) -> bool:
        token = msg.get("token")
        if msg.get("type") != "hello" or not isinstance(token, str):
            self._refuse_connection(client.sock, "first message is not a hello", client)
            return False
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            self._refuse_connection(client.sock, "wrong token", client)
            return False
        reason = validate(msg, AGENT_MESSAGES)
        if reason is not None:
            self._refuse_connection(client.sock, f"bad hello ({reason})", client)
            return False
        if msg["protocol"] != PROTOCOL_VERSION:
            self._refuse_connection(client.sock, f"agent speaks protocol {msg['protocol']}, "
                                                 f"we speak {PROTOCOL_VERSION}", client)
            return False
        client.hello = {k: v for k, v in msg.items() if k not in ("token", "type")}
        with self._lock:
            knobs = dict(self._knob_requests)
        for name, value in knobs.items():
            self._send(client, {"type": "set_knob", "name": name, "value": value})
        self._hello_event.set()
        self._call(self._on_hello, self._hello_info(client))
        return True

    def _msg_model(self, client: _Client, msg: dict[str, Any]) -> None:
        known = client.models.get(msg["prefix"])
        if known is not None and known["class"] == msg["class"]:
            by_path = {m["path"]: m for m in known["modules"]}
            by_path.update({m["path"]: m for m in msg["modules"]})
            msg = dict(msg, modules=list(by_path.values()))
        client.models[msg["prefix"]] = {k: v for k, v in msg.items() if k != "type"}
        if msg["main"]:
            with self._lock:
                waiting, self._model_commands = self._model_commands, []
            for command in waiting:
                self._send(client, command)
        if msg.get("torch") and client.hello is not None:
            client.hello["torch"] = msg["torch"]
        self._call(self._on_hello, self._hello_info(client))

    def _msg_steps(self, client: _Client, msg: dict[str, Any]) -> None:
        for s in msg["steps"]:
            if s["t_end_ns"] < s["t_start_ns"]:
                self._dropped(client, "a step that ends before it starts")
                return
        self._queue("steps", msg, client)

    def _msg_layers(self, client: _Client, msg: dict[str, Any]) -> None:
        if msg["t_end_ns"] <= msg["t_start_ns"]:
            self._dropped(client, "an empty or reversed layer window")
            return
        self._queue("layers", msg, client)

    def _msg_event(self, client: _Client, msg: dict[str, Any]) -> None:
        data = dict(msg.get("data") or {})
        data.setdefault("pid", client.pid)
        for k, v in client.job.items():
            data.setdefault(k, v)
        self._call(self._on_event, EventRecord(msg["t_ns"], msg["kind"], msg["message"], data))

    def _msg_collectives(self, client: _Client, msg: dict[str, Any]) -> None:
        calls = msg["calls"]
        if not calls:
            return
        data = {"calls": calls, "pid": client.pid, **client.job}
        total_s = sum(t1 - t0 for _op, t0, t1 in calls) / 1e9
        who = f"rank {client.job['rank']}" if "rank" in client.job else f"pid {client.pid}"
        self._call(self._on_event, EventRecord(
            calls[-1][2], "collectives",
            f"{who}: {len(calls)} torch.distributed collective call(s), {total_s:.3f} s", data))

    def _msg_knob(self, client: _Client, msg: dict[str, Any]) -> None:
        with self._lock:
            self._knobs[msg["name"]] = msg["value"]
        self._call(self._on_event, EventRecord(
            msg["t_ns"], "knob", f"the target offers knob {msg['name']} = {msg['value']!r}",
            {"name": msg["name"], "value": msg["value"], "pid": client.pid}))

    def _msg_knob_set(self, client: _Client, msg: dict[str, Any]) -> None:
        with self._lock:
            self._knobs[msg["name"]] = msg["value"]
        self._call(self._on_event, EventRecord(
            msg["t_ns"], "knob-set", f"knob {msg['name']} set to {msg['value']!r} in the target",
            {"name": msg["name"], "value": msg["value"], "pid": client.pid}))

    def _msg_refused(self, client: _Client, msg: dict[str, Any]) -> None:
        log.warning("agent (pid %s) refused command %r: %s", client.pid, msg["command"], msg["reason"])
        self._call(self._on_event, EventRecord(
            msg["t_ns"], "command-refused",
            f"the target refused {msg['command']}: {msg['reason']}",
            {"command": msg["command"], "reason": msg["reason"], "pid": client.pid}))

    def _msg_applied(self, client: _Client, msg: dict[str, Any]) -> None:
        self._action_event(client, msg, "action-applied",
                           f"applied {msg['action']} live from step {msg['step']}")

    def _msg_reverted(self, client: _Client, msg: dict[str, Any]) -> None:
        self._action_event(client, msg, "action-reverted",
                           f"reverted {msg['action']} from step {msg['step']}")

    def _msg_apply_refused(self, client: _Client, msg: dict[str, Any]) -> None:
        log.warning("agent (pid %s) refused %s: %s", client.pid, msg["action"], msg["reason"])
        self._action_event(client, msg, "action-refused",
                           f"the target refused {msg['action']}: {msg['reason']}")

    def _action_event(self, client: _Client, msg: dict[str, Any], kind: str, message: str) -> None:
        data = {k: msg[k] for k in ("id", "action", "step", "t_ns", "reason") if k in msg}
        data["pid"] = client.pid
        self._call(self._on_event, EventRecord(msg["t_ns"], kind, message, data))

    def _msg_bye(self, client: _Client, msg: dict[str, Any]) -> None:
        client.said_bye = True
        client.error = msg.get("error")
        client.dropped_step = bool(msg.get("dropped_step"))
        client.error_rank = msg.get("rank")
        client.steps = int(msg.get("steps") or 0)

    def _hello_info(self, client: _Client) -> dict[str, Any]:
        info = dict(client.hello or {})
        models = list(client.models.values())
        main = next((m for m in models if m["main"]), None)
        info["models"] = models
        info["device"] = main.get("device") if main else None
        info["model_classes"] = [m["class"] for m in models]
        info["param_counts"] = {m["prefix"] or m["class"]: m["params"] for m in models}
        return info

    # ------------------------------------------------------------------ energy and records
    def _queue(self, kind: str, msg: dict[str, Any], client: _Client) -> None:
        self._pending.append(_Pending(kind, msg, time.monotonic() + self._energy_wait_s, client.job,
                                      client.energy_split))
        self._flush_pending(final=False)

    def _energy(self, t0_ns: int, t1_ns: int) -> float | None:
        if self._energy_between is None:
            return None
        try:
            value = self._energy_between(t0_ns, t1_ns)
        except Exception as exc:
            if not self._energy_error_logged:
                self._energy_error_logged = True
                log.warning("agent link: energy_between failed (%s); energy left empty", exc)
            return None
        return None if value is None else float(value)

    def _item_energy(self, item: _Pending, t0_ns: int, t1_ns: int) -> float | None:
        """A record's energy: its rank's own (per-rank split) or, without one, the target's ÷
        the ranks on the host (equal split; a process outside a job has split 1)."""
        rank = item.job.get("rank")
        if rank is not None and self._rank_energy_between is not None:
            try:
                return self._rank_energy_between(rank, t0_ns, t1_ns)
            except LookupError:
                pass
            except Exception as exc:
                if not self._energy_error_logged:
                    self._energy_error_logged = True
                    log.warning("agent link: rank_energy_between failed (%s); equal split used", exc)
        e = self._energy(t0_ns, t1_ns)
        return None if e is None else e / item.split

    def _flush_pending(self, *, final: bool) -> None:
        """Emit waiting records in order; the head waits until its energy is known or it expires."""
        now = time.monotonic()
        while self._pending:
            item = self._pending[0]
            give_up = final or now >= item.deadline_s or self._energy_between is None
            if item.kind == "steps":
                spans = [(s["t_start_ns"], s["t_end_ns"]) for s in item.msg["steps"]]
            else:
                spans = [(item.msg["t_start_ns"], item.msg["t_end_ns"])]
            energies = [self._item_energy(item, t0, t1) for t0, t1 in spans]
            if any(e is None for e in energies) and not give_up:
                return
            self._pending.popleft()
            if item.kind == "steps":
                for s, e in zip(item.msg["steps"], energies, strict=True):
                    self._call(self._on_step, StepRecord(
                        step=s["step"], t_start_ns=s["t_start_ns"], t_end_ns=s["t_end_ns"],
                        samples=s.get("samples"), tokens=s.get("tokens"), energy_j=e, **item.job))
            else:
                self._call(self._on_layer_costs,
                           layer_costs(item.msg, energies[0], rank=item.job.get("rank")))

    # ------------------------------------------------------------------ plumbing
    def _call(self, callback: Callable[[Any], None] | None, arg: Any) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            log.exception("agent link: a callback failed (the server keeps running)")

    def _send(self, client: _Client, msg: dict[str, Any]) -> None:
        """Queue a command; only the listener thread touches client sockets."""
        with self._lock:
            self._outbox.append((client, encode(msg), msg["type"]))
        if threading.current_thread() is self._thread:
            self._drain_outbox()
        else:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

    def _drain_outbox(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                client, data, kind = self._outbox.popleft()
            if client.sock.fileno() < 0:
                continue
            try:
                client.sock.settimeout(2.0)  # tiny messages; a stuck agent must not hang us
                client.sock.sendall(data)
            except OSError as exc:
                log.warning("agent link: could not send %s to pid %s (%s)", kind, client.pid, exc)
            finally:
                try:
                    client.sock.setblocking(False)
                except OSError:
                    pass

    def _dropped(self, client: _Client, reason: str) -> None:
        client.drops += 1
        if client.drops <= _MAX_LOGGED_DROPS:
            log.warning("agent link: dropped a message from pid %s: %s", client.pid, reason)
        elif client.drops == _MAX_LOGGED_DROPS + 1:
            log.warning("agent link: pid %s keeps sending bad messages; no longer logging each",
                        client.pid)

    def _refuse_connection(self, sock: socket.socket, reason: str, client: _Client | None = None) -> None:
        log.warning("agent link: refused a connection: %s", reason)
        if client is not None:
            self._forget(client)
        try:
            sock.close()
        except OSError:
            pass
        self._call(self._on_event, EventRecord(time.monotonic_ns(), "agent-refused",
                                               f"refused an agent connection: {reason}",
                                               {"reason": reason}))

    def _forget(self, client: _Client) -> None:
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError, OSError):
            pass
        for fd, c in list(self._clients.items()):
            if c is client:
                del self._clients[fd]

    def _drop_client(self, client: _Client, reason: str | None) -> None:
        self._forget(client)
        try:
            client.sock.close()
        except OSError:
            pass
        if client.hello is None:
            return
        rank = (client.hello or {}).get("rank")
        who = f"rank {rank} (PID {client.pid})" if rank is not None else f"the process with PID {client.pid}"
        if client.said_bye and client.error:
            if rank is None and client.error_rank is not None:
                who = f"rank {client.error_rank} (PID {client.pid})"
            message = f"{who} ended with an uncaught {client.error}" + (
                "; the step it was in is not counted" if client.dropped_step else
                f", after {client.steps} step(s)" if client.steps else "")
        elif client.said_bye:
            message = f"agent in pid {client.pid} finished"
        elif reason is None:
            message = f"stopped listening to the agent in pid {client.pid}"
        else:
            message = (f"{who} ended without its agent's goodbye (killed, crashed or os._exit); what "
                       "it sent until then is kept")
        self._call(self._on_event, EventRecord(time.monotonic_ns(), "agent-disconnected", message,
                                               {"pid": client.pid, "clean": client.said_bye, "rank": rank,
                                                "error": client.error,
                                                # it ended by an exception, or vanished without a
                                                # goodbye: said in the session where it ran a model
                                                "early": bool(client.models) and (
                                                    bool(client.error) or (not client.said_bye
                                                                           and reason is not None))}))


def layer_costs(msg: dict[str, Any], energy_j: float | None, *, rank: int | None = None) -> list[LayerCost]:
    """Turn one ``layers`` message into LayerCost rows plus the "optimizer" (when the agent timed
    optimizer steps) and "outside modules" buckets.

    Energy is shared by self time (``figures.split_window_energy``): the base is the window
    length, or the sum of self times when they exceed it (overlapping threads / GPU streams); the
    bucket takes the rest, so the rows' self energies sum to ``E``.
    """
    t0, t1 = msg["t_start_ns"], msg["t_end_ns"]
    dur_ns = t1 - t0
    rows = msg["rows"]
    opt_ns = msg.get("optimizer_ns") or 0
    self_total_ns = sum(r["self_time_ns"] for r in rows) + opt_ns
    bucket_ns = dur_ns - self_total_ns if self_total_ns < dur_ns else 0
    out = [
        LayerCost(
            window_start_ns=t0, window_end_ns=t1, path=r["path"], granularity="instance",
            method=figures.AGENT_TIMING, time_s=r["time_ns"] / 1e9, share=r["time_ns"] / dur_ns,
            self_time_s=r["self_time_ns"] / 1e9, phase=r["phase"], flops=r.get("flops"),
            params=r.get("params"), rank=rank,
        )
        for r in rows
    ]
    if opt_ns:  # optimizer.step(), timed by the agent (the same bucket attach mode names)
        out.append(LayerCost(
            window_start_ns=t0, window_end_ns=t1, path=BUCKET_OPTIMIZER, granularity="bucket",
            method=figures.AGENT_TIMING, time_s=opt_ns / 1e9, share=opt_ns / dur_ns,
            self_time_s=opt_ns / 1e9, phase="", rank=rank,
        ))
    out.append(LayerCost(
        window_start_ns=t0, window_end_ns=t1, path=OUTSIDE_MODULES, granularity="bucket",
        method=figures.AGENT_TIMING, time_s=bucket_ns / 1e9, share=bucket_ns / dur_ns,
        self_time_s=bucket_ns / 1e9, phase="", rank=rank,
    ))
    return figures.split_window_energy(out, energy_j)


def _runtime_parent(explicit: str | os.PathLike[str] | None) -> str | None:
    """$XDG_RUNTIME_DIR when usable (per-user, tmpfs), else the temp dir; short for socket paths."""
    if explicit is not None:
        return os.fspath(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return xdg
    return None


def _peer_uid(sock: socket.socket) -> int | None:
    """The connecting process's uid (Linux SO_PEERCRED), or None where not available."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid
    except OSError:
        return None
