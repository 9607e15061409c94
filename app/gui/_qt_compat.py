"""A guard against reference-count bugs in the installed Qt binding.

PySide6-Essentials 6.12.0 (the ``cp310-abi3`` wheel) drops a reference it does not own in two
places: every C++ method returning ``void`` hands back ``None`` without a new reference, and the
value a Python slot returns is released once too often. On CPython 3.12+ ``None``, ``True`` and
``False`` are immortal (PEP 683) and nothing happens; on CPython 3.10/3.11 their reference counts
fall with every such call (``label.setText``, ``curve.setData``, pyqtgraph's slots returning
``True`` ...) and after a few thousand the interpreter aborts with "none_dealloc: deallocating
None" or "bool_dealloc".

``protect_singletons()`` detects each bug with a probe (100 calls on a throw-away QObject) and,
only where a count really drops, raises the reference count of ``None`` / ``True`` / ``False`` by
2**60 — making them as good as immortal, which is what CPython 3.12 does by design. These are
static objects that are never freed, so the only effect is that the fatal check cannot trigger.
Our own slots return None (other objects returned from a slot would be released early).
"""

from __future__ import annotations

import gc
import logging
import sys

log = logging.getLogger("wattlens.gui")
_BOOST = 1 << 60
_state: dict[str, tuple[str, ...]] = {}


def _drop(obj, action, n: int = 100) -> int:
    gc.collect()
    before = sys.getrefcount(obj)
    for _ in range(n):
        action()
    return before - sys.getrefcount(obj)


def leaking_singletons() -> tuple[str, ...]:
    """Which of None/True/False the binding under-references (empty when the bug is absent)."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    probe.ping.connect(lambda: True)
    leaks = []
    if _drop(None, lambda: probe.setObjectName("probe")) >= 90:
        leaks.append("None")
    if _drop(True, probe.ping.emit) >= 90:
        leaks += ["True", "False"]
    probe.deleteLater()
    return tuple(leaks)


def protect_singletons() -> tuple[str, ...]:
    """Apply the guard once per process where needed; returns what was protected."""
    if "protected" in _state:
        return _state["protected"]
    protected: tuple[str, ...] = ()
    if sys.implementation.name == "cpython" and sys.version_info < (3, 12):
        protected = leaking_singletons()
        if protected:
            import ctypes

            singletons = {"None": None, "True": True, "False": False}
            for name in protected:
                refcnt = ctypes.c_ssize_t.from_address(id(singletons[name]))
                if refcnt.value < _BOOST:
                    refcnt.value += _BOOST
            import PySide6

            log.info("PySide6 %s under-references %s on Python %s; made them effectively immortal "
                     "to prevent a crash", PySide6.__version__, "/".join(protected), sys.version.split()[0])
    _state["protected"] = protected
    return protected
