"""How log records reach the terminal: wattlens's own as ``wattlens: …``, a library's under its own
name, and the import-time notices of libraries that say nothing about the user's run shown only
with ``WATTLENS_DEBUG=1``.

Why: loading a model imports transformers, which imports torchao; torchao then logs that its
prebuilt kernels for CUDA or for another CPython could not load, and torch that two of torchao's
enums use a deprecated registration. Printed as ``wattlens: Failed to load …`` they read as
wattlens failing, before a command has done anything. The notices below are the ones known to be
harmless (wattlens checks what each action needs and refuses in one line when it is missing, e.g.
``quantize-int4`` without CUDA); anything else a library logs is shown, named as that library's.
"""

from __future__ import annotations

import logging
import os
import sys

# (logger name, message start): import-time notices of libraries, about kernels or registrations
# that no wattlens path needs
KNOWN_NOTICES: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load "),  # torchao's prebuilt CUDA / other-CPython kernels
    ("torchao.kernel.intmm", "Warning: Detected no triton"),  # triton kernels: GPU only
)
# torch's own handler prints these (deprecation notices that importing torchao triggers)
QUIET_LOGGERS: tuple[str, ...] = ("torch.utils._pytree",)


def debug_enabled() -> bool:
    return bool(os.environ.get("WATTLENS_DEBUG"))


def is_known_notice(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name == name and message.startswith(start) for name, start in KNOWN_NOTICES)


class _KnownNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_known_notice(record)


class _Named(logging.Formatter):
    """``wattlens: …`` for wattlens's records, ``<library>: …`` for any other logger's."""

    def format(self, record: logging.LogRecord) -> str:
        top = record.name.split(".")[0]
        # wattlens never logs on the root logger: a record there is a library's (logging.warning())
        who = record.module if top == "root" else top
        return f"{who}: {record.getMessage()}" + (f"\n{self.formatException(record.exc_info)}"
                                                   if record.exc_info else "")


def _quiet_torch_notices() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_library_notices() -> None:
    """Hide the known notices (kept with WATTLENS_DEBUG) in a process that prints them through
    Python's last-resort handler: the bundled demo workload, before it imports transformers."""
    if debug_enabled():
        return
    for name, _ in KNOWN_NOTICES:
        logging.getLogger(name).addFilter(_KnownNotices())
    _quiet_torch_notices()


def configure(stream=None) -> logging.Handler:
    """The CLI's (and so the app's) logging: warnings and up, DEBUG with WATTLENS_DEBUG=1."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Named())
    if not debug_enabled():
        handler.addFilter(_KnownNotices())
        _quiet_torch_notices()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_wattlens", False)]:
        root.removeHandler(old)
    handler._wattlens = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug_enabled() else logging.WARNING)
    return handler
