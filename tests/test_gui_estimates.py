"""Every figure the app shows is measured, or says it is an estimate with its method: the cards of
a session (mean power, CO₂, energy per step as the energy cards) and the Compare table, where each
session's figures carry their own mark (one may be measured, the other estimated)."""

from __future__ import annotations

import numpy as np

from wattlens.app.gui.models.layers_model import LayerTree
from wattlens.app.gui.models.series_model import SeriesInfo, SeriesSet
from wattlens.app.gui.models.sessions_model import StoredSession, compare_sessions

EST_TARGET = "attributed: cpu-time share × estimated"


def _stored(sid: int, *, estimated: bool) -> StoredSession:
    """A finished session with one CPU source: the TDP model (estimated) or RAPL (counter)."""
    src_id, method = ("cpu-model", "estimated") if estimated else ("rapl", "counter")
    sources = [{"id": src_id, "kind": "cpu", "method": method, "label": "CPU"}]
    t_method = f"attributed: cpu-time share × {method}"
    infos = [SeriesInfo(f"{src_id}/energy_j", "J", method, source_id=src_id, source_kind="cpu"),
             SeriesInfo(f"{src_id}/power_w", "W", method, source_id=src_id, source_kind="cpu"),
             SeriesInfo(f"target/{src_id}/energy_j", "J", t_method, source_id=src_id, source_kind="cpu"),
             SeriesInfo("target/energy_j", "J", f"attributed ({method})"),
             SeriesInfo("target/power_w", "W", f"attributed ({method})")]
    t = np.array([0, 1, 2], dtype=np.int64) * 10**9
    data = {f"{src_id}/energy_j": (t, np.array([0.0, 10.0, 20.0])),
            f"{src_id}/power_w": (t, np.array([10.0, 10.0, 10.0])),
            f"target/{src_id}/energy_j": (t, np.array([0.0, 4.0, 8.0])),
            "target/energy_j": (t, np.array([0.0, 4.0, 8.0])),
            "target/power_w": (t, np.array([4.0, 4.0, 4.0]))}
    series = SeriesSet.from_arrays(0, infos, data)
    summary = {"duration_s": 2.0, "energy_j": 20.0, "energy_method": method, "mean_power_w": 10.0,
               "target": {"energy_j": 8.0, "mean_power_w": 4.0,
                          "method": f"attributed: cpu-time share (CPU/DRAM) of {method} energy"},
               "steps": {"count": 4, "with_energy": 4, "energy_per_step_j": 2.0, "energy_per_sample_j": 0.5,
                         "energy_per_token_j": None, "samples": 16, "tokens": None},
               "co2_g": 0.001}
    session = {"id": sid, "name": f"s{sid}", "kind": "run", "status": "completed", "target_pid": 100 + sid,
               "target_cmdline": ["python", "loop.py"], "settings": {}, "started_at": 0.0, "duration_s": 2.0}
    return StoredSession(session, series, [], LayerTree(), [], summary, sources, [])


def _cards(s: StoredSession) -> dict:
    return {c.title: c for c in s.cards(475.0)}


def test_cards_resting_on_an_estimate_say_so_with_the_method():
    c = _cards(_stored(1, estimated=True))
    target_method = c["Energy, target process"].detail
    assert target_method == "attributed (cpu-time share) × estimated"  # the energy card's wording
    for title in ("CO₂", "Mean power", "Energy per step"):  # each derives from the estimated energy
        assert f"target energy: {target_method}" in c[title].detail or f"target: {target_method}" in c[title].detail, \
            (title, c[title].detail)
    assert "machine: estimated" in c["Mean power"].detail
    assert c["Mean power"].detail.startswith("energy ÷ duration of the session")
    assert c["CO₂"].detail.startswith("target energy × 475 gCO₂/kWh (Settings)")
    # a stopped session's CPU figures are its means, and the card says so as the power card does
    assert c["CPU"].detail == "mean over the session; target in % of one core"


def test_measured_cards_name_their_method_and_never_say_estimated():
    c = _cards(_stored(1, estimated=False))
    for title in ("Energy, target process", "Energy, whole machine", "CO₂", "Mean power", "Energy per step"):
        assert "estimated" not in c[title].detail and "counter" in c[title].detail, (title, c[title].detail)


def test_compare_marks_each_sessions_estimates_and_names_their_methods():
    measured, estimated = _stored(2, estimated=False), _stored(1, estimated=True)
    cmp_ = compare_sessions(measured, estimated)
    rows = {r.figure: r for r in cmp_.rows}
    assert rows["Duration"].this == "2 s" and rows["Duration"].other == "2 s"  # a measured time: no mark
    for fig in ("Energy, whole machine", "Energy, target", "Mean power, target", "Energy per step",
                "Energy per sample"):
        r = rows[fig]
        assert "estimated" not in r.this, (fig, r.this)  # session 2: RAPL, measured
        assert r.other.endswith(" (estimated)"), (fig, r.other)  # session 1: the TDP model
        assert r.delta.endswith(" (estimated)"), (fig, r.delta)  # contains the estimated figure
        assert "counter" in r.this_method and "estimated" in r.other_method
    assert rows["Energy per token"].other == "n/a"  # unknown: never marked, never 0
    assert "session 1: whole machine estimated" in cmp_.methods_line()
    assert "session 2: whole machine counter" in cmp_.methods_line()
    both = compare_sessions(estimated, _stored(3, estimated=True))
    assert all(r.this.endswith(" (estimated)") and r.other.endswith(" (estimated)")
               for r in both.rows if r.figure.startswith("Energy, "))


def test_the_compare_view_shows_the_marks_and_methods(qtbot, tmp_path):
    from wattlens.app.gui.qt_sessions import QtCompareView

    view = QtCompareView()
    qtbot.addWidget(view)
    view.resize(1100, 700)
    view.show()
    view.show_comparison(compare_sessions(_stored(2, estimated=False), _stored(1, estimated=True)))
    cells = {view.table.item(r, 0).text(): [view.table.item(r, c) for c in range(1, 5)]
             for r in range(view.table.rowCount())}
    this, other, delta, _ = cells["Energy, target"]
    assert "estimated" not in this.text() and other.text().endswith("(estimated)") and delta.text().endswith("(estimated)")
    assert "estimated" in other.toolTip() and "counter" in this.toolTip()
    assert "session 1: whole machine estimated" in view.note.text()
    assert view.note.isVisible()
    view.grab().save(str(tmp_path / "compare.png"))
