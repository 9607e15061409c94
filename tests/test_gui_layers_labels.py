"""Layer bar labels are never cut inside a name (the class keeps its whole name, the full path in
the tooltip), and the class tree says what a row such as ``GPT2LMHeadModel/Linear`` is."""

from __future__ import annotations

from wattlens.app.gui.models.layers_model import LayerTree, node_tooltip
from wattlens.app.gui.qt_widgets import fit_path_label
from wattlens.profiler.records import LayerCost

pytest_plugins = ["tests.gui_fixtures"]

PATHS = ("GPT2LMHeadModel", "GPT2LMHeadModel/GPT2Model", "GPT2LMHeadModel/GPT2Model/GPT2Block",
         "GPT2LMHeadModel/GPT2Model/GPT2Block/GPT2MLP",
         "GPT2LMHeadModel/GPT2Model/GPT2Block/GPT2MLP/NewGELUActivation", "GPT2LMHeadModel/Linear")


def test_fit_path_label_keeps_whole_components():
    n = len  # one unit per character
    label = "GPT2MLP/NewGELUActivation"
    assert fit_path_label(label, 100, n) == label
    assert fit_path_label(label, 20, n) == "…/NewGELUActivation"
    assert fit_path_label(label, 17, n) == "NewGELUActivation"
    short = fit_path_label(label, 9, n)
    assert len(short) <= 9 and short.startswith("New") and short.endswith("on") and "…" in short
    assert fit_path_label("h.0.mlp.c_proj (backward)", 20, n) == "….c_proj (backward)"


def test_bar_chart_labels_in_a_narrow_view(qtbot):
    from wattlens.app.gui.qt_widgets import QtBarChart

    tree = LayerTree()
    rows = [LayerCost(0, 10**9, p, "class", "stack-sampling", 0.5, 0.5, 1.0, 0.1, 0.1) for p in PATHS]
    tree.add(rows)
    chart = QtBarChart()
    qtbot.addWidget(chart)
    chart.resize(300, 400)
    chart.set_bars(tree.bars(12))
    labels = chart.shown_labels()
    gelu = [s for s in labels if "NewGELUActivation" in s]
    assert gelu and all(s.endswith("NewGELUActivation") and not s.startswith("…2") for s in gelu), labels
    for s in labels:  # either whole, or whole components after "…/"
        assert s in {b.label for b in chart.bars} or s.startswith("…/"), s


def test_class_row_tooltip_explains_the_linear_row():
    text = node_tooltip("GPT2LMHeadModel/Linear", "class")
    assert "Linear modules that GPT2LMHeadModel.forward calls directly" in text
    assert "classes, not attribute names" in text
    assert "outside any module" in node_tooltip("optimizer", "bucket")
