"""The layer view: a tree table of module paths sorted by energy share, and a bar chart of where
the energy goes (self energy per node, which adds up to the total). Both read a LayerTree."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.format import share_with_se, si
from wattlens.app.gui.models.layers_model import LayerNode, LayerTree, node_tooltip
from wattlens.app.gui.qt_widgets import QtBarChart

COLUMNS = ("Module", "Energy share", "Energy", "Self energy", "Self time share", "Time", "Time share")
SELF_SHARE_TIP = ("Self time share: the node's own time (without the modules inside it) as a share of all "
                  "the time profiled, as `wattlens show` and the reports print it; sampled rows carry "
                  "± one standard error (the spread between windows, and the pooled native reads' "
                  "error where the backward or the optimizer was split by them)")
_SORT_ROLE = Qt.UserRole + 1


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f} %"


class _Item(QTreeWidgetItem):
    """Sorts numeric columns by value, not by text."""

    def __lt__(self, other: QTreeWidgetItem) -> bool:
        col = self.treeWidget().sortColumn() if self.treeWidget() else 0
        a, b = self.data(col, _SORT_ROLE), other.data(col, _SORT_ROLE)
        if a is not None and b is not None and not isinstance(a, str):
            return a < b
        return self.text(col).lower() < other.text(col).lower()


class QtLayerView(QWidget):
    def __init__(self, tree: LayerTree, parent: QWidget | None = None):
        super().__init__(parent)
        self.tree_model = tree
        self.caption = QLabel("no layer figures yet", self)
        self.caption.setWordWrap(True)
        self.table = QTreeWidget(self)
        self.table.setColumnCount(len(COLUMNS))
        self.table.setHeaderLabels(list(COLUMNS))
        self.table.headerItem().setToolTip(COLUMNS.index("Self time share"), SELF_SHARE_TIP)
        self.table.setSortingEnabled(True)
        self.table.setUniformRowHeights(True)
        # a long class path keeps both ends ("LlamaForCausalLM/…/LlamaMLP/Linear"): its last
        # classes say what the row is
        self.table.setTextElideMode(Qt.ElideMiddle)
        header = self.table.header()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        for c in range(1, len(COLUMNS)):
            header.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        header.setStretchLastSection(False)
        self.bars = QtBarChart(self)
        split = QSplitter(Qt.Horizontal, self)
        split.addWidget(self.table)
        split.addWidget(self.bars)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addWidget(split, 1)
        # what the user opened or closed by hand survives the rebuilds; the rest opens 2 levels deep
        self._opened: set[str] = set()
        self._closed: set[str] = set()
        self.table.itemExpanded.connect(self._on_item_expanded)
        self.table.itemCollapsed.connect(self._on_item_collapsed)
        tree.changed.connect(self._on_tree_changed)
        self._update_view()

    def set_tree(self, tree: LayerTree) -> None:
        self.tree_model.changed.disconnect(self._on_tree_changed)
        self.tree_model = tree
        tree.changed.connect(self._on_tree_changed)
        self._opened.clear()
        self._closed.clear()
        self._update_view()

    def set_theme(self, theme: str) -> None:
        self.bars.set_theme(theme)

    def _on_tree_changed(self) -> None:
        self._update_view()

    def _update_view(self) -> None:
        tree = self.tree_model
        self.caption.setText(tree.describe())
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.clear()
        for node in tree.roots():
            item = self._item(node)
            self.table.addTopLevelItem(item)
            self._expand(item, 0)
        self.table.setSortingEnabled(True)
        self.table.blockSignals(False)
        self.table.sortByColumn(1 if tree.energy_known else COLUMNS.index("Time share"), Qt.DescendingOrder)
        what = "energy" if tree.energy_known else "time"
        self.bars.set_bars(tree.bars(12), f"Where the {what} goes: self {what} per module, top 12")

    def _on_item_expanded(self, item: QTreeWidgetItem) -> None:
        key = item.data(0, Qt.UserRole)
        self._opened.add(key)
        self._closed.discard(key)

    def _on_item_collapsed(self, item: QTreeWidgetItem) -> None:
        key = item.data(0, Qt.UserRole)
        self._closed.add(key)
        self._opened.discard(key)

    def _expand(self, item: QTreeWidgetItem, depth: int) -> None:
        key = item.data(0, Qt.UserRole)
        item.setExpanded(key not in self._closed and (depth < 2 or key in self._opened))
        for i in range(item.childCount()):
            self._expand(item.child(i), depth + 1)

    def _item(self, node: LayerNode) -> QTreeWidgetItem:
        it = _Item([node.name, _share(node.energy_share), si(node.energy_j, "J"), si(node.self_energy_j, "J"),
                    share_with_se(node.self_time_share, node.self_share_se), si(node.time_s, "s"),
                    _share(node.time_share)])
        it.setData(0, Qt.UserRole, f"{node.granularity}:{node.phase}:{node.path}")
        it.setData(0, _SORT_ROLE, node.name)
        for col, value in ((1, node.energy_share), (2, node.energy_j), (3, node.self_energy_j),
                           (4, node.self_time_share), (5, node.time_s), (6, node.time_share)):
            it.setData(col, _SORT_ROLE, -1.0 if value is None else float(value))
            it.setTextAlignment(col, Qt.AlignRight | Qt.AlignVCenter)
        it.setToolTip(0, node_tooltip(node.path, node.granularity))
        for child in node.children:
            it.addChild(self._item(child))
        return it

    def row_texts(self) -> list[list[str]]:
        """Top-level rows as shown (tests and screenshots read this)."""
        return [[self.table.topLevelItem(i).text(c) for c in range(len(COLUMNS))]
                for i in range(self.table.topLevelItemCount())]
