"""The desktop package: desktop entry, AppStream metainfo, icon, PyInstaller spec, package data.

Cheap checks that run everywhere without building the bundle. The bundle build and its smoke
test (packaging/build.sh, minutes and a few hundred MB) run only with WATTLENS_BUILD_BUNDLE=1.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
APP_ID = "io.github.wattlens.Wattlens"
DESKTOP = PACKAGING / f"{APP_ID}.desktop"
METAINFO = PACKAGING / f"{APP_ID}.metainfo.xml"
ICON = ROOT / "resources" / "wattlens.svg"
SPEC = PACKAGING / "wattlens.spec"
SVG_NS = "{http://www.w3.org/2000/svg}"


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # desktop-entry keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


# ---- desktop entry ------------------------------------------------------------------------------
def test_desktop_entry_launches_the_gui_with_the_app_icon():
    entry = _desktop_entry()
    assert entry["Type"] == "Application"
    assert entry["Name"] == "wattlens"
    assert entry["Comment"]
    assert entry["Exec"] == "wattlens gui"
    assert entry["TryExec"] == "wattlens"
    assert entry["Icon"] == APP_ID
    assert entry["Terminal"] == "false"
    categories = entry["Categories"].rstrip(";").split(";")
    assert {"Development", "Profiling"} <= set(categories)
    assert entry["Keywords"].endswith(";")


def test_desktop_entry_command_is_the_installed_script():
    script = _desktop_entry()["Exec"].split()[0]
    assert script in _pyproject()["project"]["scripts"], script


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate not installed (apt-get install desktop-file-utils)")
def test_desktop_entry_passes_desktop_file_validate():
    out = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


# ---- AppStream metainfo --------------------------------------------------------------------------
def test_metainfo_describes_the_desktop_application():
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("metadata_license") == "CC0-1.0"
    assert root.findtext("project_license") == _pyproject()["project"]["license"]
    assert root.findtext("name") == "wattlens"
    summary = root.findtext("summary")
    assert summary and len(summary) <= 80 and not summary.endswith(".")
    assert root.find("description/p") is not None
    launchable = root.find("launchable")
    assert launchable.get("type") == "desktop-id" and launchable.text == DESKTOP.name
    assert [b.text for b in root.findall("provides/binary")] == ["wattlens"]
    assert root.find("content_rating").get("type") == "oars-1.1"


def test_metainfo_release_is_the_package_version():
    from wattlens.app import __version__

    versions = [r.get("version") for r in ET.parse(METAINFO).getroot().findall("releases/release")]
    assert versions and versions[0] == __version__


def test_metainfo_screenshot_is_the_live_view_from_docs():
    images = [img.text for img in ET.parse(METAINFO).getroot().findall("screenshots/screenshot/image")]
    assert images and images[0].startswith("https://")
    assert images[0].endswith("/docs/screenshots/live.png")


@pytest.mark.skipif(shutil.which("appstreamcli") is None,
                    reason="appstreamcli not installed (apt-get install appstream)")
def test_metainfo_passes_appstreamcli_validate():
    out = subprocess.run(["appstreamcli", "validate", "--no-net", str(METAINFO)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- icon -----------------------------------------------------------------------------------------
def test_icon_is_a_square_svg_document():
    root = ET.parse(ICON).getroot()
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("viewBox") == "0 0 256 256"
    assert root.get("width") == root.get("height") == "256"
    # self-contained: no external images or fonts a desktop might not have
    assert root.find(f".//{SVG_NS}image") is None
    assert root.find(f".//{SVG_NS}text") is None


def test_icon_renders_at_small_and_large_sizes(qapp):
    QtSvg = pytest.importorskip("PySide6.QtSvg")
    from PySide6.QtGui import QImage, QPainter

    renderer = QtSvg.QSvgRenderer(str(ICON))
    assert renderer.isValid()
    for size in (48, 256):
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(0)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        centre = image.pixelColor(int(size * 108 / 256), int(size * 108 / 256))  # lens centre
        corner = image.pixelColor(size - 1, 0)
        assert centre.alpha() == 255, f"lens not drawn at {size} px"
        assert corner.alpha() == 0, f"background not transparent at {size} px"


# ---- PyInstaller spec and entry -------------------------------------------------------------------
def _spec_assignments() -> dict[str, object]:
    """The spec's top-level constant assignments (it is Python run by PyInstaller)."""
    found = {}
    for node in ast.parse(SPEC.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


def test_spec_entry_point_is_the_console_script():
    consts = _spec_assignments()
    assert consts["ENTRY_POINT"] == _pyproject()["project"]["scripts"]["wattlens"] == "wattlens.app.cli:main"
    entry_script = (PACKAGING / "wattlens_entry.py").read_text()
    assert "from wattlens.app.cli import main" in entry_script
    assert "wattlens_entry.py" in SPEC.read_text()


def test_spec_collects_every_wattlens_package_and_leaves_torch_out():
    consts = _spec_assignments()
    package_dirs = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert sorted(consts["WATTLENS_PACKAGES"]) == sorted(package_dirs)
    excludes = set(consts["EXCLUDES"])
    assert {"torch", "transformers", "triton", "nvidia"} <= excludes
    kept = {"PySide6", "pyqtgraph", "numpy", "sqlalchemy", "psutil", "platformdirs", "pynvml",
            "sklearn", "scipy", "matplotlib"}
    assert not kept & excludes


def test_bundle_leaves_out_exactly_the_advisor_extra():
    """The bundle is the core install: what it leaves out is what the `advisor` extra adds, and
    the core dependencies (which build.sh installs into the bundle's venv) have none of it."""
    project = _pyproject()["project"]
    names = {req.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
             for req in project["optional-dependencies"]["advisor"]}
    assert names == {"torch", "transformers", "torchao"}
    assert names <= set(_spec_assignments()["EXCLUDES"])
    core = " ".join(project["dependencies"]).lower()
    assert not any(name in core for name in names), project["dependencies"]


def test_build_script_is_valid_bash():
    out = subprocess.run(["bash", "-n", str(PACKAGING / "build.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_bundle_without_torch_fails_in_one_line_that_says_to_use_pip(tmp_path):
    """The bundle's runtime hook, with torch made absent the way the bundle has it: a command
    that needs torch exits 2 (a missing extra) with one `wattlens: error:` line naming the pip
    extra, not an internal error, and a probe `try: import torch / except ImportError` works."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import runpy, sys
        runpy.run_path({str(PACKAGING / "pyi_rth_wattlens_no_torch.py")!r})
        # In the bundle torch is simply not there, so the hook's finder (appended last) is the
        # one that answers; here torch is installed, so put the finder first to stand in for that.
        sys.meta_path.insert(0, sys.meta_path.pop())
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("probe import of transformers did not raise ImportError")
        from wattlens.app import cli

        def needs_torch(args):
            import torch  # noqa: F401
            return 0

        cli.COMMANDS["doctor"] = needs_torch
        sys.exit(cli.main(["doctor"]))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("wattlens: error: ") and "internal error" not in lines[0]
    assert "pip install 'wattlens[advisor]'" in lines[0]
    assert out.stdout == ""


# ---- package data ---------------------------------------------------------------------------------
def test_resources_are_found_through_importlib_resources():
    package = resources.files("wattlens.resources")
    assert package.joinpath("cpu_tdp.json").is_file()
    svg = package.joinpath("wattlens.svg")
    assert svg.is_file()
    assert ET.fromstring(svg.read_bytes()).tag == f"{SVG_NS}svg"


def test_every_resource_file_is_covered_by_the_package_data_globs():
    """An editable install finds files in the source folder whatever pyproject says; a wheel
    ships only what the package-data globs match. Check that they match every resource."""
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["wattlens.resources"]
    resource_dir = ROOT / _pyproject()["tool"]["setuptools"]["package-dir"]["wattlens.resources"]
    data_files = [p.name for p in resource_dir.iterdir()
                  if p.is_file() and p.suffix not in {".py", ".pyc"}]
    assert {"cpu_tdp.json", "wattlens.svg"} <= set(data_files)
    missed = [name for name in data_files if not any(fnmatch.fnmatch(name, g) for g in globs)]
    assert not missed, f"not installed by pip (add to package-data): {missed}"


# ---- the real bundle (slow, opt-in) ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WATTLENS_BUILD_BUNDLE") != "1",
                    reason="builds the PyInstaller bundle (minutes, network); set WATTLENS_BUILD_BUNDLE=1")
def test_bundle_builds_and_passes_its_smoke_test():
    out = subprocess.run(["bash", str(PACKAGING / "build.sh")], capture_output=True, text=True,
                         timeout=3600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert (ROOT / "dist" / "wattlens" / "wattlens").is_file()
    assert "smoke test passed" in out.stderr


# ---- version and the advisor extra in the CLI ----------------------------------------------------
def test_version_is_written_once_and_the_cli_tells_it(capsys):
    from wattlens.app import __version__
    from wattlens.app.cli import main

    assert "version" not in _pyproject()["project"] and "version" in _pyproject()["project"]["dynamic"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wattlens {__version__}"


@pytest.mark.parametrize("module", ["torch", "transformers.models", "torchao.quantization"])
def test_a_missing_advisor_module_is_one_line_naming_the_extra(monkeypatch, capsys, module):
    from wattlens.app import cli

    def needs_it(args):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setitem(cli.COMMANDS, "doctor", needs_it)
    assert cli.main(["doctor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wattlens: error: `wattlens doctor` needs {module.split('.')[0]}, which is not "
                   "installed here — install the advisor extra: pip install 'wattlens[advisor]'"]


def test_another_missing_module_stays_an_internal_error(monkeypatch, capsys):
    from wattlens.app import cli

    def needs_it(args):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    monkeypatch.setitem(cli.COMMANDS, "doctor", needs_it)
    monkeypatch.delenv("WATTLENS_DEBUG", raising=False)
    assert cli.main(["doctor"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_pyspy_is_found_in_the_user_scripts_folder(tmp_path, monkeypatch):
    """`pip install --user wattlens` puts py-spy beside the `wattlens` script (~/.local/bin), which
    may not be on PATH and is not beside the interpreter: attach and doctor still find it."""
    import sysconfig

    from wattlens.app.doctor import _pyspy_check
    from wattlens.profiler.stacks import sampler

    user_bin, python_bin = tmp_path / "user-bin", tmp_path / "python-bin"
    user_bin.mkdir()
    python_bin.mkdir()
    pyspy = user_bin / "py-spy"
    pyspy.write_text("#!/bin/sh\n")
    pyspy.chmod(0o755)
    real_get_path = sysconfig.get_path
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sampler.sys, "executable", str(python_bin / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None, *a, **kw:
                        str(user_bin) if (name, scheme) == ("scripts", f"{os.name}_user")
                        else real_get_path(name, scheme, *a, **kw))
    assert sampler.find_pyspy() == str(pyspy)
    assert _pyspy_check()["detail"].startswith(f"found at {pyspy}")
    pyspy.unlink()
    assert sampler.find_pyspy() is None
    assert _pyspy_check()["detail"] == "py-spy not found"
