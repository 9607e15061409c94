"""The released package, as a user gets it: `python -m build` (sdist + wheel), `twine check`, the
wheel's file list, and the core wheel installed into a clean virtual environment without torch.

There, `wattlens --version`, `doctor`, `attach` on a torch process of *another* environment
(this test run's own interpreter, which has torch), `report`, the app (offscreen) and `run` with
an interpreter that has no torch all work, and the commands that need the `advisor` extra say in
one line what to install. Last, the issue's "Done when": an environment that already has a torch
of another version (a stand-in distribution named torch, 2.8.0: the registry serves only CUDA
builds of other torch versions for this Python, several GB with their NVIDIA libraries) installs
wattlens with its advisor extra and keeps that torch.

Slow (a build, a venv and a few hundred MB of dependencies from the pip cache or the registry);
bounded by the subprocess timeouts below. Nothing is written into the repository: the build
runs on a copy of the work tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from wattlens.app import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT_S = 1800  # a cold pip cache on a slow registry; normally a minute or two
ADVISOR_HINT = "pip install 'wattlens[advisor]'"
FAKE_TORCH_VERSION = "2.8.0"


def _run(cmd, *, timeout=600, check=True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _copy_work_tree(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files (what a clean clone plus your edits holds)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, timeout=120)
    if listed.returncode == 0:
        for rel in listed.stdout.decode().split("\0"):
            src = ROOT / rel
            if rel and src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
    else:  # not a git checkout
        shutil.copytree(ROOT, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", "build", "dist", ".git", "*.egg-info", "__pycache__", ".pytest_cache"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("src")
    _copy_work_tree(src)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, src], timeout=PIP_TIMEOUT_S)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


# ---- the built distributions -----------------------------------------------------------------
def test_build_names_the_distributions_by_the_one_version(dist):
    assert dist["wheel"].name == f"wattlens-{__version__}-py3-none-any.whl"
    assert dist["sdist"].name == f"wattlens-{__version__}.tar.gz"


def test_twine_check_passes(dist):
    pytest.importorskip("twine", reason="twine is in the dev extra: pip install -e '.[dev]'")
    out = _run([sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"]])
    assert out.stdout.count("PASSED") == 2, out.stdout


def test_wheel_ships_the_resources_and_the_agent_bootstrap_and_no_tests(dist):
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    for needed in ("wattlens/resources/cpu_tdp.json", "wattlens/resources/wattlens.svg",
                   "wattlens/profiler/agent/bootstrap/sitecustomize.py",
                   "wattlens/profiler/store/migrations/versions/0001_baseline.py",  # loaded from source
                   "wattlens/app/_version.py", f"wattlens-{__version__}.dist-info/licenses/LICENSE"):
        assert needed in names, needed
    # every agent module the target's interpreter loads from source
    agent = sorted(p.name for p in (ROOT / "profiler" / "agent").glob("*.py"))
    assert agent == sorted(n.rsplit("/", 1)[1] for n in names
                           if n.startswith("wattlens/profiler/agent/") and n.count("/") == 3)
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"wattlens", f"wattlens-{__version__}.dist-info"}, tops
    stray = [n for n in names if any(part in n.split("/") for part in
                                     ("tests", "benchmarks", "scripts", "packaging", "docs"))]
    assert not stray, stray


def test_wheel_metadata_keeps_torch_in_the_advisor_extra(dist):
    with zipfile.ZipFile(dist["wheel"]) as z:
        meta = z.read(f"wattlens-{__version__}.dist-info/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    advisor = [r for r in requires if 'extra == "advisor"' in r]
    assert core and not any(r.lower().startswith(("torch", "transformers")) for r in core), core
    assert {r.split("<")[0].split(">")[0].strip() for r in advisor} == {"torch", "transformers", "torchao"}
    assert "License-Expression: Apache-2.0" in meta and f"Version: {__version__}" in meta


def test_sdist_carries_the_license_and_the_version_source(dist):
    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "app/_version.py", "README.md"} <= names


# ---- the core wheel in a clean venv without torch ------------------------------------------------
class Venv:
    def __init__(self, path: Path):
        self.path = path
        self.python = path / "bin" / "python"
        self.wattlens = path / "bin" / "wattlens"

    def pip(self, *args, check=True) -> subprocess.CompletedProcess:
        return _run([self.python, "-m", "pip", *args], timeout=PIP_TIMEOUT_S, check=check)

    def torch_version(self) -> str | None:
        out = _run([self.python, "-c", "import importlib.util as u\n"
                    "print(__import__('torch').__version__ if u.find_spec('torch') else None)"])
        version = out.stdout.strip()
        return None if version == "None" else version


@pytest.fixture(scope="module")
def core(dist, tmp_path_factory) -> Venv:
    venv = Venv(tmp_path_factory.mktemp("core") / "venv")
    _run([sys.executable, "-m", "venv", venv.path])
    venv.pip("install", "-q", dist["wheel"])
    return venv


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
    """A throwaway database and data dir: the test never touches the user's own store."""
    return {**os.environ, "WATTLENS_DB": str(tmp_path / "w.db"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "QT_QPA_PLATFORM": "offscreen", "QT_LOGGING_RULES": "qt.qpa.*=false"}


def test_core_install_has_no_torch_and_tells_its_version(core):
    assert core.torch_version() is None
    listed = core.pip("list", "--format=json").stdout
    names = {d["name"].lower() for d in json.loads(listed)}
    assert "wattlens" in names and not names & {"torch", "transformers", "torchao", "triton"}, names
    out = _run([core.wattlens, "--version"])
    assert out.stdout.strip() == f"wattlens {__version__}"


def test_core_doctor_runs(core, env):
    out = _run([core.wattlens, "doctor", "--json"], env=env)
    doc = json.loads(out.stdout)
    assert doc["usable"], doc  # the CPU model at least
    assert {"usable", "unavailable", "checks"} <= set(doc)


def test_core_attaches_to_a_torch_process_of_another_env_reports_and_advises(core, env, tmp_path):
    # the target: this test run's interpreter (the dev environment, with torch) running a loop
    target = subprocess.Popen([sys.executable, str(ROOT / "tests" / "workloads" / "torch_loop.py"), "120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        out = _run([core.wattlens, "attach", target.pid, "--duration", "3", "--no-gpu", "--json"],
                   env=env, timeout=300)
    finally:
        target.kill()
        target.wait()
    summary = json.loads(out.stdout)
    sid = summary["session_id"]
    assert summary["sources"] and summary["duration_s"] > 0
    for fmt in ("md", "html", "json"):
        path = tmp_path / f"report.{fmt}"
        rep = _run([core.wattlens, "report", sid, "--format", fmt, "-o", path], env=env, timeout=300)
        assert path.stat().st_size > 0, rep.stderr
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["session"]["id"] == sid
    # advise (rules + scikit-learn regressions, both in the core) on the same session
    advice = json.loads(_run([core.wattlens, "advise", sid, "--json"], env=env, timeout=300).stdout)
    assert isinstance(advice, (dict, list))
    # the core has no torch of its own; nothing above needed one
    assert core.torch_version() is None


def test_core_app_opens_offscreen(core, env, tmp_path):
    out = _run([core.wattlens, "gui", "--db", tmp_path / "gui.db"], timeout=300,
               env={**env, "WATTLENS_GUI_EXIT_AFTER_PAINT": "1",
                    "WATTLENS_SETTINGS": str(tmp_path / "settings.ini")})
    assert "first-paint-monotonic=" in out.stderr


def test_core_run_with_a_python_without_torch_reaches_the_agent_and_says_why_no_layers(core, env, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.5: sum(range(1000))\n")
    out = _run([core.wattlens, "run", "--no-gpu", "--json", "--", core.python, script], env=env, timeout=300)
    summary = json.loads(out.stdout)
    notes = [n for n in summary.get("notes", []) if "layer figures" in n]
    assert len(notes) == 1, summary.get("notes")
    # the agent connected (its hello named the interpreter) and says why there is nothing to time
    assert f"Python {sys.version.split()[0]}" in notes[0] and "saw no torch model" in notes[0]


@pytest.mark.parametrize("argv", [["optimize", "{model}", "--action", "bf16", "--out", "{out}"],
                                  ["demo", "--headless", "--duration", "1"]])
def test_core_commands_that_need_the_advisor_extra_say_what_to_install(core, env, tmp_path, argv):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    argv = [a.format(model=model, out=tmp_path / "out") for a in argv]
    out = _run([core.wattlens, *argv], env=env, check=False, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattlens: error: "), out.stderr
    assert ADVISOR_HINT in lines[0] and "internal error" not in lines[0]
    assert not (tmp_path / "out").exists()


# ---- Done when: an environment with another torch keeps it ------------------------------------
def _fake_torch_wheel(directory: Path, version: str) -> Path:
    """A minimal, valid wheel of a distribution named torch: stands in for a user's own torch."""
    name = f"torch-{version}"
    wheel = directory / f"{name}-py3-none-any.whl"
    files = {
        "torch/__init__.py": f'__version__ = "{version}"\n',
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
                                       "Summary: stand-in for a user's own torch (wattlens tests)\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: wattlens-tests\n"
                                    "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}.dist-info/RECORD", "".join(f"{p},,\n" for p in files) + f"{name}.dist-info/RECORD,,\n")
    return wheel


def test_an_env_with_another_torch_installs_wattlens_and_keeps_its_torch(core, dist, tmp_path):
    """Runs last in this file: it changes the venv (a torch and the advisor extra arrive)."""
    core.pip("uninstall", "-y", "wattlens")
    core.pip("install", _fake_torch_wheel(tmp_path, FAKE_TORCH_VERSION))
    before = core.torch_version()
    assert before == FAKE_TORCH_VERSION

    installs = {}
    for label, req in (("core", f"{dist['wheel']}"), ("advisor", f"wattlens[advisor] @ {dist['wheel'].as_uri()}")):
        installs[label] = core.pip("install", req)
        print(f"--- pip install {req}\n{installs[label].stdout}", file=sys.stderr)
    after = core.torch_version()
    print(f"torch.__version__ before: {before}, after: {after}", file=sys.stderr)
    assert after == before == FAKE_TORCH_VERSION
    for label, out in installs.items():
        installed = next((line for line in out.stdout.splitlines() if line.startswith("Successfully installed")), "")
        assert " torch-" not in installed, f"{label}: {installed}"
        assert "Collecting torch\n" not in out.stdout and "Downloading torch-" not in out.stdout, out.stdout
    assert "Requirement already satisfied: torch" in installs["advisor"].stdout, installs["advisor"].stdout
    names = {d["name"].lower() for d in json.loads(core.pip("list", "--format=json").stdout)}
    assert {"wattlens", "transformers", "torchao"} <= names
    out = _run([core.wattlens, "--version"])
    assert out.stdout.strip() == f"wattlens {__version__}"
    assert core.torch_version() == FAKE_TORCH_VERSION
