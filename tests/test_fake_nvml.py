"""The NVML model's own hygiene: the fake /proc it makes lives only as long as the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fake_nvml
from wattlens.profiler import pidns
from wattlens.profiler.sources import nvml


def test_the_fake_proc_folder_is_removed_when_the_test_ends(tmp_path):
    """`install` without a proc_root makes a temp /proc; undoing its monkeypatch (the test's
    teardown) removes it. A proc_root the test gave is the test's own and stays."""
    before = pidns.PROC_ROOT
    mp = pytest.MonkeyPatch()
    try:
        fake_nvml.install(mp, [fake_nvml.FakeGpu()])
        made = Path(pidns.PROC_ROOT)
        assert made.name.startswith("wattlens-proc-") and (made / "self" / "ns" / "pid").is_symlink()
    finally:
        mp.undo()
        nvml.shutdown()
    assert pidns.PROC_ROOT == before and not made.exists()

    mine = fake_nvml.fake_proc(tmp_path / "proc", in_container=False)
    with pytest.MonkeyPatch.context() as mp:
        fake_nvml.install(mp, [fake_nvml.FakeGpu()], proc_root=mine)
        assert pidns.PROC_ROOT == str(mine)
    nvml.shutdown()
    assert (mine / "self" / "ns" / "pid").is_symlink()
