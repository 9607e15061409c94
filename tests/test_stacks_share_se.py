"""Each stack-sampled class share comes with its standard error (profiler/summary.top_layers)."""

from __future__ import annotations

import math

import pytest

from wattlens.profiler.records import LayerCost
from wattlens.profiler.summary import top_layers


def row(w: int, path: str, self_s: float, method: str = "stack-sampling") -> LayerCost:
    return LayerCost(
        window_start_ns=w, window_end_ns=w + 1, path=path, granularity="class", method=method,
        time_s=self_s, share=0.0, self_time_s=self_s, self_energy_j=self_s,
    )


def test_share_se_is_the_ratio_estimators_between_windows():
    # three windows, node A's self time / all self time: 2/4, 3/4, 1/4
    layers = []
    for w, a in enumerate((2.0, 3.0, 1.0)):
        layers += [row(w, "A", a), row(w, "B", 4.0 - a)]
    got = {r["path"]: r for r in top_layers(layers)}
    r = 6.0 / 12.0
    resid = [(a - r * 4.0) ** 2 for a in (2.0, 3.0, 1.0)]
    expected = math.sqrt(3 / 2 * sum(resid)) / 12.0
    assert got["A"]["self_share"] == pytest.approx(0.5)
    assert got["A"]["self_share_se"] == pytest.approx(expected)
    assert got["B"]["self_share_se"] == pytest.approx(expected)  # the complement moves with A


def test_no_se_for_exact_timings_or_a_single_window():
    timed = [row(w, "A", 1.0, method="agent-timing") for w in range(3)]
    assert top_layers(timed)[0]["self_share_se"] is None
    assert top_layers([row(0, "A", 1.0), row(0, "B", 1.0)])[0]["self_share_se"] is None


def _backward_window(w: int, ops: dict[str, int]) -> list[LayerCost]:
    """One window: 1 s in a forward class, 3 s in the backward bucket split by native reads."""
    from collections import Counter

    from wattlens.profiler.stacks import native

    rows = [row(w, "M/Linear", 1.0),
            LayerCost(window_start_ns=w, window_end_ns=w + 1, path="backward", granularity="bucket",
                      method="stack-sampling", time_s=3.0, share=0.75, self_time_s=3.0, self_energy_j=3.0)]
    return native.split_backward(rows, Counter(ops))


def test_a_split_parts_error_is_the_pools_and_does_not_average_out_over_windows():
    # 20 native reads pooled: MmBackward0 in 5 (25 %, binomial se sqrt(.25 * .75 / 20) = 9.7 %);
    # every window holds the same split, so the between-window spread of the part is nil, but
    # the pool's own error is there, in every window alike
    ops = {"MmBackward0": 5, "SiluBackward0": 15}
    se_f = math.sqrt(0.25 * 0.75 / 20)
    for n_windows in (1, 10):
        layers = [r for w in range(n_windows) for r in _backward_window(w, ops)]
        got = {r["path"]: r for r in top_layers(layers, n=None)}
        mm = got["backward/MmBackward0"]
        assert mm["self_share"] == pytest.approx(0.75 * 0.25)
        # share of all sampled time: 3 s of 4 s in the backward, times the fraction's error
        assert mm["self_share_se"] == pytest.approx(0.75 * se_f)
        # a forward class has no split: one window says nothing, ten identical ones say 0
        assert got["M/Linear"]["self_share_se"] == (None if n_windows == 1 else pytest.approx(0.0))


def test_a_backward_module_class_row_carries_the_class_maps_error():
    from collections import Counter

    from wattlens.profiler.stacks import backward_map

    rows = [row(0, "M/Linear", 1.0), row(0, "M/Other", 1.0),
            LayerCost(window_start_ns=0, window_end_ns=1, path="backward", granularity="bucket",
                      method="stack-sampling", time_s=2.0, share=0.5, self_time_s=2.0, self_energy_j=2.0)]
    ops = Counter({"MmBackward0": 30, "NllLossBackward0": 10})
    forward = Counter({("M/Linear", "mm"): 12, ("M/Other", "mm"): 4})
    split = backward_map.split_backward(rows, ops, forward)
    parts = {p.name: p for p in backward_map.backward_by_class(ops, forward)}
    got = {r["path"]: r for r in top_layers(split, n=None)}
    lin = got["backward/M/Linear"]
    assert lin["method"] == backward_map.METHOD
    # 2 s of 4 s sampled are the backward; the class's share of it has the map's standard error
    assert lin["self_share_se"] == pytest.approx(0.5 * parts["M/Linear"].se)
    assert lin["self_share_se"] > 0


def test_the_layers_view_prints_the_share_and_error_that_show_prints(qtbot):
    """One truth: the live/stored layer tree computes the same standard error as the summary
    (`show`, the reports), and the view prints it as `show` does."""
    from wattlens.app.gui.models.format import share_with_se
    from wattlens.app.gui.models.layers_model import LayerTree
    from wattlens.app.gui.qt_layers import COLUMNS, QtLayerView

    layers = [r for w in range(4) for r in _backward_window(w, {"MmBackward0": 5, "SiluBackward0": 15})]
    layers += [row(9, "M/Linear", 1.5), row(9, "M/Other", 0.5)]  # a window with another mix
    layers += [row(w, "T", 1.0, method="agent-timing") for w in (20, 21)]  # exact: no error
    tree = LayerTree()
    tree.add(layers)
    shown = {(r["path"], r["granularity"]): r for r in top_layers(layers, n=None)}

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    nodes = {(n.path, n.granularity): n for n in walk(tree.roots())}
    for key, r in shown.items():
        expected = None if r["self_share_se"] is None else pytest.approx(r["self_share_se"])
        assert nodes[key].self_share_se == expected, (key, nodes[key].self_share_se, r["self_share_se"])
        assert nodes[key].self_time_share == pytest.approx(r["self_share"]), key
    assert shown[("backward/MmBackward0", "bucket")]["self_share_se"] > 0
    assert shown[("T", "class")]["self_share_se"] is None

    view = QtLayerView(tree)
    qtbot.addWidget(view)
    col = COLUMNS.index("Self time share")
    texts = {}
    for i in range(view.table.topLevelItemCount()):
        top = view.table.topLevelItem(i)
        texts[top.text(0)] = top.text(col)
        for j in range(top.childCount()):
            texts[top.child(j).text(0)] = top.child(j).text(col)
    mm = shown[("backward/MmBackward0", "bucket")]
    assert texts["MmBackward0"] == share_with_se(mm["self_share"], mm["self_share_se"])
    assert "±" in texts["MmBackward0"] and "±" not in texts["T"]
