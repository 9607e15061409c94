"""The Live screen: a running session's power, energy, CO2, utilisation, steps and layers.

A QTimer on the GUI thread pulls what is new from the ring buffers (15 Hz) and redraws; the
figure cards refresh at a quarter of that. Pausing stops the drawing only — the sampler and the
database writer never pause. Layer windows and steps arrive from other threads through the
bridge's queued signals.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.format import clock, duration
from wattlens.app.gui.models.live_model import LiveModel
from wattlens.app.gui.qt_bridge import QtSessionBridge

WINDOWS = (("Last minute", 60.0), ("Last 10 minutes", 600.0), ("Whole session", None))
FRAME_MS = 66  # ≈ 15 Hz
CARDS_EVERY = 4  # frames


class QtLiveView(QWidget):
    stop_requested = Signal(bool)  # end the launched program too?

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model: LiveModel | None = None
        self.bridge = QtSessionBridge(self)
        self.bridge.layers_arrived.connect(self._on_layers)
        self.bridge.step_arrived.connect(self._on_step)
        self.paused = False
        self.window_s: float | None = WINDOWS[0][1]
        self._frame = 0
        self.frame_times_s: list[float] = []  # redraw durations, kept short (benchmarks read it)

        self.idle = QLabel(
            "<h3>No session running</h3><p>Pick a process on the <b>Attach</b> tab and press "
            "<b>Attach</b>, or use <b>Launch…</b> there to start a command under wattlens.</p>"
            "<p>Stored sessions are on the <b>Sessions</b> tab.</p>", self)
        self.idle.setAlignment(Qt.AlignCenter)
        self.idle.setWordWrap(True)

        self.title = QLabel(self)
        tf = self.title.font()
        tf.setBold(True)
        tf.setPointSizeF(tf.pointSizeF() * 1.1)
        self.title.setFont(tf)
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.elapsed = QLabel(self)
        self.state = QLabel(self)
        self.window_box = QComboBox(self)
        for text, _ in WINDOWS:
            self.window_box.addItem(text)
        self.window_box.setToolTip("Time window of the plots")
        self.window_box.currentIndexChanged.connect(self._on_window_changed)
        self.pause_button = QPushButton("Pause drawing", self)
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Freeze the plots; measuring and recording continue")
        self.pause_button.toggled.connect(self._on_pause_toggled)
        self.end_program = QCheckBox("also end the launched program", self)
        self.end_program.setToolTip("Only for a program started with Launch…; attached processes are never ended")
        self.stop_button = QPushButton("Stop session", self)
        self.stop_button.setToolTip("Finish and save the session; the measured process keeps running")
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.log_label = QLabel(self)
        self.log_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.elapsed)
        controls = QHBoxLayout()
        controls.addWidget(self.state, 1)
        controls.addWidget(QLabel("Window:", self))
        controls.addWidget(self.window_box)
        controls.addWidget(self.pause_button)
        controls.addWidget(self.end_program)
        controls.addWidget(self.stop_button)
        self._panel = None  # built on first use: it is what imports pyqtgraph (see ``panel``)
        self.theme = "light"
        running = QWidget(self)
        self._running_layout = rl = QVBoxLayout(running)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(top)
        rl.addLayout(controls)
        rl.addWidget(self.log_label)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.idle)
        self.stack.addWidget(running)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.stack)

        self.timer = QTimer(self)
        self.timer.setInterval(FRAME_MS)
        self.timer.timeout.connect(self._on_timer)

    @property
    def panel(self):
        """The figures, plots and layers; created on first use so that the window can paint
        before pyqtgraph is imported (cold start)."""
        if self._panel is None:
            from wattlens.app.gui.qt_session_panel import QtSessionPanel

            self._panel = QtSessionPanel(self)
            self._panel.set_theme(self.theme)
            self._running_layout.addWidget(self._panel, 1)
        return self._panel

    # ---- model ---------------------------------------------------------------------------------
    def set_model(self, model: LiveModel | None) -> None:
        """Show a session that has *started* (its sampler exists), or the idle page (None)."""
        self.timer.stop()
        self.model = model
        if model is None:
            self.stack.setCurrentIndex(0)
            return
        self.bridge.connect_session(model.session)
        model.ended_changed.connect(self._on_ended)
        self.panel.clear()
        self.panel.set_layers(model.layers)
        self.title.setText(model.title)
        launched = model.launched_log is not None
        self.end_program.setVisible(launched)
        self.end_program.setChecked(False)
        self.log_label.setVisible(launched)
        if launched:
            self.log_label.setText(f"Program output: {model.launched_log}")
        self.stop_button.setEnabled(True)
        self.pause_button.setChecked(False)
        self.stack.setCurrentIndex(1)
        self._update_state()
        self.frame(force_cards=True)
        self.timer.start()

    # ---- frames --------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self.frame()

    def frame(self, force_cards: bool = False) -> None:
        """Pull new samples; redraw unless paused; refresh the cards every few frames."""
        m = self.model
        if m is None:
            return
        t0 = time.perf_counter()
        new = m.pull()
        if not self.paused and (new or force_cards):
            self.redraw()
        self._frame += 1
        if force_cards or self._frame % CARDS_EVERY == 0:
            self.panel.set_cards(m.cards())
            # a clock while it runs; once ended, the stored duration as the Sessions list reads it
            # (the clock truncates: 99.6 s read 00:01:39 here and 1 min 40 s there)
            self.elapsed.setText(clock(m.elapsed_s()) if m.ended is None else duration(m.elapsed_s()))
        self.frame_times_s.append(time.perf_counter() - t0)
        if len(self.frame_times_s) > 4096:
            del self.frame_times_s[:2048]

    def redraw(self) -> None:
        m = self.model
        if m is not None:
            self.panel.draw(m.series, self.window_s, m.step_ends_s(), live=m.ended is None,
                            paused=m.paused_spans())

    # ---- handlers ------------------------------------------------------------------------------
    def _on_window_changed(self, index: int) -> None:
        self.window_s = WINDOWS[index][1]
        self.redraw()

    def _on_pause_toggled(self, paused: bool) -> None:
        self.paused = paused
        self.pause_button.setText("Resume drawing" if paused else "Pause drawing")
        self._update_state()
        if not paused:
            self.redraw()

    def _on_stop_clicked(self) -> None:
        self.stop_button.setEnabled(False)
        self.state.setText("finishing the session…")
        self.stop_requested.emit(self.end_program.isVisible() and self.end_program.isChecked())

    def _on_layers(self, rows) -> None:
        if self.model is not None:
            self.model.add_layers(rows)

    def _on_step(self, step) -> None:
        if self.model is not None:
            self.model.add_step(step)

    def _on_ended(self) -> None:
        self.timer.stop()
        self.frame(force_cards=True)
        if not self.paused:
            self.redraw()
        self.stop_button.setEnabled(False)
        self.end_program.setVisible(False)
        self._update_state()

    def _update_state(self) -> None:
        m = self.model
        if m is None:
            return
        if m.ended is not None:
            status, reason = m.ended
            self.state.setText(f"<b>Session {m.session.session_id} {status}</b> — {reason or ''} (saved)")
        elif self.paused:
            self.state.setText(f"<b>Drawing paused</b> — session {m.session.session_id} is still recording")
        else:
            self.state.setText(f"● Recording session {m.session.session_id}")

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        if self._panel is None:
            return
        self._panel.set_theme(theme)
        self._panel.power_plot.clear()
        self._panel.util_plot.clear()
        self.redraw()

    def shutdown(self) -> None:
        self.timer.stop()
