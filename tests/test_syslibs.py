"""The desktop app's system libraries (Qt's X11 plugin): `wattlens doctor` names exactly the
missing ones with the apt/dnf line, and the app prints that one line instead of Qt's abort.
Only the OS lookups (the dynamic linker's cache, ldd) are faked."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from wattlens.app import syslibs
from wattlens.profiler.errors import WattlensError

MISSING = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}  # what the first user's Debian lacked


@pytest.fixture
def two_missing(monkeypatch):
    monkeypatch.setattr(syslibs, "system_has", lambda soname: soname not in MISSING)
    monkeypatch.setattr(syslibs, "ldd_not_found", lambda path=None: sorted(MISSING))


def test_doctor_row_lists_exactly_the_missing_libraries(two_missing, capsys):
    from wattlens.app import cli

    assert cli.main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = [c for c in doc["checks"] if c["name"].startswith("desktop app system libraries")]
    assert row["ok"] is False and set(row["missing"]) == MISSING and len(row["missing"]) == 2
    assert row["fix"].startswith("sudo apt-get install libxcb-icccm4 libxcb-keysyms1;")
    assert "sudo dnf install xcb-util-wm xcb-util-keysyms" in row["fix"]
    assert "xcb-cursor" not in row["fix"], "the cursor library is present: it is not blamed"
    assert cli.main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "✗ desktop app system libraries (Qt xcb): missing libxcb-icccm.so.4, libxcb-keysyms.so.1" in text
    assert "fix: sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in text


def test_all_present_and_unknown_soname_from_ldd():
    ok = syslibs.system_libraries_check(has=lambda s: True, not_found=lambda: [])
    assert ok["ok"] and ok["missing"] == [] and "fix" not in ok
    odd = syslibs.missing_qt_libraries(has=lambda s: True, not_found=lambda: ["libfoo.so.9"])
    assert odd.sonames == ("libfoo.so.9",) and odd.apt_packages() == []
    assert odd.install_line() == "install the packages that provide libfoo.so.9"


def test_real_doctor_json_reports_the_qt_libraries():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [c for c in json.loads(r.stdout)["checks"] if c["name"].startswith("desktop app system libraries")]
    assert row["ok"] == (row["missing"] == [])
    if row["missing"]:  # this machine lacks some: the line installs them
        assert "sudo apt-get install" in row["fix"] or "install the packages" in row["fix"]


def test_real_lookups_agree_with_ldd_on_the_plugin():
    """The linker cache lookup and ldd see the same missing known libraries on this machine."""
    plugin = syslibs._qxcb_plugin()
    if plugin is None:
        pytest.skip("PySide6 has no xcb plugin here")
    ldd_missing = set(syslibs.ldd_not_found(plugin))
    known = {lib.soname for lib in syslibs.QT_XCB_LIBRARIES}
    cache_missing = {s for s in known if not syslibs.system_has(s)}
    assert ldd_missing & known <= cache_missing


@pytest.mark.parametrize("env, xcb", [
    ({"DISPLAY": ":0"}, True),
    ({"QT_QPA_PLATFORM": "xcb"}, True),
    ({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}, False),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, False),
    ({}, False),
])
def test_uses_xcb(env, xcb):
    assert syslibs.uses_xcb(env) is xcb


def test_app_prints_the_install_line_instead_of_qt_abort(two_missing, monkeypatch):
    from wattlens.app.gui import main

    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":99")
    created = []
    monkeypatch.setattr(main, "ensure_app", lambda *a: created.append(1))
    with pytest.raises(WattlensError) as err:
        main.run_gui(db=None)
    assert not created, "checked before a QApplication exists"
    text = str(err.value)
    assert "\n" not in text and "libxcb-icccm.so.4, libxcb-keysyms.so.1" in text
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in text and "xcb-cursor" not in text
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    main.check_qt_can_start()  # offscreen needs none of them


def test_readme_lists_every_library_package():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for lib in syslibs.QT_XCB_LIBRARIES:
        assert f" {lib.apt} " in readme.replace("\\\n", " ").replace("\n", " ") + " ", lib.apt
        assert lib.dnf in readme, lib.dnf
