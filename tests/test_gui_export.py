"""The Export screen: no stale "no stored sessions" line once sessions are listed, never the
exported session itself as "compare with", and an "Open the file" button after exporting (the
desktop's URL handler is the OS boundary: a receiver stands in for it)."""

from __future__ import annotations

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QDesktopServices

pytest_plugins = ["tests.gui_fixtures"]


class _Opened(QObject):
    def __init__(self):
        super().__init__()
        self.urls = []

    @Slot("QUrl")
    def open(self, url):  # noqa: A003 - the handler's method name
        self.urls.append(url)


def _compare_ids(ev) -> list:
    return [ev.compare_box.itemData(i) for i in range(ev.compare_box.count())]


def test_export_screen_choices_and_open_the_file(make_window, qtbot, stored_db, tmp_path):
    w = make_window(stored_db)
    ev = w.export_view
    w.tabs.setCurrentWidget(ev)
    qtbot.waitUntil(lambda: ev.session_box.count() == 2, timeout=20000)
    assert "no stored sessions" not in ev.result.text(), "a stale line from before the listing arrived"
    # each energy named as the Sessions list names its columns (a bare one read as the target's)
    for i, row in enumerate(ev.sessions.rows):
        text = ev.session_box.itemText(i)
        assert (f"{row.duration_text}, target {row.target_energy_text}, machine {row.energy_text}"
                in text), text
    ev.choose(1, "md")
    assert _compare_ids(ev) == [None, 2], "the session itself is not offered as 'compare with'"
    ev.choose(2, "md", compare_id=1)
    assert _compare_ids(ev) == [None, 1] and ev.compare_box.currentData() == 1
    ev.choose(1, "md")  # the comparison was session 1: it falls back to none
    assert ev.compare_box.currentData() is None
    assert ev.open_button.isHidden(), "nothing exported yet"
    path = tmp_path / "report.md"
    ev.choose(1, "md", str(path))
    ev.export_button.click()
    qtbot.waitUntil(lambda: not ev._running, timeout=20000)
    assert ev.result.text() == f"Saved to {path}" and path.exists()
    assert not ev.open_button.isHidden()
    opened = _Opened()
    QDesktopServices.setUrlHandler("file", opened, "open")
    try:
        ev.open_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    assert [u.toLocalFile() for u in opened.urls] == [str(path)]


def test_export_screen_writes_each_csv_table(make_window, qtbot, stored_db, tmp_path):
    """The CSV's table (samples, steps or layers) is chosen on the screen, as `wattlens report
    --what` does; the screen once offered only the samples and named the CLI flag for the rest."""
    import csv

    from wattlens.profiler.store import Store

    w = make_window(stored_db)
    ev = w.export_view
    w.tabs.setCurrentWidget(ev)
    qtbot.waitUntil(lambda: ev.session_box.count() == 2, timeout=20000)
    ev.choose(1, "md")
    assert not ev.csv_box.isVisibleTo(ev), "the CSV table choice shows only for CSV"
    ev.choose(1, "csv", what="layers", compare_id=2)
    assert ev.csv_box.isVisibleTo(ev)
    assert not ev.compare_box.isEnabled(), "a CSV holds one session: no comparison offered"
    assert ev.path.text().endswith("wattlens-session-1-layers.csv"), ev.path.text()
    written = {}
    for what in ("layers", "steps", "samples"):
        path = tmp_path / f"{what}.csv"
        ev.choose(1, "csv", str(path), what=what)
        ev.export_button.click()
        qtbot.waitUntil(lambda: not ev._running, timeout=20000)
        assert ev.result.text() == f"Saved to {path}", ev.result.text()
        with path.open(newline="") as f:
            written[what] = list(csv.reader(f))
    store = Store(stored_db)
    try:
        n_layers, n_steps = len(store.layer_costs(1)), len(store.steps(1))
    finally:
        store.close()
    assert n_layers > 0
    assert "path" in written["layers"][0] and len(written["layers"]) == 1 + n_layers
    assert "energy_j" in written["steps"][0] and len(written["steps"]) == 1 + n_steps
    assert written["samples"][0] != written["layers"][0] and len(written["samples"]) > 1
