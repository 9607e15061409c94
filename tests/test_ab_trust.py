"""What a user of `wattlens optimize` may trust, from user trials:

1. the stored status ``verified`` (the A/B had enough rounds for an interval) is never shown bare
   beside "does not show a difference": every view words it as its interval reads;
2. a copy the quality check refuses (``--max-quality-loss``) is still measured (what healing can
   keep: the heal rule's evidence) and stored as refused, nothing written (the same --out takes
   the next try), one line that says what, by how much and what to do, exit 1, one JSON document;
3. a disturbed A/B round is measured once more, the disturbed measurement kept in the record and
   left out of the figure; a re-measurement disturbed too is counted and named, as before.

Models are real (tiny GPT-2 built from a config); the one fake is the hardware boundary: a
powercap RAPL tree whose package counter advances with the work (so this loaded machine's own speed
does not move a round's energy per sample) and reads many times more while "another process" is
disturbing a round.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest

from tests.test_actions_helpers import save_hf, tiny_gpt2
from wattlens.advisor.actions import parse_action
from wattlens.advisor.modelio import random_inputs
from wattlens.app import present
from wattlens.profiler.store import Store


def _main(*argv: str) -> tuple[int, str, str]:
    """`wattlens ARGV` in this process: (exit code, stdout, stderr)."""
    from wattlens.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# =================================================================== 1. the status word


def test_the_status_word_agrees_with_the_interval():
    word = present.action_status_text
    assert word("verified", (0.05, 0.20)) == "measured: saving confirmed"
    assert word("verified", (-0.30, -0.02)) == "measured: costs more, confirmed"
    assert word("verified", (-0.02, 0.03)) == "measured: no difference shown"
    assert word("verified", (-0.12, 0.02)) == "measured: interval too wide"  # may hide a 12 % cost
    assert word("verified", [0.02, -0.02]) == "measured: no difference shown"  # either order, as stored
    assert word("unverified", None) == "unverified: no interval"
    assert word("refused", None).startswith("refused: quality loss above the limit")
    assert word("applied", None) == "applied"  # a live apply's own words pass through
    for interval in ((0.05, 0.2), (-0.02, 0.03), (-0.12, 0.02), (-0.3, -0.02)):
        assert word("verified", interval) != "verified"


def _opt_result(saving: float, interval: tuple[float, float]) -> dict:
    return {"verification": {"saving_fraction": saving, "saving_interval": list(interval),
                             "baseline": {"energy_per_sample_j": 0.4, "energy_method": "cpu-time share × counter"},
                             "candidate": {"energy_per_sample_j": 0.4 * (1 - saving),
                                           "energy_method": "cpu-time share × counter"},
                             "n_rounds": 3, "batches_per_round": 4},
            "predicted": None}


@pytest.fixture(scope="module")
def trial_db(tmp_path_factory):
    """A session an action was applied from, and the optimize session that recorded it: the
    trial's `verified` whose interval included no change."""
    from wattlens.advisor.recommend import Evidence, Recommendation, Risk, rule_of_thumb
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover

    db = tmp_path_factory.mktemp("status") / "w.db"
    store = Store(db)
    ids = []
    for kind, name in (("attach", "inference"), ("optimize", "optimize model: prune-mlp:0.25")):
        session = ProfilingSession(store, target=None, kind=kind, name=name, interval_s=0.1,
                                   duration_s=0.3, discovery=discover(gpu=False), stacks=False)
        ids.append(session.start())
        session.run(poll_s=0.05)
    src, opt = ids
    rec = Recommendation(
        rule="prune-mlp", title="Prune 25 % of the MLP neurons (structured)", rationale="MLPs dominate.",
        evidence=(Evidence("MLP share of the model's time", 0.6, "fraction", "agent timing"),),
        predicted_saving=rule_of_thumb(0.09, 0.15, "a stated rule"), confidence="low",
        risk=Risk("high", "check the fidelity"), action="prune-mlp:0.25")
    store.add_recommendations(src, [rec.to_dict()])
    store.add_action(kind="prune-mlp:0.25", status="verified", params={"recommendation_index": 0},
                     result=_opt_result(0.01, (-0.02, 0.04)), session_id=opt, source_session_id=src)
    store.close()
    return db, src, opt


def test_show_and_reports_never_show_verified_beside_no_difference(trial_db, tmp_path):
    db, src, opt = trial_db
    code, out, err = _main("show", str(src), "--db", str(db))
    assert code == 0, err
    (chain,) = [line for line in out.splitlines() if "recommended:" in line]
    assert "(measured: no difference shown, action #" in chain, chain
    assert "(verified" not in chain and "does not show a difference" in chain
    code, out, err = _main("show", str(src), "--db", str(db), "--json")
    (applied,) = json.loads(out)["applied"]
    assert applied["status"] == "verified"  # the stored status is not renamed
    assert applied["status_text"] == "measured: no difference shown"
    for sid in (src, opt):
        for fmt in ("md", "html"):
            path = tmp_path / f"r{sid}.{fmt}"
            code, _, err = _main("report", str(sid), "--format", fmt, "-o", str(path), "--db", str(db))
            assert code == 0, err
            text = path.read_text(encoding="utf-8")
            assert "no difference shown" in text
            assert "(verified" not in text and "— verified" not in text and ">verified<" not in text
    md = (tmp_path / f"r{opt}.md").read_text(encoding="utf-8")
    assert "prune-mlp:0.25 (#1) — measured: no difference shown: measured" in md
    assert "A/B result — prune-mlp:0.25 (measured: no difference shown)" in md


def test_the_advisor_view_words_the_status_as_the_interval_reads(trial_db, qtbot):
    from wattlens.app.gui.models.advisor_model import AdvisorModel, recorded_lines, stored_advice
    from wattlens.app.gui.qt_advisor import QtRecommendationCard

    db, src, opt = trial_db
    store = Store(db)
    try:
        doc = stored_advice(store, src)
        (recorded,) = stored_advice(store, opt)["recorded"]
    finally:
        store.close()
    assert recorded_lines(recorded)[0] == "prune-mlp:0.25 (measured: no difference shown, action #1)"
    m = AdvisorModel()
    m.set_session(src, doc["recommendations"], doc["outcomes"])
    (view,) = m.recommendations
    assert view.outcome_lines[0].startswith("applied: prune-mlp:0.25 (measured: no difference shown, action #1")
    # an Apply that just finished: its card's line, from the optimize child's JSON document
    state = m.start_apply("prune-mlp:0.25", "/models/tiny", "/models/tiny-pruned")
    m.apply_done("prune-mlp:0.25", {"status": "verified", "session_id": opt,
                                    "result": _opt_result(0.01, (-0.02, 0.04)),
                                    "measured_text": "−1.0 % energy per sample (saving), 95 % CI …; "
                                                     "the interval includes no change, so this run does not "
                                                     "show a difference",
                                    "predicted_text": "−12.0 % energy per sample (saving)"})
    assert state.status == "verified" and state.status_text == "measured: no difference shown"
    card = QtRecommendationCard(view, state, lambda action: None)
    qtbot.addWidget(card)
    card.resize(900, 420)
    text = card.progress.text()
    assert "measured: no difference shown" in text and "verified" not in text, text
    assert "measured: no difference shown" in card.outcome.text() and "(verified" not in card.outcome.text()
    card.grab().save(str(Path(os.environ.get("WATTLENS_SHOT_DIR", "/tmp")) / "abx.png"))


# ============================================== 2. a refusal: measured, stored, nothing written


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_hf(tiny_gpt2(), tmp_path_factory.mktemp("gpt2") / "gpt2")


def test_a_refused_copy_is_measured_and_nothing_is_written(gpt2_dir, tmp_path):
    from wattlens.advisor.optimize import QualityLossError, optimize

    before = _hashes(gpt2_dir)
    stages: list[str] = []
    out = tmp_path / "pruned"
    with pytest.raises(QualityLossError) as err:
        optimize(gpt2_dir, "prune-mlp:0.5", out, max_quality_loss=1e-9, n_rounds=2, min_window_s=0.05,
                 warmup_batches=1, progress=lambda s, f: stages.append(s))
    assert "verify" in stages  # measured: what it would save is what healing can keep
    result = err.value.result
    assert result.verification is not None and not result.quality_ok
    refusal = result.refusal
    assert refusal["quality_loss"] > 1e-9 and refusal["exceeded_by"] == pytest.approx(refusal["quality_loss"] - 1e-9)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1
    assert "exceeds --max-quality-loss 1e-09 by" in message and "raise --max-quality-loss to at least" in message
    # nothing written (the same --out takes the next try: no "already exists"); the model untouched
    assert result.out_dir is None and not out.exists() and "nothing was written" in message
    assert _hashes(gpt2_dir) == before


def test_a_refusal_says_one_line_exits_1_and_prints_one_json_document(gpt2_dir, tmp_path):
    db, out = tmp_path / "w.db", tmp_path / "pruned"
    before = _hashes(gpt2_dir)
    code, stdout, stderr = _main("optimize", str(gpt2_dir), "--action", "prune-mlp:0.5", "--out", str(out),
                                 "--rounds", "2", "--max-quality-loss", "0", "--db", str(db), "--json")
    assert code == 1
    doc = json.loads(stdout)  # one valid document, and nothing else on stdout
    assert doc["status"] == "refused" and doc["refusal"]["quality_loss"] > 0
    assert doc["result"]["verification"] is not None
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("wattlens: prune-mlp:0.5 refused: quality loss ")
    assert f"exceeds --max-quality-loss 0 by {doc['refusal']['quality_loss']:.4g}" in last
    assert "raise --max-quality-loss to at least" in last
    assert "nothing was written" in last and not out.exists() and _hashes(gpt2_dir) == before
    store = Store(db)
    try:
        (action,) = store.actions(doc["session_id"])
        assert action["status"] == "refused" and action["result"]["verification"] is not None
        assert store.session(doc["session_id"])["status"] == "failed"
        o = present.outcome(action, None)
        assert o.status_text == "refused: quality loss above the limit, not written"
        assert "energy per sample" in o.measured  # what it would have saved
    finally:
        store.close()


# =================================================================== 3. a disturbed round


class WorkPowercap:
    """A powercap tree (the hardware boundary) with one RAPL package zone whose ``energy_uj``
    advances by ``uj_per_batch`` for every forward batch of the models it is attached to, and by
    ``factor`` times that while ``disturbed`` (another process loading the package). Written by
    rename, so the sampler never reads a half-written file."""

    def __init__(self, root: Path, uj_per_batch: int = 200_000, factor: int = 40):
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text("262143328850\n")
        self.uj, self.per, self.factor, self.disturbed = 0, uj_per_batch, factor, False
        self._lock = threading.Lock()
        self._write()

    def _write(self) -> None:
        tmp = self.zone / ".energy_uj.tmp"
        tmp.write_text(f"{self.uj}\n")
        os.replace(tmp, self.zone / "energy_uj")

    def attach(self, *models) -> None:
        for m in models:
            m.register_forward_hook(self._on_forward)

    def _on_forward(self, *_args) -> None:
        with self._lock:
            self.uj += self.per * (self.factor if self.disturbed else 1)
            self._write()

    def meter(self):
        from wattlens.profiler.meter import EnergyMeter
        from wattlens.profiler.sources.rapl import discover_rapl

        sources, problems = discover_rapl(self.zone.parent)
        assert sources and not problems, problems
        return EnergyMeter(sources=sources, interval_s=0.02)


def _disturbed_ab(tmp_path, n_rounds: int, disturbed: set[int], during_retry: bool):
    """ab_verify of tiny GPT-2 against its pruned copy; the rounds in ``disturbed`` (from 0) read
    ``factor`` × their work's energy, and so does each re-measurement when ``during_retry``."""
    from wattlens.advisor.verify import ab_verify

    base = tiny_gpt2()
    cand = parse_action("prune-mlp:0.5").apply(base)
    cap = WorkPowercap(tmp_path / "powercap")
    cap.attach(base, cand)
    stages: list[tuple[str, float]] = []

    def progress(stage: str, fraction: float) -> None:
        stages.append((stage, fraction))
        if stage == "verify":  # round r finished: the next one is (or is not) disturbed
            cap.disturbed = round(fraction * n_rounds) in disturbed
        elif stage.startswith("re-measure"):  # optimize prints it: "wattlens: re-measure a disturbed round…"
            cap.disturbed = during_retry and fraction < 1.0

    cap.disturbed = 0 in disturbed
    v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=n_rounds, warmup_batches=1,
                  min_window_s=0.1, meter=cap.meter(), progress=progress)
    return v, stages


def _counted_round(v, index: int) -> tuple[float, float]:
    return v.baseline.round_energy_per_sample_j[index], v.candidate.round_energy_per_sample_j[index]


def test_a_disturbed_round_is_measured_once_more_and_left_out_of_the_interval(tmp_path):
    from wattlens.advisor.verify import paired_saving

    v, stages = _disturbed_ab(tmp_path, 4, {2}, during_retry=False)
    assert v.n_rounds == 4 and v.saving_fraction is not None, (v.refused_rounds, v.saving_reason)
    # the figure rests on no disturbed measurement (round 3 read 40× its work's energy)
    for arm in (v.baseline, v.candidate):
        assert max(arm.round_energy_per_sample_j) < 10 * min(arm.round_energy_per_sample_j), arm
    assert any(s.startswith("re-measure") for s, _ in stages)
    from wattlens.advisor.verify import MAX_REMEASURED_ROUNDS

    assert 1 <= v.n_remeasured <= MAX_REMEASURED_ROUNDS
    rec = next(r for r in v.remeasured if r["round"] == 3)
    # both measurements are in the record; the figure counts the re-measurement
    assert rec["counted"] == "remeasurement", rec
    disturbed = rec["disturbed"]["candidate"]["energy_per_sample_j"]
    again = rec["remeasurement"]["candidate"]["energy_per_sample_j"]
    assert disturbed > 10 * again
    assert _counted_round(v, 2) == (rec["remeasurement"]["baseline"]["energy_per_sample_j"], again)
    assert disturbed not in v.candidate.round_energy_per_sample_j
    saving, interval, _ = paired_saving(list(v.baseline.round_energy_per_sample_j),
                                        list(v.candidate.round_energy_per_sample_j),
                                        samples=list(v.baseline.round_samples))
    assert (v.saving_fraction, v.saving_interval) == (saving, interval)
    note = next(n for n in v.notes if n.startswith("counted round 3 was disturbed"))
    assert "measured once more" in note and "left out of the figure and its interval" in note
    json.dumps(v.to_dict())  # stored in the action's result as it is

    # what optimize prints, and every report shows: how many rounds were measured again, and why
    from wattlens.app.present import rounds_text
    from wattlens.app.report.rich_view import verification_rows

    text = rounds_text(v.to_dict())
    assert text.startswith("4 counted") and f"{v.n_remeasured} re-measured after a disturbance" in text
    rows = dict(verification_rows({"verification": json.loads(json.dumps(v.to_dict()))}))  # as stored
    assert rows["Rounds"] == text and note in rows["Notes"]


def test_a_round_disturbed_again_is_counted_and_named_as_before(tmp_path):
    v, _ = _disturbed_ab(tmp_path, 4, {1}, during_retry=True)
    assert v.saving_fraction is not None, (v.refused_rounds, v.saving_reason)
    assert any(n.startswith("counted round 2: its re-measurement read as disturbed too") for n in v.notes), v.notes
    rec = next(r for r in v.remeasured if r["round"] == 2)
    assert rec["counted"] == "remeasurement" and rec["disturbed_again"] is True
    assert sum(r["round"] == 2 for r in v.remeasured) == 1  # one re-measurement per round, no more
    # today's behaviour for it: counted by the pooled estimator and named
    assert _counted_round(v, 1)[1] == rec["remeasurement"]["candidate"]["energy_per_sample_j"]
    assert any(n.startswith("counted round 2: the candidate read") for n in v.notes), v.notes


def test_re_measurements_are_capped(tmp_path):
    v, _ = _disturbed_ab(tmp_path, 7, {0, 2, 4}, during_retry=False)
    assert any("not measured again (at most 2 re-measurements per run)" in n for n in v.notes), v.notes
    from wattlens.advisor.verify import MAX_REMEASURED_ROUNDS

    assert v.n_remeasured == MAX_REMEASURED_ROUNDS == 2
    assert len({r["round"] for r in v.remeasured}) == 2
