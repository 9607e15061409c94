"""The Advisor tab of a stored session: its stored advice at once, "Analyse" to compute it anew
(``wattlens.app.advise.advise`` in a worker; features and rules never import torch), and for
advice with an action "Apply to a model copy…", which runs ``wattlens optimize`` as a child
process and shows the measured saving beside the predicted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.advisor_model import (
    AdvisorModel,
    ApplyState,
    RecommendationView,
    optimize_argv,
    recorded_lines,
    run_optimize,
    store_db_arg,
    stored_advice,
)
from wattlens.app.gui.models.errors import error_text

#: Progress lines of a running optimize shown under its recommendation.
SHOWN_LINES = 4


def _label(text: str, parent: QWidget, *, bold: bool = False, wrap: bool = True) -> QLabel:
    label = QLabel(text, parent)
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    label.setTextFormat(Qt.PlainText)
    if bold:
        f = label.font()
        f.setBold(True)
        label.setFont(f)
    return label


def _apply_work(argv: list[str], should_stop: Callable[[], bool], progress=None) -> dict:
    return run_optimize(argv, on_line=(lambda line: progress(line, 0.0)) if progress else None,
                        should_stop=should_stop)


def _analyse(store, session_id: int) -> dict:
    from wattlens.app.advise import advise

    return advise(store, session_id)


class QtRecommendationCard(QFrame):
    """One recommendation: what, why (with its evidence), the predicted saving and its method,
    confidence, risk, and the apply button with the run's progress and result."""

    def __init__(self, rec: RecommendationView, apply: ApplyState | None,
                 on_apply: Callable[[str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.rec = rec
        self.setFrameShape(QFrame.StyledPanel)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 8)
        lay.setSpacing(4)
        self.title = _label(rec.title + (" — not worth it yet" if rec.held else ""), self, bold=True)
        self.rationale = _label(rec.rationale, self)
        self.saving = _label(rec.saving_text, self, bold=True)
        self.method = _label(rec.method_text, self)
        self.method.setVisible(not rec.saving_text.startswith("measure first"))
        self.saving_detail = _label(rec.saving_detail, self)
        self.saving_detail.setVisible(bool(rec.saving_detail) and rec.saving_detail not in rec.saving_text)
        self.levels = _label(f"{rec.confidence_text}   ·   {rec.risk_text}", self)
        self.evidence = _label("Evidence:\n" + "\n".join(f"  • {e}" for e in rec.evidence), self)
        for w in (self.title, self.rationale, self.saving, self.method, self.saving_detail, self.levels, self.evidence):
            lay.addWidget(w)
        if rec.held:
            lay.addWidget(_label(rec.held, self))
        if rec.notes:
            lay.addWidget(_label("\n".join(f"Note: {n}" for n in rec.notes), self))
        self.outcome = _label("Applied from this session — recommended → applied → measured:\n"
                              + "\n".join(f"  {t}" for t in rec.outcome_lines), self)
        self.outcome.setVisible(bool(rec.outcome_lines))
        if rec.outcome is not None and rec.outcome.flagged:
            self.outcome.setStyleSheet("color: #B3261E;")
        lay.addWidget(self.outcome)
        self.apply_button: QPushButton | None = None
        self.progress = _label("", self)
        self.progress.hide()
        self.result: QWidget | None = None
        if rec.action:
            row = QHBoxLayout()
            self.apply_button = QPushButton("Apply to a model copy…", self)
            self.apply_button.setToolTip(f"wattlens optimize MODEL --action {rec.action} --out DIR "
                                         "(your model is never changed; the copy is measured A/B)")
            self.apply_button.clicked.connect(lambda: on_apply(rec.action))
            row.addWidget(self.apply_button)
            row.addWidget(_label(f"action {rec.action}", self), 1)
            lay.addLayout(row)
        elif rec.command:
            lay.addWidget(_label(f"No automatic action; to do it: {rec.command}", self))
        else:
            lay.addWidget(_label("Advice only (no automatic action).", self))
        lay.addWidget(self.progress)
        if apply is not None:
            self._show_apply(apply, lay)

    def _show_apply(self, st: ApplyState, lay: QVBoxLayout) -> None:
        if self.apply_button is not None:
            self.apply_button.setEnabled(not st.running)
        head = f"{st.model_dir} → {st.out_dir}"
        if st.running:
            lines = st.lines[-SHOWN_LINES:] or ["starting wattlens optimize…"]
            self.progress.setText(f"Applying ({head}):\n" + "\n".join(lines))
            self.progress.show()
            return
        if st.error:
            self.progress.setText(f"Apply failed: {st.error}")
            self.progress.setStyleSheet("color: #B3261E;")
            self.progress.show()
            return
        # a refused copy was kept for inspection, not applied: the card says so, and why
        verb = "Not applied" if st.status == "refused" else "Applied"
        self.progress.setText(f"{verb} ({head}), {st.status_text or st.status}"
                              + (f", recorded as session {st.session_id}" if st.session_id is not None else "")
                              + (f"\n{st.note}" if st.note else ""))
        self.progress.show()
        self.result = QFrame(self)
        grid = QGridLayout(self.result)
        grid.setContentsMargins(0, 2, 0, 0)
        grid.addWidget(_label("Measured saving", self.result, bold=True), 0, 0)
        grid.addWidget(_label("Predicted saving", self.result, bold=True), 0, 1)
        self.measured = _label(st.measured_text or "n/a", self.result)
        self.predicted = _label(st.predicted_text or "n/a", self.result)
        grid.addWidget(self.measured, 1, 0, Qt.AlignTop)
        grid.addWidget(self.predicted, 1, 1, Qt.AlignTop)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        lay.addWidget(self.result)


class QtAdvisorPanel(QWidget):
    """``pool``: the window's QtWorkerPool; ``get_store``: the window's current Store (or None)."""

    def __init__(self, pool, get_store: Callable[[], object], parent: QWidget | None = None,
                 model: AdvisorModel | None = None):
        super().__init__(parent)
        self.pool = pool
        self.get_store = get_store
        self.model = model or AdvisorModel()
        #: A/B rounds for Apply (None: the CLI's default); tests use 1.
        self.apply_rounds: int | None = None
        self.analyse_button = QPushButton("Analyse", self)
        self.analyse_button.setToolTip("Run every advisor rule on this session's measurements "
                                       "(wattlens advise) and store the result")
        self.analyse_button.clicked.connect(self.analyse)
        self.status = _label("", self)
        self.error = _label("", self)
        self.error.setStyleSheet("color: #B3261E;")
        self.error.hide()
        self.cards: list[QtRecommendationCard] = []
        self.recorded_cards: list[QFrame] = []  # an optimize run's own A/B results
        self.silent = _label("", self)
        self.silent.hide()
        self._body = QWidget()
        self._body_lay = QVBoxLayout(self._body)
        self._body_lay.setContentsMargins(4, 4, 4, 4)
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setWidget(self._body)
        top = QHBoxLayout()
        top.addWidget(self.analyse_button)
        top.addWidget(self.status, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.error)
        lay.addWidget(self.scroll, 1)
        self.model.changed.connect(self._update)
        self._update()

    # ---- actions ---------------------------------------------------------------------------------
    def show_session(self, session_id: int) -> None:
        """The session's stored advice, at once (read in a worker: the store is a database)."""
        store = self.get_store()
        self.model.set_session(session_id, [])
        if store is None:
            return
        self.pool.submit(stored_advice, store, session_id,
                         on_done=lambda doc: self._on_stored(session_id, doc), on_error=self._on_error)

    def analyse(self) -> None:
        store = self.get_store()
        if store is None or self.model.session_id is None or self.model.busy:
            return
        self.model.start_analysis()
        self.pool.submit(_analyse, store, self.model.session_id, on_done=self.model.set_advice,
                         on_error=self._on_error)

    def ask_folders(self, action: str) -> tuple[str, str] | None:
        """The model folder and the folder for its optimized copy (None: cancelled); the first
        dialog opens on the folder the session saw the model loaded from, where it knows one."""
        known = next((r.model_folder for r in self.model.recommendations if r.action == action), None)
        model_dir = QFileDialog.getExistingDirectory(self, "Model folder (a saved Hugging Face model)", known or "")
        if not model_dir:
            return None
        suffix = action.replace(":", "-").replace(".", "")
        out_dir, _ = QFileDialog.getSaveFileName(self, "Folder for the optimized copy (must not exist yet)",
                                                 f"{model_dir.rstrip('/')}-{suffix}")
        return (model_dir, out_dir) if out_dir else None

    def _on_apply_clicked(self, action: str) -> None:
        folders = self.ask_folders(action)
        if folders is not None:
            self.apply(action, *folders)

    def apply(self, action: str, model_dir: str | Path, out_dir: str | Path) -> None:
        """Run ``wattlens optimize MODEL --action ACTION --out DIR --json`` as a child process."""
        store = self.get_store()
        if store is None:
            self.model.set_error("no database is open — choose one in Settings")
            return
        running = self.model.applies.get(action)
        if running is not None and running.running:
            return
        sid = self.model.session_id
        argv = optimize_argv(str(model_dir), action, str(out_dir), store_db_arg(store), rounds=self.apply_rounds,
                             from_session=sid)
        self.model.start_apply(action, str(model_dir), str(out_dir))

        def done(doc: dict) -> None:
            self.model.apply_done(action, doc)
            if sid is not None:
                self._reload_outcomes(sid)

        self.pool.submit(_apply_work, argv, lambda: bool(getattr(self.pool, "_closed", False)),
                         on_progress=lambda text, _f: self.model.apply_line(action, text),
                         on_done=done,
                         on_error=lambda exc: self.model.apply_failed(action, error_text(exc)))

    # ---- model → view ----------------------------------------------------------------------------
    def _on_stored(self, session_id: int, doc: dict) -> None:
        if session_id == self.model.session_id and not self.model.analysed and not self.model.busy:
            self.model.set_session(session_id, doc["recommendations"], doc["outcomes"], doc.get("recorded"),
                                   optimizer=bool(doc.get("optimizer")))

    def _reload_outcomes(self, session_id: int) -> None:
        store = self.get_store()
        if store is not None:
            self.pool.submit(stored_advice, store, session_id,
                             on_done=lambda doc: self.model.set_outcomes(session_id, doc["outcomes"]),
                             on_error=self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        self.model.set_error(error_text(exc))

    def _update(self) -> None:
        m = self.model
        self.analyse_button.setEnabled(m.session_id is not None and not m.busy and not m.optimizer)
        self.status.setText(m.status)
        self.error.setText(m.error)
        self.error.setVisible(bool(m.error))
        for card in self.cards + self.recorded_cards:
            self._body_lay.removeWidget(card)
            card.deleteLater()
        self.cards, self.recorded_cards = [], []
        self._body_lay.removeWidget(self.silent)
        while self._body_lay.count():  # the trailing stretch
            self._body_lay.takeAt(0)
        for o in m.recorded:
            card = QFrame(self._body)
            card.setFrameShape(QFrame.StyledPanel)
            lay = QVBoxLayout(card)
            lines = recorded_lines(o)
            lay.addWidget(_label(lines[0], card, bold=True))
            for line in lines[1:]:
                lay.addWidget(_label(line, card))
            self.recorded_cards.append(card)
            self._body_lay.addWidget(card)
        for rec in m.recommendations:
            card = QtRecommendationCard(rec, m.applies.get(rec.action) if rec.action else None,
                                        self._on_apply_clicked, self._body)
            self.cards.append(card)
            self._body_lay.addWidget(card)
        if m.analysed and m.silent_rules:
            self.silent.setText("Rules with nothing to say (their evidence is absent or below threshold):\n"
                                + "\n".join(f"  • {s.get('rule')}: needs {s.get('needs')}"
                                            + (f" — here: {s['reason']}" if s.get("reason") else "")
                                            for s in m.silent_rules))
            self.silent.show()
        else:
            self.silent.hide()
        self._body_lay.addWidget(self.silent)
        self._body_lay.addStretch(1)
