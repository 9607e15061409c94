"""Settings persist (in a temporary QSettings file), the theme switches, Doctor shows what can be
measured and the fix for the rest, and the status bar says what is measured and where."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)



def test_settings_persist_between_windows(make_window, qtbot, settings_path, tmp_path):
    w = make_window()
    sv = w.settings_view
    sv.interval.setValue(0.25)
    sv.stacks.setChecked(False)
    sv.grid.setValue(56)
    sv.tdp_override.setChecked(True)
    sv.tdp.setValue(95)
    sv.apply_button.click()
    assert sv.result.text() == "saved"
    ini = QSettings(str(settings_path), QSettings.IniFormat)
    assert float(ini.value("settings/interval_s")) == 0.25 and float(ini.value("settings/grid_g_per_kwh")) == 56
    w.close()
    w2 = make_window()
    v = w2.settings.values
    assert (v.interval_s, v.stacks, v.grid_g_per_kwh, v.cpu_tdp_w) == (0.25, False, 56.0, 95.0)
    assert w2.settings_view.grid.value() == 56 and w2.settings_view.tdp_override.isChecked()
    qtbot.waitUntil(lambda: "user override: TDP 95 W" in w2.settings_view.tdp_note.text(), timeout=10000)


def test_theme_switches_and_persists(make_window, qtbot, settings_path):
    w = make_window()
    light = QApplication.instance().palette().color(QPalette.Window).lightness()
    w.settings_view.theme.setCurrentIndex(w.settings_view.theme.findData("dark"))
    w.settings_view.apply_button.click()
    dark = QApplication.instance().palette().color(QPalette.Window).lightness()
    assert dark < light
    assert w.live_view.panel.power_plot.theme == "dark"
    assert QSettings(str(settings_path), QSettings.IniFormat).value("settings/theme") == "dark"
    w.settings.update(theme="light")
    assert QApplication.instance().palette().color(QPalette.Window).lightness() == light


def test_doctor_lists_sources_and_fixes(make_window, qtbot):
    w = make_window()
    w.tabs.setCurrentWidget(w.doctor_view)
    dv = w.doctor_view
    qtbot.waitUntil(lambda: dv.table.rowCount() > 0, timeout=15000)
    rows = {dv.table.item(r, 1).text(): (dv.table.item(r, 0).text(), dv.table.item(r, 2).text(),
                                         dv.table.item(r, 3).text()) for r in range(dv.table.rowCount())}
    cpu = next(v for k, v in rows.items() if "cpu-model" in k)
    assert cpu[0] == "✓" and "estimate" in cpu[1]
    nvml = rows["nvml (gpu)"]
    assert nvml[0] == "✗" and "NVML" in nvml[1] and "driver" in nvml[2]
    assert rows["database"][0] == "✓"
    assert "to look at" in dv.status.text()


def test_status_bar_says_what_is_measured_and_where(make_window, qtbot, tmp_path):
    w = make_window()
    qtbot.waitUntil(lambda: w.discovery is not None, timeout=10000)
    text = w.status_label.text()
    assert text.startswith("Not measuring")
    assert "CPU (TDP model) [estimated]" in text and "not: nvml" in text and str(tmp_path / "gui.db") in text
