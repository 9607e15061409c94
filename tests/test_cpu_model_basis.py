"""The CPU estimate's stated basis says exactly how the TDP it uses was obtained.

A user trial: doctor, the report note and `show --json` said "default 5 W per logical CPU × 2"
(10 W) beside tdp_w 15.0 and "Max power 15 W": the 15 W floor was applied but never stated.
"""

from __future__ import annotations

import pytest

from wattlens.profiler.sources.cpu_model import CpuModelSource, _table, build_model


def test_a_tdp_raised_to_the_floor_says_so_with_the_figures(monkeypatch):
    monkeypatch.delenv("WATTLENS_CPU_TDP_W", raising=False)
    floor_w = float(_table()["default_min_w"])
    per_thread = float(_table()["default_w_per_thread"])
    assert per_thread * 2 < floor_w  # the trial's 2-CPU machine is below the floor
    m = build_model(model_name="Mystery CPU", visible_threads=2)
    assert m.tdp_w == floor_w
    assert (f"default {per_thread:g} W per logical CPU × 2 = {per_thread * 2:g} W, "
            f"raised to the {floor_w:g} W floor") in m.tdp_source
    # the JSON `doctor` and `show --json` print, and the report note, carry this one text
    d = CpuModelSource(m).describe()
    assert d["tdp_w"] == floor_w and d["tdp_source"] == m.tdp_source


@pytest.mark.parametrize("threads", [4, 16])
def test_a_tdp_above_the_floor_states_its_product_and_no_floor(monkeypatch, threads):
    monkeypatch.delenv("WATTLENS_CPU_TDP_W", raising=False)
    per_thread = float(_table()["default_w_per_thread"])
    m = build_model(model_name="Mystery CPU", visible_threads=threads)
    assert m.tdp_w == per_thread * threads
    assert f"default {per_thread:g} W per logical CPU × {threads} = {m.tdp_w:g} W" in m.tdp_source
    assert "floor" not in m.tdp_source
