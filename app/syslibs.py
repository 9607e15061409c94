"""The system libraries the desktop app needs on X11 (Qt's xcb platform plugin), which are missing,
and the one package-manager line that installs them.

Qt itself, when one of them is missing, aborts with a message that names ``xcb-cursor0`` whatever
is actually missing; this module answers from the truth instead: the known dependency list of
Qt 6's xcb plugin (``ldconfig -p``), plus whatever ``ldd`` says the installed PySide6's
``libqxcb.so`` cannot resolve. Both lookups are the OS boundary and can be replaced (tests).

No Qt import here: this runs before a QApplication exists (and from ``wattlens doctor``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class SystemLibrary:
    soname: str
    apt: str  # Debian / Ubuntu package
    dnf: str  # Fedora / RHEL package


# Qt 6 xcb platform plugin dependencies (Qt's "X11 requirements" page, and `ldd libqxcb.so`).
QT_XCB_LIBRARIES: tuple[SystemLibrary, ...] = (
    SystemLibrary("libxcb.so.1", "libxcb1", "libxcb"),
    SystemLibrary("libX11.so.6", "libx11-6", "libX11"),
    SystemLibrary("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
    SystemLibrary("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    SystemLibrary("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    SystemLibrary("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    SystemLibrary("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    SystemLibrary("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    SystemLibrary("libxcb-render.so.0", "libxcb-render0", "libxcb"),
    SystemLibrary("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    SystemLibrary("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    SystemLibrary("libxcb-shm.so.0", "libxcb-shm0", "libxcb"),
    SystemLibrary("libxcb-sync.so.1", "libxcb-sync1", "libxcb"),
    SystemLibrary("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
    SystemLibrary("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb"),
    SystemLibrary("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    SystemLibrary("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
    SystemLibrary("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    SystemLibrary("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
    SystemLibrary("libGL.so.1", "libgl1", "libglvnd-glx"),
    SystemLibrary("libEGL.so.1", "libegl1", "libglvnd-egl"),
    SystemLibrary("libdbus-1.so.3", "libdbus-1-3", "dbus-libs"),
)
_BY_SONAME = {lib.soname: lib for lib in QT_XCB_LIBRARIES}


@lru_cache(maxsize=1)
def _ldconfig_sonames() -> frozenset[str] | None:
    """The sonames in the dynamic linker's cache (``ldconfig -p``); None when it cannot be read."""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(m.group(1) for m in re.finditer(r"^\s*(\S+)\s+\(", out, re.MULTILINE))


def system_has(soname: str) -> bool:
    """Whether the dynamic linker can find ``soname`` (ldconfig's cache, else ctypes.util)."""
    names = _ldconfig_sonames()
    if names is not None:
        return soname in names
    import ctypes.util

    stem = soname[3:].split(".so")[0] if soname.startswith("lib") else soname
    return ctypes.util.find_library(stem) is not None


def _qxcb_plugin() -> str | None:
    """The installed PySide6's xcb platform plugin, found without importing Qt."""
    import importlib.util

    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "Qt", "plugins", "platforms", "libqxcb.so")
        if os.path.exists(path):
            return path
    return None


def ldd_not_found(path: str | None = None) -> list[str]:
    """The sonames ``ldd`` reports "not found" for Qt's xcb plugin ([] when ldd or the plugin is absent)."""
    path = path or _qxcb_plugin()
    exe = shutil.which("ldd")
    if not path or not exe:
        return []
    try:
        out = subprocess.run([exe, path], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+)\s+=>\s+not found", out, re.MULTILINE)})


@dataclass(frozen=True)
class MissingLibraries:
    sonames: tuple[str, ...]  # missing, in the known list's order, then unknown ones

    @property
    def ok(self) -> bool:
        return not self.sonames

    def apt_packages(self) -> list[str]:
        return _unique(_BY_SONAME[s].apt for s in self.sonames if s in _BY_SONAME)

    def dnf_packages(self) -> list[str]:
        return _unique(_BY_SONAME[s].dnf for s in self.sonames if s in _BY_SONAME)

    def install_line(self) -> str:
        """``sudo apt-get install …`` (Debian/Ubuntu), then the dnf equivalent (Fedora)."""
        parts = []
        if self.apt_packages():
            parts.append(f"sudo apt-get install {' '.join(self.apt_packages())}")
            parts.append(f"on Fedora: sudo dnf install {' '.join(self.dnf_packages())}")
        unknown = [s for s in self.sonames if s not in _BY_SONAME]
        if unknown:
            parts.append(f"install the packages that provide {', '.join(unknown)}")
        return "; ".join(parts)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def missing_qt_libraries(has: Callable[[str], bool] | None = None,
                         not_found: Callable[[], list[str]] | None = None) -> MissingLibraries:
    """Which of Qt's X11 libraries are missing here. ``has`` / ``not_found`` replace the OS lookups."""
    has = has or system_has
    not_found = not_found or ldd_not_found
    missing = [lib.soname for lib in QT_XCB_LIBRARIES if not has(lib.soname)]
    extra = [s for s in not_found() if s not in missing]
    return MissingLibraries(tuple(missing + extra))


def uses_xcb(environ=None) -> bool:
    """Whether Qt would pick its xcb (X11) platform plugin in this environment."""
    env = os.environ if environ is None else environ
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0].split(";")[0].strip() == "xcb"
    if env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland":
        return False
    return bool(env.get("DISPLAY"))


def system_libraries_check(has=None, not_found=None) -> dict:
    """The `wattlens doctor` row for the app's system libraries."""
    name = "desktop app system libraries (Qt xcb)"
    found = missing_qt_libraries(has, not_found)
    if found.ok:
        return {"name": name, "ok": True, "detail": f"all {len(QT_XCB_LIBRARIES)} found", "missing": []}
    return {"name": name, "ok": False, "detail": "missing " + ", ".join(found.sonames),
            "fix": found.install_line(), "missing": list(found.sonames)}
