"""What reaches the terminal from the logs: wattlens's records as ``wattlens: …``, a library's
under its own name, and the libraries' known import-time notices only with WATTLENS_DEBUG."""

import io
import logging
import subprocess
import sys

import pytest

from wattlens.app import logsetup


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.delenv("WATTLENS_DEBUG", raising=False)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    quiet = {name: logging.getLogger(name).level for name in logsetup.QUIET_LOGGERS}
    stream = io.StringIO()
    yield stream
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_records_are_named_for_who_logged_them(terminal):
    logsetup.configure(terminal)
    logging.getLogger("wattlens.profiler.sampler").warning("py-spy ended early")
    # a library of its own (transformers would not do: once imported, it prints its records itself)
    logging.getLogger("somelib.loader").warning("some weights were not used")
    logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.cpython-310.so: Could not load")
    logging.getLogger("torchao.kernel.intmm").warning("Warning: Detected no triton, on systems without")
    logging.getLogger("torchao").warning("a notice not on the list")
    logging.getLogger("torch.utils._pytree").warning("Enum subclass registration is deprecated")
    logging.warning("a library that logs on the root logger")  # named by its module, not as wattlens
    assert terminal.getvalue().splitlines() == [
        "wattlens: py-spy ended early",
        "somelib: some weights were not used",
        "torchao: a notice not on the list",
        "test_logsetup: a library that logs on the root logger",
    ]


def test_debug_shows_the_known_notices_under_their_library(terminal, monkeypatch):
    monkeypatch.setenv("WATTLENS_DEBUG", "1")
    logsetup.configure(terminal)
    logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load")
    assert terminal.getvalue() == "torchao: Failed to load /x/_C_mxfp8.so: Could not load\n"


def test_configure_twice_prints_once(terminal):
    logsetup.configure(terminal)
    logsetup.configure(terminal)
    logging.getLogger("wattlens.x").warning("once")
    assert terminal.getvalue() == "wattlens: once\n"


def test_the_demo_workload_quiets_them_before_transformers_loads(tmp_path):
    """The bundled workload prints through Python's last-resort handler: the filter sits on the
    libraries' own loggers there."""
    code = ("import logging\n"
            "from wattlens.app.logsetup import quiet_library_notices\n"
            "quiet_library_notices()\n"
            "logging.getLogger('torchao').warning('Failed to load /x/_C.so: no')\n"
            "logging.getLogger('torchao').warning('kept')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "kept\n", r.stderr
