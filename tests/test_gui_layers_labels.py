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
    # too narrow for the parent whole: cut in its middle, so two Linears' bars still differ
    inter, out = "BertIntermediate/Linear (backward)", "BertOutput/Linear (backward)"
    assert fit_path_label(inter, 28, n) == "BertI…iate/Linear (backward)"
    assert fit_path_label(out, 26, n) == "Bert…put/Linear (backward)"
    assert fit_path_label(inter, 24, n) == "…/Linear (backward)"  # a parent under 6 letters says nothing


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
    for s, bar in zip(labels, chart.bars, strict=True):
        # whole; or whole components after "…/"; or the last one whole under its parent cut short
        last = bar.label.rsplit("/", 1)[-1]
        assert s == bar.label or s.startswith("…/") or ("…" in s and s.endswith("/" + last)), s


def test_class_row_tooltip_explains_the_linear_row():
    text = node_tooltip("GPT2LMHeadModel/Linear", "class")
    assert "Linear modules that GPT2LMHeadModel.forward calls directly" in text
    assert "classes, not attribute names" in text
    assert "outside any module" in node_tooltip("optimizer", "bucket")


def test_a_bucket_part_is_labelled_by_its_end_and_its_bucket():
    """The backward split by class (``backward/<class path>``) and the optimizer's parts read as
    their last two classes and their bucket, so ``LlamaMLP/Linear (backward)`` is not taken for
    the forward's ``LlamaMLP/Linear`` when the chart shortens a long label from the left."""
    mlp = "Llama/Model/Layer/LlamaMLP/Linear"
    rows = [LayerCost(0, 10**9, mlp, "class", "stack-sampling", 0.3, 0.3, 3.0, 0.3, 3.0),
            LayerCost(0, 10**9, "backward/" + mlp, "bucket", "estimate: forward-op mix", 0.4, 0.4,
                      4.0, 0.4, 4.0, phase="backward"),
            LayerCost(0, 10**9, "backward/MulBackward0", "bucket", "estimate: forward-op mix",
                      0.1, 0.1, 1.0, 0.1, 1.0, phase="backward"),
            LayerCost(0, 10**9, "optimizer/_single_tensor_adam/addcdiv_", "bucket",
                      "stack-sampling", 0.1, 0.1, 1.0, 0.1, 1.0),
            LayerCost(0, 10**9, "python (other)", "bucket", "stack-sampling", 0.1, 0.1, 1.0, 0.1,
                      1.0)]
    tree = LayerTree()
    tree.add(rows)
    assert [b.label for b in tree.bars()] == [
        "LlamaMLP/Linear (backward)", "LlamaMLP/Linear", "MulBackward0 (backward)",
        "_single_tensor_adam/addcdiv_ (optimizer)", "[python (other)]"]


def test_a_bucket_s_parts_nest_under_it():
    """The backward's split (by class path and by op) and the optimizer's parts sit under their
    bucket in the tree, named from there, not as top-level rows with the whole path."""
    def bucket(path, method, self_e, phase=""):
        # a split part holds its own time only (time = self time); a bucket or a part split
        # further holds more than its own
        time_s = self_e / 10 if self_e else 0.5
        return LayerCost(0, 10**9, path, "bucket", method, time_s, time_s, 5.0, self_e / 10,
                         self_e, phase=phase)

    mlp = "Llama/Model/Layer/LlamaMLP/Linear"
    tree = LayerTree()
    tree.add([bucket("backward", "stack-sampling", 0.0, "backward"),
              bucket("backward/" + mlp, "estimate: forward-op mix", 4.0, "backward"),
              # its own share only: not the container of the Linear row's
              bucket("backward/Llama/Model/Layer/LlamaMLP", "estimate: forward-op mix", 0.5,
                     "backward"),
              bucket("backward/MulBackward0", "estimate: forward-op mix", 1.0, "backward"),
              bucket("optimizer", "stack-sampling", 0.0),
              bucket("optimizer/_single_tensor_adam", "stack-sampling", 0.0),
              bucket("optimizer/_single_tensor_adam/addcdiv_", "stack-sampling", 2.0)])
    roots = {n.path: n for n in tree.roots()}
    assert set(roots) == {"backward", "optimizer"}
    assert sorted(c.name for c in roots["backward"].children) == [
        mlp.rsplit("/", 1)[0], mlp, "MulBackward0"]
    (adam,) = roots["optimizer"].children
    assert adam.name == "_single_tensor_adam" and [c.name for c in adam.children] == ["addcdiv_"]


def test_a_long_row_name_keeps_both_ends(qtbot):
    """The Module column cuts a long class path in the middle, never its last classes."""
    from PySide6.QtCore import Qt

    from wattlens.app.gui.qt_layers import QtLayerView

    view = QtLayerView(LayerTree())
    qtbot.addWidget(view)
    assert view.table.textElideMode() == Qt.ElideMiddle


def test_a_part_split_in_some_windows_only_holds_its_parts():
    """An optimizer part stays whole in the windows before the native reads arrive and is split
    by op after: over the session it holds more than its own time, and its ops sit under it
    (beside it, the parts under the bucket added up to more than the bucket)."""
    rows = [  # window 1: the part whole; window 2: split, the op holds its time
        LayerCost(0, 10**9, "optimizer", "bucket", "stack-sampling", 0.2, 0.2, 2.0, 0.0, 0.0),
        LayerCost(0, 10**9, "optimizer/adam", "bucket", "stack-sampling", 0.2, 0.2, 2.0, 0.2, 2.0),
        LayerCost(10**9, 2 * 10**9, "optimizer", "bucket", "stack-sampling", 0.2, 0.2, 2.0, 0.0, 0.0),
        LayerCost(10**9, 2 * 10**9, "optimizer/adam", "bucket", "stack-sampling", 0.2, 0.2, 2.0,
                  0.0, 0.0),
        LayerCost(10**9, 2 * 10**9, "optimizer/adam/mul_", "bucket", "stack-sampling", 0.2, 0.2,
                  2.0, 0.2, 2.0)]
    tree = LayerTree()
    tree.add(rows)
    (opt,) = tree.roots()
    (adam,) = opt.children
    assert [c.name for c in adam.children] == ["mul_"]
    assert sum(c.time_s for c in opt.children) <= opt.time_s
