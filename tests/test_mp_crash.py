"""A multiprocessing child that ends by an exception is a crash, as a main program's is.

multiprocessing's ``BaseProcess._bootstrap`` catches what the child's ``run()`` raises (prints it,
exit code 1) and torch.multiprocessing.spawn's ``_wrap`` catches what the worker function raises
(writes its traceback for the parent, ``sys.exit(1)``): Python sets no ``sys.last_exc`` in the
child, so before the agent observed ``run()`` the step the crash cut short was counted (6 where 5
ran, 11 where 10 ran) and the session said nothing of the crash.
"""

import json
import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import WORKLOADS, run_cli
from wattlens.profiler.store import Store

NOT_COUNTED = "; the step it was in is not counted"


def _run(tmp_path, *args):
    db = tmp_path / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / "mp_crash.py"), *args,
                timeout=600)
    assert r.returncode == 1, r.stderr  # the child's exit code 1 reaches the command's
    doc = json.loads(r.stdout)
    return db, doc, r.stderr


def _agent_frames(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "_wattlens_agent" in line or "profiler/agent/" in line]


@pytest.mark.parametrize("args, count, said", [
    (["5"], 5, NOT_COUNTED),  # raised in step 5's backward: that step is not counted
    (["5", "--after"], 5, ", after 5 step(s)"),  # every step done, then raised
])
def test_a_multiprocessing_child_that_raises_is_a_crash_of_that_child(tmp_path, args, count, said):
    db, doc, stderr = _run(tmp_path, "process", *args)
    (child_pid,) = re.findall(r"^child pid (\d+)$", stderr, re.M)
    assert doc["steps"]["count"] == count
    uncaught = [n for n in doc["notes"] if "uncaught" in n]
    assert uncaught == [f"the process with PID {child_pid} ended with an uncaught RuntimeError: simulated crash "
                        f"in the child{' while saving' if '--after' in args else ', step 5' + chr(39) + 's backward'}"
                        f"{said}"], doc["notes"]
    assert not [n for n in doc["notes"] if "goodbye" in n or (child_pid in n and n not in uncaught)]
    (bye,) = [e for e in Store(db).events(doc["session_id"])
              if e.kind == "agent-disconnected" and e.data.get("pid") == int(child_pid)]
    assert bye.data["clean"] is True and bye.data["error"].startswith("RuntimeError: simulated crash in the child")
    # multiprocessing still printed the child's traceback, as without wattlens (no agent frame in it)
    assert "Process SpawnProcess-1:" in stderr and "RuntimeError: simulated crash in the child" in stderr
    if sys.version_info >= (3, 11):
        assert _agent_frames(stderr) == []


def test_a_torch_spawn_worker_that_raises_is_named_by_its_rank(tmp_path):
    db, doc, stderr = _run(tmp_path, "spawn", "5")
    assert doc["steps"]["count"] == 10  # rank 0's 5 and rank 1's 5 (their hellos have no rank: summed)
    uncaught = [n for n in doc["notes"] if "uncaught" in n]
    assert len(uncaught) == 1, doc["notes"]
    assert re.fullmatch(r"rank 1 \(PID \d+\) ended with an uncaught RuntimeError: simulated crash in rank 1, "
                        r"step 5's backward" + re.escape(NOT_COUNTED), uncaught[0]), uncaught
    assert not [n for n in doc["notes"] if "goodbye" in n or "rank 0" in n]
    byes = [e for e in Store(db).events(doc["session_id"]) if e.kind == "agent-disconnected"]
    errors = [e.data["error"] for e in byes if e.data.get("error")]
    # rank 1's, and the parent's (spawn re-raises it there; the parent ran no model, so no note)
    assert sorted(err.split(":")[0] for err in errors) == ["ProcessRaisedException", "RuntimeError"], errors
    # torch still handed the worker's traceback to the parent, which raised it
    assert "-- Process 1 terminated with the following error:" in stderr
    assert "RuntimeError: simulated crash in rank 1, step 5's backward" in stderr
    if sys.version_info >= (3, 11):
        assert _agent_frames(stderr) == []


def test_a_forked_child_is_not_profiled_and_leaves_the_parents_session_as_it_was(tmp_path):
    """A fork-start child drops its copy of the agent's connection at once (it never says hello, so
    no goodbye is owed; os._exit ends it without atexit): the parent's 5 steps are the session's,
    and nothing is noted of the child, whose steps were never counted."""
    db, doc, stderr = _run(tmp_path, "fork", "5")
    assert doc["steps"]["count"] == 5
    assert not [n for n in doc["notes"] if "uncaught" in n or "goodbye" in n], doc["notes"]
    hellos = [e for e in Store(db).events(doc["session_id"]) if e.kind == "agent-hello"]
    assert len({e.data["pid"] for e in hellos}) == 1  # the parent only
    assert "RuntimeError: simulated crash in the child" in stderr


OBSERVE = r"""
import multiprocessing, multiprocessing.process, multiprocessing.util, sys
import torch.multiprocessing as tmp
from wattlens.profiler.agent import runtime

runtime.observe_process_children(multiprocessing.process)
runtime.observe_process_children(multiprocessing.process)  # once only

def report(case):  # in the child, after run() (multiprocessing's exit function runs it)
    multiprocessing.util.Finalize(None, lambda: print(case, runtime.uncaught_exception(), flush=True),
                                  exitpriority=10)

def raises(case):
    report(case)
    raise ValueError("boom \x1b[2J")

def exits(case):
    report(case)
    sys.exit(3)

def returns(case):
    report(case)

class Own(multiprocessing.Process):
    def run(self):
        report("subclass")
        {}["k"]

def fn_raises(i, case):
    report(case)
    raise RuntimeError(f"worker {i}")

def fn_interrupted(i, case):
    report(case)
    raise KeyboardInterrupt  # _wrap takes it for the parent's SIGINT: exit code 0

def fn_exits_from_except(i, case):
    report(case)
    try:
        {}["k"]
    except KeyError:
        sys.exit(2)  # the function's own exit, with a __context__: not _wrap's

ctx = multiprocessing.get_context("fork")
for target in (raises, exits, returns):
    p = ctx.Process(target=target, args=(target.__name__,))
    p.start(); p.join(); print("exitcode", target.__name__, p.exitcode, flush=True)
p = Own(); p.start(); p.join(); print("exitcode subclass", p.exitcode, flush=True)
for fn in (fn_raises, fn_interrupted, fn_exits_from_except):
    pc = tmp.start_processes(fn, args=(fn.__name__,), nprocs=1, join=False, start_method="fork")
    try:
        while not pc.join():
            pass
    except Exception as exc:
        print("parent saw", type(exc).__name__, flush=True)
        sys.stderr.write(f"{exc}\n")  # what the worker's _wrap handed over
    print("exitcode", fn.__name__, pc.processes[0].exitcode, flush=True)
print("main", runtime.uncaught_exception(), flush=True)
"""


def test_the_observer_sees_what_ended_a_child_and_changes_nothing_it_does(tmp_path):
    script = tmp_path / "observe.py"
    script.write_text(textwrap.dedent(OBSERVE))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert sorted(out) == sorted([
        "raises ValueError: boom [2J", "exitcode raises 1",  # printable text
        "exits None", "exitcode exits 3",  # SystemExit is an exit, not a crash
        "returns None", "exitcode returns 0",
        "subclass KeyError: 'k'", "exitcode subclass 1",  # a subclass's own run() is observed too
        "fn_raises RuntimeError: worker 0", "parent saw ProcessRaisedException", "exitcode fn_raises 1",
        "fn_interrupted None", "exitcode fn_interrupted 0",
        "fn_exits_from_except None", "parent saw ProcessExitedException", "exitcode fn_exits_from_except 2",
        "main None",  # the parent: nothing ended it
    ]), (out, r.stderr[-3000:])
    # multiprocessing printed the tracebacks as it would have; torch sent its worker's to the parent
    assert "Process ForkProcess-1:" in r.stderr and "ValueError: boom" in r.stderr
    assert "KeyError: 'k'" in r.stderr and "RuntimeError: worker 0" in r.stderr
    if sys.version_info >= (3, 11):
        assert _agent_frames(r.stderr) == []
