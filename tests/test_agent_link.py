"""AgentServer on its own: real Unix sockets, raw JSON-line clients (no torch in these tests)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from wattlens.profiler.agent.protocol import PROTOCOL_VERSION, decode
from wattlens.profiler.agentlink import BOOTSTRAP_DIR, OUTSIDE_MODULES, AgentServer, layer_costs
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.launch import launch


class Collector:
    """Callback sink with a wait helper (callbacks arrive on the listener thread)."""

    def __init__(self) -> None:
        self.steps: list = []
        self.layers: list = []
        self.events: list = []
        self.hellos: list = []
        self._cv = threading.Condition()

    def _add(self, bucket: list, item) -> None:
        with self._cv:
            bucket.append(item)
            self._cv.notify_all()

    def kwargs(self) -> dict:
        return {
            "on_step": lambda r: self._add(self.steps, r),
            "on_layer_costs": lambda r: self._add(self.layers, r),
            "on_event": lambda r: self._add(self.events, r),
            "on_hello": lambda r: self._add(self.hellos, r),
        }

    def wait(self, predicate, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def hello(token: str, **extra) -> dict:
    msg = {"type": "hello", "token": token, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
           "python": "3.11.7", "t_ns": time.monotonic_ns()}
    msg.update(extra)
    return msg


def connect(server: AgentServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.socket_path)
    return sock


def send(sock: socket.socket, *msgs) -> None:
    for m in msgs:
        sock.sendall(m if isinstance(m, bytes) else (json.dumps(m) + "\n").encode())


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:  # closed with our unread lines still in its buffer
        return True


def steps_msg(t0: int, n: int = 2, dt: int = 10_000_000) -> dict:
    return {"type": "steps", "steps": [
        {"step": i, "t_start_ns": t0 + i * dt, "t_end_ns": t0 + (i + 1) * dt, "samples": 4, "tokens": 128}
        for i in range(n)]}


@pytest.fixture
def sink():
    return Collector()


@pytest.fixture
def server(sink):
    srv = AgentServer(energy_between=lambda a, b: (b - a) * 1e-9 * 20.0, **sink.kwargs())
    yield srv
    srv.stop()


def test_runtime_dir_is_private_and_removed_on_stop(sink):
    srv = AgentServer(**sink.kwargs())
    mode = stat.S_IMODE(os.stat(srv.runtime_dir).st_mode)
    assert mode == 0o700
    assert stat.S_ISSOCK(os.stat(srv.socket_path).st_mode)
    assert len(srv.token) >= 32
    srv.stop()
    assert not srv.runtime_dir.exists()
    srv.stop()  # idempotent


def test_env_prepends_bootstrap_to_existing_pythonpath(server):
    env = server.env({"PYTHONPATH": "/somewhere/else", "HOME": "/h"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(BOOTSTRAP_DIR), "/somewhere/else"]
    assert env["WATTLENS_AGENT_SOCKET"] == server.socket_path
    assert env["WATTLENS_AGENT_TOKEN"] == server.token
    assert env["HOME"] == "/h"
    assert (BOOTSTRAP_DIR / "sitecustomize.py").is_file()
    assert server.env({})["PYTHONPATH"] == str(BOOTSTRAP_DIR)


def test_good_client_records_flow_with_energy(server, sink):
    sock = connect(server)
    t0 = time.monotonic_ns()
    send(sock, hello(server.token), steps_msg(t0))
    assert sink.wait(lambda: len(sink.steps) == 2)
    s0 = sink.steps[0]
    assert (s0.step, s0.samples, s0.tokens) == (0, 4, 128)
    assert s0.energy_j == pytest.approx(0.2)  # 10 ms at 20 W
    assert sink.hellos and "token" not in sink.hellos[0]
    assert sink.hellos[0]["pid"] == os.getpid()
    sock.close()
    assert sink.wait(lambda: "agent-disconnected" in sink.kinds())
    ev = sink.events[sink.kinds().index("agent-disconnected")]
    assert ev.data["clean"] is False  # no bye: treated as a crash


def test_wrong_token_refused_and_good_client_still_served(server, sink):
    bad = connect(server)
    # one write: the server may close the socket as soon as it has read the hello
    send(bad, (json.dumps(hello("0" * 64)) + "\n" + json.dumps(steps_msg(time.monotonic_ns()))
               + "\n").encode())
    assert sink.wait(lambda: "agent-refused" in sink.kinds())
    assert closed_by_server(bad)
    good = connect(server)
    send(good, hello(server.token), steps_msg(time.monotonic_ns(), n=1))
    assert sink.wait(lambda: len(sink.steps) == 1)
    assert sink.steps[0].step == 0
    good.close()


def test_first_line_not_json_is_refused(server, sink):
    sock = connect(server)
    send(sock, b"this is not json\n")
    assert sink.wait(lambda: "agent-refused" in sink.kinds())
    assert closed_by_server(sock)


def test_malformed_and_mistyped_messages_are_dropped_not_executed(server, sink, caplog):
    sock = connect(server)
    t0 = time.monotonic_ns()
    bad_steps = {"type": "steps", "steps": [{"step": "zero", "t_start_ns": t0, "t_end_ns": t0 + 5}]}
    reversed_step = {"type": "steps", "steps": [{"step": 0, "t_start_ns": t0 + 5, "t_end_ns": t0}]}
    send(sock, hello(server.token),
         b"{not json\n",
         b'{"type": "steps", "steps": NaN}\n',
         b"[1, 2, 3]\n",
         {"type": "exec", "code": "import os; os._exit(1)"},
         {"type": "event", "t_ns": "yesterday", "kind": "x", "message": "y"},
         bad_steps, reversed_step,
         {"type": "layers", "t_start_ns": t0, "t_end_ns": t0 + 10, "timing": "perf-counter",
          "rows": [{"path": "a", "phase": "sideways", "time_ns": 1, "self_time_ns": 1}]},
         {"type": "hello", "token": server.token, "protocol": 1, "pid": 1, "python": "x", "t_ns": 1},
         steps_msg(t0, n=1))
    assert sink.wait(lambda: len(sink.steps) == 1)
    assert sink.steps[0].samples == 4
    assert sink.layers == []
    assert "agent-refused" not in sink.kinds()
    dropped = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == 9
    assert any("unknown message type 'exec'" in m for m in dropped)
    sock.close()


def test_knob_sent_to_connected_and_later_clients(server, sink):
    early = connect(server)
    send(early, hello(server.token))
    assert server.wait_for_hello(5)
    server.set_knob("batch_size", 8)
    early.settimeout(5)
    got = decode(early.recv(4096).split(b"\n")[0])
    assert got == {"type": "set_knob", "name": "batch_size", "value": 8}
    late = connect(server)
    send(late, hello(server.token))
    late.settimeout(5)
    assert decode(late.recv(4096).split(b"\n")[0])["value"] == 8
    send(late, {"type": "knob_set", "t_ns": 1, "name": "batch_size", "value": 8})
    assert sink.wait(lambda: "knob-set" in sink.kinds())
    assert server.knobs == {"batch_size": 8}
    with pytest.raises(BadInputError):
        server.set_knob("batch_size", [1, 2])
    with pytest.raises(BadInputError):
        server.set_knob("", 1)
    early.close()
    late.close()


def test_energy_waits_for_the_sampler_then_gives_up(sink):
    calls = {"n": 0}

    def energy_between(t0, t1):
        calls["n"] += 1
        return None if calls["n"] <= 3 else 1.5

    srv = AgentServer(energy_between=energy_between, energy_wait_s=10, **sink.kwargs())
    try:
        sock = connect(srv)
        send(sock, hello(srv.token), steps_msg(time.monotonic_ns(), n=1))
        assert sink.wait(lambda: len(sink.steps) == 1)
        assert sink.steps[0].energy_j == 1.5 and calls["n"] >= 4
        sock.close()
    finally:
        srv.stop()
    never = Collector()
    srv = AgentServer(energy_between=lambda a, b: None, energy_wait_s=0.2, **never.kwargs())
    try:
        sock = connect(srv)
        send(sock, hello(srv.token), steps_msg(time.monotonic_ns(), n=1))
        assert never.wait(lambda: len(never.steps) == 1)
        assert never.steps[0].energy_j is None  # unknown, never 0
        sock.close()
    finally:
        srv.stop()


def test_stop_flushes_what_was_written_before(sink):
    srv = AgentServer(energy_between=lambda a, b: None, energy_wait_s=60, **sink.kwargs())
    sock = connect(srv)
    send(sock, hello(srv.token), steps_msg(time.monotonic_ns(), n=3), {"type": "bye", "t_ns": 5})
    srv.stop()
    assert [s.step for s in sink.steps] == [0, 1, 2]
    assert all(s.energy_j is None for s in sink.steps)
    sock.close()


def test_layer_costs_conserve_window_energy():
    t0 = 1_000_000_000
    msg = {"t_start_ns": t0, "t_end_ns": t0 + 100_000_000, "rows": [
        {"path": "", "phase": "forward", "time_ns": 60_000_000, "self_time_ns": 10_000_000},
        {"path": "h.0", "phase": "forward", "time_ns": 50_000_000, "self_time_ns": 50_000_000,
         "flops": 123, "params": 7},
        {"path": "h.0", "phase": "backward", "time_ns": 20_000_000, "self_time_ns": 20_000_000},
    ]}
    rows = layer_costs(msg, 3.0)
    bucket = rows[-1]
    assert (bucket.path, bucket.granularity, bucket.phase) == (OUTSIDE_MODULES, "bucket", "")
    assert bucket.self_time_s == pytest.approx(0.02)
    assert sum(r.self_energy_j for r in rows) == pytest.approx(3.0, rel=1e-12)
    h0 = rows[1]
    assert (h0.granularity, h0.method, h0.flops, h0.params) == ("instance", "agent-timing", 123, 7)
    assert h0.share == pytest.approx(0.5) and h0.energy_j == pytest.approx(1.5)
    # self times beyond the window (threads, streams): shares are scaled, still conserved
    msg["rows"][0]["self_time_ns"] = 90_000_000
    rows = layer_costs(msg, 3.0)
    assert rows[-1].self_time_s == 0
    assert sum(r.self_energy_j for r in rows) == pytest.approx(3.0, rel=1e-12)
    assert all(r.energy_j is None for r in layer_costs(msg, None))


def test_the_optimizer_step_is_its_own_bucket():
    """A window's timed optimizer.step() becomes the "optimizer" bucket (as attach mode names
    it), taken out of "outside modules"; the window's energy is still conserved."""
    t0 = 1_000_000_000
    msg = {"t_start_ns": t0, "t_end_ns": t0 + 100_000_000, "optimizer_ns": 30_000_000,
           "optimizer_calls": 2, "rows": [
               {"path": "", "phase": "forward", "time_ns": 50_000_000, "self_time_ns": 50_000_000},
           ]}
    rows = layer_costs(msg, 4.0)
    by = {r.path: r for r in rows}
    assert (by["optimizer"].granularity, by["optimizer"].method) == ("bucket", "agent-timing")
    assert by["optimizer"].self_time_s == pytest.approx(0.03)
    assert by["optimizer"].self_energy_j == pytest.approx(1.2)
    assert by[OUTSIDE_MODULES].self_time_s == pytest.approx(0.02)
    assert rows[-1].path == OUTSIDE_MODULES
    assert sum(r.self_energy_j for r in rows) == pytest.approx(4.0, rel=1e-12)
    del msg["optimizer_ns"]
    assert "optimizer" not in {r.path for r in layer_costs(msg, 4.0)}


def test_launch_command_not_found(server):
    with pytest.raises(BadInputError) as err:
        launch(["no-such-command-wattlens"], server=server)
    assert str(err.value) == ("command not found: no-such-command-wattlens — check the spelling "
                              "or give a full path")
    assert err.value.exit_code == 2
    with pytest.raises(BadInputError, match="no command"):
        launch([], server=server)
    with pytest.raises(BadInputError, match="working directory not found"):
        launch(["true"], cwd="/no/such/dir", server=server)
