"""The agent's Tracker in this process: real torch modules and hooks, messages checked against
the wire schema. The only fake is the CUDA event (the hardware boundary) for the GPU timing path.
"""

from __future__ import annotations

import time

import pytest
import torch

from wattlens.profiler.agent.protocol import AGENT_MESSAGES, validate
from wattlens.profiler.agent.tracker import TRAIN_FORWARDS_BEFORE_FALLBACK, Tracker


class Sink:
    def __init__(self) -> None:
        self.msgs: list[dict] = []

    def __call__(self, msg: dict) -> None:
        assert validate(msg, AGENT_MESSAGES) is None, (validate(msg, AGENT_MESSAGES), msg)
        self.msgs.append(msg)

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.msgs if m["type"] == kind]

    def steps(self) -> list[dict]:
        return [s for m in self.of("steps") for s in m["steps"]]

    def rows(self, path: str, phase: str = "forward") -> list[dict]:
        return [r for m in self.of("layers") for r in m["rows"]
                if r["path"] == path and r["phase"] == phase]

    def events(self) -> list[str]:
        return [m["kind"] for m in self.of("event")]


@pytest.fixture
def make_tracker():
    made: list[Tracker] = []
    failures: list[BaseException] = []

    def make(**kw) -> tuple[Tracker, Sink]:
        sink = Sink()
        kw.setdefault("window_ns", 0)
        kw.setdefault("count_flops", "off")
        tracker = Tracker(torch, sink, failures.append, **kw)
        tracker.install()
        made.append(tracker)
        return tracker, sink

    yield make
    for t in made:
        t.uninstall()
    assert failures == []


class Block(torch.nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d, d)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


class Net(torch.nn.Module):
    def __init__(self, d: int = 16, n: int = 2) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(n)])
        self.head = torch.nn.Linear(d, 4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_names_nesting_and_self_time(make_tracker):
    tracker, sink = make_tracker()
    net = Net().eval()
    x = torch.randn(8, 16)
    with torch.no_grad():
        for _ in range(3):
            net(x)
    tracker.finish()
    assert [s["step"] for s in sink.steps()] == [0, 1, 2]
    assert all((s["samples"], s["tokens"]) == (8, None) for s in sink.steps())
    model = sink.of("model")[0]
    assert model["main"] and model["prefix"] == "" and model["class"] == "Net"
    assert {m["path"] for m in model["modules"]} >= {"", "blocks.0.fc", "blocks.1.act", "head"}
    for path in ("", "blocks.0", "blocks.0.fc", "head"):
        assert sink.rows(path), path
    for m in sink.of("layers"):
        by = {r["path"]: r for r in m["rows"]}
        assert by[""]["time_ns"] >= by["blocks.0"]["time_ns"] + by["head"]["time_ns"]
        assert by["blocks.0"]["time_ns"] >= by["blocks.0.fc"]["time_ns"]
        assert by["blocks.0"]["self_time_ns"] <= by["blocks.0"]["time_ns"] - by["blocks.0.fc"]["time_ns"]
        assert sum(r["self_time_ns"] for r in m["rows"]) <= m["t_end_ns"] - m["t_start_ns"]


def test_token_ids_give_tokens(make_tracker):
    tracker, sink = make_tracker()
    emb = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8))
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        emb(ids)
        emb(ids)
    tracker.finish()
    assert [(s["samples"], s["tokens"]) for s in sink.steps()] == [(3, 21), (3, 21)]


def test_kwargs_only_call_takes_shape_from_first_child(make_tracker):
    class KwModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)

        def forward(self, *, input_ids):
            return self.emb(input_ids)

    tracker, sink = make_tracker()
    m = KwModel()
    with torch.no_grad():
        m(input_ids=torch.randint(0, 50, (2, 5)))
    tracker.finish()
    assert [(s["samples"], s["tokens"]) for s in sink.steps()] == [(2, 10)]


def test_exception_in_forward_unwinds_and_steps_continue(make_tracker):
    class Flaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.fail = True

        def forward(self, x):
            y = self.fc(x)
            if self.fail:
                self.fail = False
                raise ValueError("user error")
            return y

    tracker, sink = make_tracker()
    m = Flaky()
    with torch.no_grad():
        with pytest.raises(ValueError, match="user error"):
            m(torch.randn(2, 4))
        m(torch.randn(2, 4))
        m(torch.randn(2, 4))
    tracker.finish()
    assert [s["step"] for s in sink.steps()] == [0, 1, 2]
    assert tracker._tls.stack == []


def test_steps_and_windows_inside_a_window_follow_the_rule_exactly(make_tracker, monkeypatch):
    """Steps and windows boundary by boundary, with windows longer than a step (the other
    tests close one per step): a step runs from one inference forward's start to the next one's,
    a training forward with no optimizer yet is no boundary, a forward that raises still counts,
    a window closes at the first boundary at least ``window_ns`` after it opened, commands run at
    every boundary seeing the count of closed steps. The clock is the test's: every time is
    known."""
    from wattlens.profiler.agent import tracker as tracker_mod

    now = [1_000]
    monkeypatch.setattr(tracker_mod, "_monotonic_ns", lambda: now[0])
    seen: list[int] = []
    tracker, sink = make_tracker(window_ns=50, on_boundary=lambda: seen.append(tracker.steps_done))

    class Flaky(Net):
        fail_at = -1

        def forward(self, x):
            if self.fail_at == 0:
                self.fail_at = -1
                raise ValueError("user error")
            self.fail_at -= 1
            return super().forward(x)

    net = Flaky().eval()
    batches = []
    for i in range(14):
        now[0] = 1_000 + 10 * i
        if i == 7:  # a training forward in the middle: counted into the open step (auto mode)
            net.train()
            batches.append(6)
            net(torch.randn(6, 16))
            net.eval()
            continue
        batches.append(i + 1)
        with torch.no_grad():
            if i == 3:  # a forward that raises still ends its step's forward
                net.fail_at = 0
                with pytest.raises(ValueError, match="user error"):
                    net(torch.randn(i + 1, 16))
            else:
                net(torch.randn(i + 1, 16))
    now[0] = 1_000 + 10 * 14 + 5
    tracker.finish()  # the last step ends where the last forward ended (here, as it began)

    # forward 7 (training, no optimizer yet) is no boundary: it belongs to step 6, which runs
    # from forward 6's start to forward 8's and takes its samples from the training forward
    starts = [1_000 + 10 * i for i in range(14) if i != 7]
    steps = sink.steps()
    assert [s["step"] for s in steps] == list(range(13))
    assert [(s["t_start_ns"], s["t_end_ns"]) for s in steps] == list(
        zip(starts, starts[1:] + [1_130], strict=True))
    assert [s["samples"] for s in steps] == batches[:6] + [6] + batches[8:]
    assert seen == list(range(13))  # once per boundary, with the count of closed steps
    layers = sink.of("layers")
    assert [(m["first_step"], m["last_step"]) for m in layers] == [(0, 4), (5, 8), (9, 12)]
    assert [(m["t_start_ns"], m["t_end_ns"]) for m in layers] == [
        (1_000, 1_050), (1_050, 1_100), (1_100, 1_130)]
    # the raising forward's call of ``head`` never happened; every other forward's did
    head_calls = [r["calls"] for m in layers for r in m["rows"] if r["path"] == "head"]
    assert head_calls == [4, 5, 4]  # forwards 0-4 (3 raised), 5-9, 10-13
    assert tracker._tls.stack == []


def test_explicit_steps_and_watch_inside_a_window_keep_the_steps_before_them(make_tracker, monkeypatch):
    """agent.step() or watch() in the middle of a window of inference steps: the steps before
    it keep their order and times, the step it closes ends at it, nothing is lost or counted
    twice."""
    from wattlens.profiler.agent import tracker as tracker_mod

    now = [0]
    monkeypatch.setattr(tracker_mod, "_monotonic_ns", lambda: now[0])
    tracker, sink = make_tracker(window_ns=10**6)
    net = Net().eval()
    with torch.no_grad():
        for i in range(3):
            now[0] = 100 * i
            net(torch.randn(2, 16))
        now[0] = 250
        tracker.explicit_step(None, None)  # closes the third forward's step here
        now[0] = 300
        net(torch.randn(2, 16))
        now[0] = 350
        tracker.explicit_step(7, None)
    assert tracker.steps_done == 4
    now[0] = 400
    tracker.finish()
    assert [(s["t_start_ns"], s["t_end_ns"], s["samples"]) for s in sink.steps()] == [
        (0, 100, 2), (100, 200, 2), (200, 250, 2), (250, 350, 7)]
    tracker.uninstall()

    tracker2, sink2 = make_tracker(window_ns=10**6)
    other = Net().eval()
    with torch.no_grad():
        for i in range(3):
            now[0] = 1_000 + 100 * i
            net(torch.randn(3, 16))
        now[0] = 1_250
        tracker2.watch(other)
        now[0] = 1_300
        other(torch.randn(5, 16))
    now[0] = 1_320
    tracker2.finish()
    assert [(s["t_start_ns"], s["t_end_ns"], s["samples"]) for s in sink2.steps()] == [
        (1_000, 1_100, 3), (1_100, 1_200, 3), (1_200, 1_300, 3), (1_300, 1_300, 5)]


class Leaf(torch.nn.Module):
    """Spends ``cost`` on the test's clock."""

    def __init__(self, now: list[int], cost: int) -> None:
        super().__init__()
        self.now, self.cost = now, cost
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.now[0] += self.cost
        return x


class Pair(torch.nn.Module):
    def __init__(self, now: list[int]) -> None:
        super().__init__()
        self.now = now
        self.a, self.b = Leaf(now, 5), Leaf(now, 3)

    def forward(self, x):
        self.now[0] += 2
        return self.b(self.a(self.a(x)))  # ``a`` twice


class Top(torch.nn.Module):
    def __init__(self, now: list[int]) -> None:
        super().__init__()
        self.now = now
        self.p, self.q = Pair(now), Leaf(now, 7)

    def forward(self, x):
        self.now[0] += 1
        return self.q(self.p(x))


#: (inclusive, self, calls) per forward of Top on the test's clock
TOP_TIMES = {"": (23, 1, 1), "p": (15, 2, 1), "p.a": (10, 10, 2), "p.b": (3, 3, 1), "q": (7, 7, 1)}


@pytest.mark.parametrize("call_path", ["wrap", "hooks"])
@pytest.mark.parametrize("window_ns", [0, 10**15])
def test_inclusive_and_self_times_are_exact(make_tracker, monkeypatch, call_path, window_ns):
    """On a clock that only moves inside forwards, every module's inclusive time, self time
    (inclusive minus its children's) and calls come out exactly, on either call path, with a
    window per step or one for all."""
    from wattlens.profiler.agent import tracker as tracker_mod

    now = [0]
    monkeypatch.setattr(tracker_mod, "_perf_ns", lambda: now[0])
    tracker, sink = make_tracker(call_path=call_path, window_ns=window_ns)
    top = Top(now)
    with torch.no_grad():
        for _ in range(3):
            top(torch.zeros(2, 1))
    tracker.finish()
    layers = sink.of("layers")
    per = 1 if window_ns == 0 else 3  # forwards per window
    assert len(layers) == 3 // per
    for m in layers:
        got = {r["path"]: (r["time_ns"], r["self_time_ns"], r["calls"]) for r in m["rows"]}
        assert got == {p: (i * per, s * per, c * per) for p, (i, s, c) in TOP_TIMES.items()}


def test_calls_on_other_threads_are_all_counted(make_tracker):
    """Modules called on other threads, while the main model runs on this one, are timed on
    their own threads' stacks, and every call is counted."""
    import threading

    tracker, sink = make_tracker(window_ns=10**15)
    main, side = Net().eval(), Net(n=1).eval()
    x = torch.randn(2, 16)
    start = threading.Barrier(3)

    def work() -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(60):
                side(x)

    with torch.no_grad():
        main(x)  # the main model
        side(x)
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        start.wait()
        for _ in range(30):
            main(x)
        for t in threads:
            t.join()
        main(x)
    tracker.finish()
    assert sum(r["calls"] for r in sink.rows("head")) == 32
    assert sum(r["calls"] for r in sink.rows("@Net.head")) == 121
    assert sum(r["calls"] for r in sink.rows("@Net.blocks.0.fc")) == 121


def test_a_finished_call_does_not_keep_its_module_alive(make_tracker):
    """The tracker keeps no module alive: a model the program drops is freed at once, before
    the window it ran in closes."""
    import gc
    import weakref

    tracker, sink = make_tracker(window_ns=10**15)
    x = torch.randn(2, 16)
    with torch.no_grad():
        Net().eval()(x)  # the main model (dropped too: steps need not go on)
        side = Net().eval()
        side(x)
        gone = weakref.ref(side.blocks[0].fc)
        del side
        gc.collect()
        assert gone() is None
    tracker.finish()
    assert sum(r["calls"] for r in sink.rows("@Net.blocks.0.fc")) == 1


def test_a_call_whose_exit_never_came_is_dropped_with_its_children(make_tracker, monkeypatch):
    """With global hooks, a post-hook can be skipped (a call entered while tracing, say): the
    caller's exit drops the calls above it. The dropped call gets no row, and its children's
    time is not taken off the caller's self time (it never reached the caller)."""
    from wattlens.profiler.agent import tracker as tracker_mod

    now = [0]
    monkeypatch.setattr(tracker_mod, "_perf_ns", lambda: now[0])
    tracker, sink = make_tracker(call_path="hooks", window_ns=10**15)
    inner = torch.nn.Linear(1, 1)
    mid = torch.nn.Sequential(inner)
    root = torch.nn.Sequential(mid, torch.nn.Linear(1, 1))
    x = torch.zeros(1, 1)
    with torch.no_grad():
        root(x)  # names everything and makes ``root`` the main model
        for module, t, enter in [(root, 100, True), (root[1], 101, True), (root[1], 103, False),
                                 (mid, 104, True), (inner, 105, True), (inner, 108, False),
                                 (root, 110, False),  # ``mid`` never exited
                                 (root, 200, True), (mid, 201, True), (inner, 202, True),
                                 (inner, 204, False), (mid, 207, False), (root, 210, False)]:
            now[0] = t
            if enter:
                tracker._pre(module, (x,))
            else:
                tracker._post(module, (x,), x)
    tracker.finish()
    rows = {r["path"]: (r["time_ns"], r["self_time_ns"], r["calls"])
            for r in sink.of("layers")[-1]["rows"]}
    # (the first forward ran at a standing clock: calls, no time)
    # the first manual call: root 10, self 8 (its children: root[1]'s 2, not inner's 3); the
    # second: root 10, self 4; mid 6, self 4 (its child: inner's 2 only)
    assert rows == {"": (20, 12, 3), "1": (2, 2, 2), "0": (6, 4, 2), "0.0": (5, 5, 3)}


def test_dynamic_and_loss_modules_are_named_by_caller(make_tracker):
    class Dyn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.nn.ReLU()(self.fc(x))  # a module made on the fly

    tracker, sink = make_tracker()
    m = Dyn()
    loss = torch.nn.MSELoss()
    with torch.no_grad():
        for _ in range(2):
            loss(m(torch.randn(2, 4)), torch.zeros(2, 4))
    tracker.finish()
    assert sink.rows("<ReLU>")
    assert sink.rows("@MSELoss")


def test_watch_makes_the_named_model_main(make_tracker):
    tracker, sink = make_tracker()
    first, second = Net(n=1), Net(n=1)
    with torch.no_grad():
        first(torch.randn(2, 16))
        tracker.watch(second)
        second(torch.randn(3, 16))
        second(torch.randn(3, 16))
        first(torch.randn(2, 16))  # no longer the main model: not a step
    tracker.finish()
    models = sink.of("model")
    assert [(m["prefix"], m["main"]) for m in models] == [("", True), ("@Net", False), ("", True)]
    assert [s["samples"] for s in sink.steps()][-2:] == [3, 3]
    assert sink.rows("@Net.head")


def test_explicit_steps_override_and_count(make_tracker):
    tracker, sink = make_tracker()
    net = Net()
    with torch.no_grad():
        net(torch.randn(5, 16))
        net(torch.randn(5, 16))
        tracker.explicit_step(None, None)
        net(torch.randn(5, 16))
        tracker.explicit_step(64, 640)
    tracker.finish()
    steps = sink.steps()
    # before the first agent.step() the automatic rule applied (one step per forward);
    # after it, only agent.step() marks steps; samples come from the call or are counted.
    assert [(s["samples"], s["tokens"]) for s in steps] == [(5, None), (5, None), (64, 640)]
    with torch.no_grad():
        net(torch.randn(5, 16))
        net(torch.randn(5, 16))
        tracker.explicit_step(None, None)
    assert sink.steps()[-1]["samples"] == 10


def test_training_steps_by_optimizer_and_backward_attribution(make_tracker):
    tracker, sink = make_tracker()
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(4):
        net(torch.randn(6, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    tracker.finish()
    steps = sink.steps()
    assert [s["samples"] for s in steps] == [6, 6, 6, 6]
    fc_bw = sink.rows("blocks.0.fc", "backward")
    assert fc_bw and all(r["self_time_ns"] > 0 and r["calls"] >= 1 for r in fc_bw)
    root_bw = sink.rows("", "backward")
    assert root_bw and all(r["time_ns"] >= r["self_time_ns"] for r in root_bw)


class Clocked(torch.optim.SGD):
    """SGD whose step spends ``cost`` on the test's clock (and runs the closure it is given)."""

    def __init__(self, params, now: list[int], cost: int, inner=None) -> None:
        super().__init__(params, lr=0.01)
        self.now, self.cost, self.inner, self.fail = now, cost, inner, False

    def step(self, closure=None):
        self.now[0] += self.cost
        if self.fail:
            self.fail = False
            raise RuntimeError("step failed")
        if closure is not None:
            closure()
        if self.inner is not None:
            self.inner.step()
            return None
        return super().step()


@pytest.fixture
def test_clock(monkeypatch):
    from wattlens.profiler.agent import tracker as tracker_mod

    now = [0]
    monkeypatch.setattr(tracker_mod, "_perf_ns", lambda: now[0])
    return now


def optimizer_windows(sink: Sink) -> list[tuple[int | None, int | None]]:
    return [(m.get("optimizer_ns"), m.get("optimizer_calls")) for m in sink.of("layers")]


def test_optimizer_steps_are_timed_into_their_window(make_tracker, test_clock):
    """optimizer.step() is timed into the window it ends in (the "optimizer" bucket), once per
    step although a subclass calling super().step() runs torch's hooks twice; a step that
    raised is not timed (its time stays outside modules) and the next one is."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # SGD.step itself is now hooked too
    tracker, sink = make_tracker()  # a window per step
    net = Net()
    opt = Clocked(net.parameters(), test_clock, 7)
    x = torch.randn(4, 16)
    for i in range(4):
        net(x).sum().backward()
        opt.fail = i == 1
        try:
            opt.step()
        except RuntimeError:
            pass
    tracker.finish()
    # the failed step marks no step: its forward and the next one share a window
    assert optimizer_windows(sink) == [(7, 1), (7, 1), (7, 1)]
    assert len(sink.steps()) == 3


def test_an_optimizer_inside_another_is_one_step(make_tracker, test_clock):
    """A wrapper optimizer whose step calls another's: one step, timed once, whole."""
    tracker, sink = make_tracker()
    net = Net()
    inner = Clocked(net.parameters(), test_clock, 7)
    outer = Clocked(net.parameters(), test_clock, 3, inner=inner)
    x = torch.randn(4, 16)
    for _ in range(3):
        net(x).sum().backward()
        outer.step()
    tracker.finish()
    assert optimizer_windows(sink) == [(10, 1)] * 3
    assert len(sink.steps()) == 3


def test_an_optimizer_step_that_runs_the_model_is_not_timed(make_tracker, test_clock):
    """A step given a closure (LBFGS) runs the model inside it: its time is the model's (rows)
    and is not timed again as the optimizer's; it still marks the steps."""
    tracker, sink = make_tracker()
    net = Net()
    opt = Clocked(net.parameters(), test_clock, 7)
    x = torch.randn(4, 16)

    def closure():
        opt.zero_grad()
        loss = net(x).sum()
        loss.backward()
        return loss

    for i in range(4):
        opt.fail = i == 1  # a step that raises: the steps after it are still marked
        try:
            opt.step(closure)
        except RuntimeError:
            pass
    tracker.finish()
    assert all(t == (None, None) for t in optimizer_windows(sink))
    assert len(sink.steps()) == 3


def test_a_step_that_raises_keeps_nothing_of_the_program_alive(make_tracker):
    """The step in progress is noted without its frames: after a step that raised (an out of
    memory at the first Adam step, caught by the program), the model it trained can go."""
    import gc
    import weakref

    make_tracker()

    def attempt():
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)

        def fail(optimizer, args, kwargs):
            raise MemoryError("out of memory")

        handle = opt.register_step_pre_hook(fail)  # after the agent's global pre-hook
        net(torch.randn(2, 16)).sum().backward()
        try:
            opt.step()
        except MemoryError:
            pass
        handle.remove()
        return weakref.ref(net)

    gone = attempt()
    gc.collect()
    assert gone() is None


def test_steps_on_two_threads_are_told_apart(make_tracker):
    """Each thread notes its own step in progress: a step on another thread, meanwhile, is
    not taken for an inner step or for the end of this one."""
    import threading

    tracker, sink = make_tracker(window_ns=10**15)
    net, other = Net(), Net(n=1)
    started, done = threading.Event(), threading.Event()

    class Slow(torch.optim.SGD):
        def step(self, closure=None):
            started.set()
            done.wait(5)  # the other thread steps while this one is inside its step
            return super().step()

    opt = Slow(net.parameters(), lr=0.01)
    side = torch.optim.SGD(other.parameters(), lr=0.01)

    def background():
        started.wait(5)
        for _ in range(20):
            other(torch.randn(2, 16)).sum().backward()
            side.step()
        done.set()

    x = torch.randn(2, 16)
    done.set()
    net(x).sum().backward()
    opt.step()  # alone: the first optimizer to finish a step, so the one that marks steps
    for _ in range(3):
        started.clear()
        done.clear()
        t = threading.Thread(target=background)
        t.start()
        net(x).sum().backward()
        opt.step()
        t.join()
    tracker.finish()
    assert len(sink.steps()) == 4  # one per Slow step, none lost, none doubled


def test_a_failure_inside_an_optimizer_hook_never_reaches_the_step(make_tracker):
    """The agent switching itself off inside its optimizer hook (here: its message sink fails
    at the step boundary) leaves torch's hook loop intact: the user's step() returns, and the
    hooks registered after the agent's still run."""
    failures: list[BaseException] = []

    def broken_sink(msg):
        if msg["type"] == "steps":
            raise OSError("socket gone")

    tracker = Tracker(torch, broken_sink, failures.append, window_ns=0, count_flops="off")
    tracker.install()
    after: list[int] = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    later = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: after.append(1))
    try:
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(3):
            net(torch.randn(2, 16)).sum().backward()
            opt.step()  # must not raise
    finally:
        later.remove()
        tracker.uninstall()
    assert len(failures) == 1 and isinstance(failures[0], OSError)
    assert after == [1, 1, 1]
    assert not tracker._opt_handles  # the last uninstall, outside the hooks, removed them


def test_training_without_optimizer_falls_back_to_forwards(make_tracker):
    tracker, sink = make_tracker()
    net = Net()
    n = TRAIN_FORWARDS_BEFORE_FALLBACK + 4
    for _ in range(n):
        net(torch.randn(2, 16)).sum().backward()
    tracker.finish()
    assert "steps-by-forward" in sink.events()
    assert len(sink.steps()) >= 4


def test_gradient_checkpointing_recompute_is_not_a_step(make_tracker):
    import torch.utils.checkpoint as cp

    class Ckpt(Net):
        def forward(self, x):
            for b in self.blocks:
                x = cp.checkpoint(b, x, use_reentrant=False)
            return self.head(x)

    tracker, sink = make_tracker()
    net = Ckpt()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        net(torch.randn(4, 16).requires_grad_()).sum().backward()
        opt.step()
    tracker.finish()
    assert len(sink.steps()) == 3


def test_forced_flops_per_call(make_tracker):
    tracker, sink = make_tracker(count_flops="force")
    net = Net(d=16, n=1)
    x = torch.randn(8, 16)
    with torch.no_grad():
        for _ in range(3):
            net(x)
    tracker.finish()
    assert "flops" in sink.events() and "layers-skipped" in sink.events()
    fc = sink.rows("blocks.0.fc")
    assert fc and all(r["flops"] == 2 * 8 * 16 * 16 * r["calls"] for r in fc)
    assert all(r["flops"] == 2 * 8 * 16 * 4 * r["calls"] for r in sink.rows("head"))
    # another input shape: the counted FLOPs no longer apply, so none are claimed
    with torch.no_grad():
        net(torch.randn(2, 16))
        net(torch.randn(2, 16))
    tracker.finish()
    last = sink.of("layers")[-1]
    assert all(r["flops"] is None for r in last["rows"])


class FakeCudaEvent:
    """Stands in for torch.cuda.Event: completes only when the test says the GPU got there."""

    done = False
    synchronized = 0

    def __init__(self, device=None) -> None:
        self.t_ns = None

    def record(self, stream=None) -> None:
        self.t_ns = time.perf_counter_ns()

    def query(self) -> bool:
        return FakeCudaEvent.done

    def synchronize(self) -> None:
        FakeCudaEvent.synchronized += 1
        FakeCudaEvent.done = True

    def elapsed_time(self, end: FakeCudaEvent) -> float:
        assert FakeCudaEvent.done, "read before completion"
        return (end.t_ns - self.t_ns) / 1e6  # milliseconds, like CUDA


def test_cuda_event_timing_is_read_later_without_per_layer_sync(make_tracker):
    FakeCudaEvent.done = False
    FakeCudaEvent.synchronized = 0
    tracker, sink = make_tracker(event_factory=FakeCudaEvent)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        net(torch.randn(4, 16)).sum().backward()
        opt.step()
    assert len(sink.steps()) == 3
    assert sink.of("layers") == []  # events not complete yet: nothing read, nothing waited for
    assert FakeCudaEvent.synchronized == 0
    FakeCudaEvent.done = True
    net(torch.randn(4, 16)).sum().backward()
    opt.step()
    layers = sink.of("layers")
    assert len(layers) == 4 and all(m["timing"] == "cuda-events" for m in layers)
    assert FakeCudaEvent.synchronized == 0
    for m in layers:
        by = {(r["path"], r["phase"]): r for r in m["rows"]}
        assert by[("", "forward")]["time_ns"] >= by[("blocks.0", "forward")]["time_ns"] > 0
        assert by[("blocks.0", "forward")]["self_time_ns"] <= by[("blocks.0", "forward")]["time_ns"]
    assert any(r["self_time_ns"] > 0 for r in sink.rows("blocks.0.fc", "backward"))
    pooled = sum(len(p) for p in tracker._pools.values())
    assert pooled > 0  # events are reused, not created per call forever
    tracker.finish()


def test_cuda_backlog_waits_once_per_window(make_tracker):
    FakeCudaEvent.done = False
    FakeCudaEvent.synchronized = 0
    tracker, sink = make_tracker(event_factory=FakeCudaEvent)
    net = Net()
    with torch.no_grad():
        for _ in range(12):
            net(torch.randn(2, 16))
    assert FakeCudaEvent.synchronized == 1  # the backlog limit forced one wait, not one per layer
    tracker.finish()
    assert len(sink.of("layers")) == 12  # every window, the last ones flushed at finish


class DeviceCudaEvent:
    """torch.cuda.Event as far as devices go: bound to the device of the stream it is first
    recorded on (no stream: the *current* device's), refusing another device's stream or an end
    event of another device — what torch raises ("Event device … does not match …")."""

    current_device = 0
    recorded_on: list[tuple[int, int]] = []  # (event's device, stream's device)

    def __init__(self, device=None) -> None:
        self.device = None
        self.t_ns = None

    def record(self, stream=None) -> None:
        dev = stream.device if stream is not None else DeviceCudaEvent.current_device
        if self.device is not None and self.device != dev:
            raise RuntimeError(f"Event device {self.device} does not match recording stream's device {dev}")
        self.device = dev
        self.t_ns = time.perf_counter_ns()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: DeviceCudaEvent) -> float:
        if end.device != self.device:
            raise RuntimeError(f"Event device {end.device} does not match event device {self.device}")
        return (end.t_ns - self.t_ns) / 1e6


class _Stream:
    def __init__(self, device: int) -> None:
        self.device = device


def test_cuda_events_follow_the_module_device_and_pool_per_device(make_tracker):
    """Issue 16: a model on cuda:1 without set_device was timed on device 0's stream, and pooled
    events recorded on one device were reused on another ("Event device … does not match")."""
    net0, net1 = Net(), Net()
    device = {id(m): 0 for m in net0.modules()} | {id(m): 1 for m in net1.modules()}
    streams: list[int] = []

    def stream_of(dev):
        streams.append(dev)
        return _Stream(dev)

    tracker, sink = make_tracker(event_factory=DeviceCudaEvent, stream_of=stream_of,
                                 device_of=lambda m: device.get(id(m)))
    DeviceCudaEvent.current_device = 0  # the program never called torch.cuda.set_device(1)
    with torch.no_grad():
        for _ in range(6):  # alternate: events return to the pool and are reused
            net0(torch.randn(2, 16))
            net1(torch.randn(2, 16))
    tracker.finish()
    assert set(streams) == {0, 1}
    assert set(tracker._pools) == {0, 1}
    assert all(e.device == d for d, pool in tracker._pools.items() for e in pool)
    assert not [e for e in sink.of("event") if e.get("kind") == "cuda-timing-partial"]
    rows = [r for m in sink.of("layers") for r in m["rows"] if r["phase"] == "forward"]
    assert rows and all(r["time_ns"] > 0 for r in rows if r["path"] == "blocks.0")


def test_cuda_backward_events_are_recorded_on_the_owner_device(make_tracker):
    net = Net()
    streams: list[int] = []
    tracker, sink = make_tracker(event_factory=DeviceCudaEvent,
                                 stream_of=lambda d: streams.append(d) or _Stream(d),
                                 device_of=lambda m: 1)
    DeviceCudaEvent.current_device = 0
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        net(torch.randn(4, 16)).sum().backward()
        opt.step()
    tracker.finish()
    assert set(streams) == {1}
    assert any(r["self_time_ns"] > 0 for r in sink.rows("blocks.0.fc", "backward"))
