"""The in-process agent runs in the *target's* interpreter, not ours: check it on every CPython
this machine has (3.10 to 3.13; profiler/agent/README.md states the supported range).

Each interpreter, found under pyenv (``~/.pyenv/versions/3.X.*``) or on PATH as ``python3.X``,
and skipped with the reason when absent:
- compiles every agent source file (in memory: nothing is written into the repository);
- loads the agent the way the bootstrap does (the private package ``_wattlens_agent``) and
  imports each of its modules, then installs the agent's global hooks on a minimal stand-in for
  torch (these interpreters have no torch);
- under ``wattlens run``, reaches the agent's handshake: the hello names that interpreter, and
  with no torch model run the session says so in one line.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "profiler" / "agent"
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")


def _interpreter(version: str) -> str | None:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    if found:
        return found[-1]
    return shutil.which(f"python{version}")


def _python(version: str) -> str:
    path = _interpreter(version)
    if path is None:
        pytest.skip(f"no CPython {version} on this machine (looked in ~/.pyenv/versions and PATH)")
    return path


# A stand-in for torch: just the surface the agent's hook installation touches.
STAND_IN_TORCH = textwrap.dedent('''
    """A stand-in for torch (wattlens tests): records the global hooks the agent installs."""
    import sys, types
    __version__ = "0.0+stand-in"
    hooks = []

    class _Handle:
        def __init__(self, hook):
            self.hook = hook
            hooks.append(hook)

        def remove(self):
            hooks.remove(self.hook)

    def register_module_forward_pre_hook(hook):
        return _Handle(hook)

    def register_module_forward_hook(hook, *, always_call=False):
        return _Handle(hook)

    class Module:
        def __call__(self, *args, **kwargs):
            return self.forward(*args, **kwargs)

    module = types.ModuleType("torch.nn.modules.module")
    module.Module = Module
    module.register_module_forward_pre_hook = register_module_forward_pre_hook
    module.register_module_forward_hook = register_module_forward_hook
    nn = types.ModuleType("torch.nn")
    nn.modules = types.SimpleNamespace(module=module)
    _C = types.SimpleNamespace()
    sys.modules.update({"torch.nn": nn, "torch.nn.modules.module": module})
''')

LOAD_AND_HOOK = textwrap.dedent('''
    import importlib, importlib.util, os, sys
    agent_dir, stand_in = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location(
        "_wattlens_agent", os.path.join(agent_dir, "__init__.py"), submodule_search_locations=[agent_dir])
    package = importlib.util.module_from_spec(spec)
    sys.modules["_wattlens_agent"] = package
    spec.loader.exec_module(package)
    names = sorted(f[:-3] for f in os.listdir(agent_dir) if f.endswith(".py") and f != "__init__.py")
    for name in names:
        importlib.import_module("_wattlens_agent." + name)
    from _wattlens_agent import protocol
    hello = {"type": "hello", "token": "t", "protocol": protocol.PROTOCOL_VERSION, "pid": 1, "ppid": 0,
             "depth": 0, "python": sys.version.split()[0], "executable": sys.executable, "argv": [],
             "torch": None, "t_ns": 1}
    assert protocol.decode(protocol.encode(hello)) == hello
    sys.path.insert(0, stand_in)
    import torch
    from _wattlens_agent.tracker import Tracker
    sent = []
    Module = torch.nn.modules.module.Module
    original_call = Module.__call__
    for call_path in ("wrap", "hooks"):
        tracker = Tracker(torch, sent.append, lambda exc: sent.append(exc), window_ns=50_000_000,
                          count_flops="off", call_path=call_path)
        tracker.install()
        installed = len(torch.hooks) if call_path == "hooks" else int(Module.__call__ is not original_call)
        tracker.uninstall()
        restored = len(torch.hooks) if call_path == "hooks" else int(Module.__call__ is not original_call)
        print("INSTALLED", call_path, installed, restored)
    print("IMPORTED", ",".join(names))
''')


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stand_in")
    (d / "torch").mkdir()
    (d / "torch" / "__init__.py").write_text(STAND_IN_TORCH)
    return d


@pytest.mark.parametrize("version", SUPPORTED)
def test_agent_sources_compile(version):
    python = _python(version)
    code = ("import sys, pathlib\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.py')):\n"
            "    compile(p.read_text(encoding='utf-8'), str(p), 'exec', dont_inherit=True)\n"
            "print('COMPILED', sys.version_info[:2])")
    out = subprocess.run([python, "-I", "-c", code, str(AGENT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"COMPILED ({version.replace('.', ', ')})" in out.stdout


@pytest.mark.parametrize("version", SUPPORTED)
def test_agent_loads_and_installs_its_hooks_on_a_stand_in_torch(version, stand_in):
    python = _python(version)
    out = subprocess.run([python, "-I", "-B", "-c", LOAD_AND_HOOK, str(AGENT), str(stand_in)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = next(x for x in out.stdout.splitlines() if x.startswith("IMPORTED")).split()[1].split(",")
    assert {"runtime", "tracker", "transport", "protocol", "importwatch", "live", "flops"} <= set(imported)
    assert "INSTALLED wrap 1 0" in out.stdout, out.stdout  # Module.__call__ wrapped, then restored
    assert "INSTALLED hooks 2 0" in out.stdout, out.stdout  # forward pre + post installed, then removed


@pytest.mark.slow
@pytest.mark.parametrize("version", SUPPORTED)
def test_wattlens_run_reaches_the_agent_handshake_in_that_python(version, tmp_path):
    python = _python(version)
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0
    script = tmp_path / "plain.py"
    script.write_text("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: sum(range(1000))\n")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "wattlens.app", "run", "--no-gpu", "--json",
                          "--db", str(tmp_path / "w.db"), "--", python, str(script)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    notes = [n for n in summary.get("notes", []) if "layer figures" in n]
    assert len(notes) == 1, summary.get("notes")
    assert f"the agent connected to the target (Python {version}." in notes[0], notes[0]
    assert python in notes[0]
    if not has_torch:
        assert "is torch installed for that interpreter" in notes[0]
