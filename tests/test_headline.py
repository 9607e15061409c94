"""The report's opening lines say what the best measured result is (a saving, no change or a
cost), and an optimize session's A/B line does not tell the user to run the command that made it.
Sessions are real (a ProfilingSession of this machine); the actions are stored as
`wattlens optimize` stores them."""

from __future__ import annotations

import pytest

from wattlens.advisor.recommend import Evidence, Recommendation, Risk, measure_first, rule_of_thumb
from wattlens.app.report.data import build_report
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store

REC = Recommendation(
    rule="prune-mlp", title="Prune 25 % of the MLP neurons (structured)", rationale="MLPs dominate.",
    evidence=(Evidence("MLP share of the model's time", 0.6, "fraction", "agent timing"),),
    predicted_saving=rule_of_thumb(0.09, 0.15, "a stated rule"), confidence="low",
    risk=Risk("high", "check the fidelity"), action="prune-mlp:0.25")
MEASURE_CMD = "wattlens optimize MODEL --action prune-mlp:0.25 --out MODEL-prune-mlp-025"


def _session(store: Store, kind: str, name: str) -> int:
    session = ProfilingSession(store, target=None, kind=kind, name=name, interval_s=0.1,
                               duration_s=0.5, discovery=discover(gpu=False), stacks=False)
    sid = session.start()
    session.run(poll_s=0.05)
    return sid


def _result(saving: float, predicted: dict) -> dict:
    base, cand = 0.4, 0.4 * (1 - saving)
    one_round = saving == 0.3  # the one-round case below: a figure with no interval
    return {"verification": {"saving_fraction": saving,
                             "saving_interval": None if one_round else [saving - 0.02, saving + 0.02],
                             "baseline": {"energy_per_sample_j": base, "energy_method": "cpu-time share × counter"},
                             "candidate": {"energy_per_sample_j": cand, "energy_method": "cpu-time share × counter"},
                             "n_rounds": 3, "batches_per_round": 4},
            "predicted": predicted}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("headline") / "w.db")
    yield s
    s.close()


@pytest.mark.parametrize(("saving", "label"), [
    (0.2, "Largest measured saving"),
    (0.0, "Best measured result: no change"),
    (-0.5, "No measured saving — the least extra energy"),
    # its interval (±2 pp here) includes no change: a figure, not a shown saving
    (0.01, "Best measured result: not shown to differ from no change"),
    (0.3, "Best measured result: unverified (no interval)"),  # one counted round
])
def test_the_best_measured_result_is_labelled_for_what_it_is(store, saving, label):
    src = _session(store, "attach", "inference")
    store.add_recommendations(src, [REC.to_dict()])
    opt = _session(store, "optimize", "optimize model: prune-mlp:0.25")
    store.add_action(kind="prune-mlp:0.25", status="verified", params={"recommendation_index": 0},
                     result=_result(saving, REC.predicted_saving.to_dict()), session_id=opt,
                     source_session_id=src)
    lines = {h["label"]: h["text"] for h in build_report(store, src)["headline"]}
    assert label in lines, lines
    assert lines[label].startswith("prune-mlp:0.25: ")
    if saving < 0:
        assert "Largest measured saving" not in lines and "(costs more)" in lines[label]
    if saving == 0.01:
        assert "Largest measured saving" not in lines and "does not show a difference" in lines[label]


def test_an_optimize_sessions_line_says_there_was_no_prediction_instead_of_measure_first(store):
    opt = _session(store, "optimize", "optimize model: prune-mlp:0.25")
    why = "0 earlier A/B results of prune-mlp stored; a prediction needs at least 3"
    store.add_action(kind="prune-mlp:0.25", status="verified", params={},
                     result=_result(0.1, measure_first(why, MEASURE_CMD).to_dict()), session_id=opt)
    (ab,) = [h for h in build_report(store, opt)["headline"] if h["label"].startswith("A/B result")]
    assert "measure first" not in ab["text"] and MEASURE_CMD not in ab["text"]
    assert ab["text"].endswith(f"no prediction before this run ({why})")
    # a real prediction is still shown as one
    store.add_action(kind="prune-mlp:0.25", status="verified", params={},
                     result=_result(0.1, REC.predicted_saving.to_dict()), session_id=opt)
    texts = [h["text"] for h in build_report(store, opt)["headline"] if h["label"].startswith("A/B result")]
    assert any("; predicted −12.0 % energy per sample (saving)" in t for t in texts), texts


def test_a_session_still_recording_costs_so_far_not_over_n_a(store):
    """A report of a running session (another wattlens is recording it) read "… over n/a"."""
    session = ProfilingSession(store, target=None, kind="attach", name="still running", interval_s=0.1,
                               duration_s=None, discovery=discover(gpu=False), stacks=False)
    sid = session.start()
    try:
        from wattlens.app.report.headline import headline

        cost = headline(build_report(store, sid))[0]
        assert cost["label"] == "This session cost" and "so far (still recording)" in cost["text"], cost
        assert "n/a" not in cost["text"].split(";")[0].split(" for ")[1], cost
    finally:
        session.stop()


def test_a_one_round_figure_does_not_hide_a_sound_result(store):
    # a one-round +30 % (no interval) and a measured 10 % (with one): the sound one is the headline's
    src = _session(store, "attach", "inference")
    store.add_recommendations(src, [REC.to_dict()])
    opt = _session(store, "optimize", "optimize model: prune-mlp:0.25")
    for saving in (0.3, 0.1):
        store.add_action(kind=f"prune-mlp:{saving}", status="verified", params={"recommendation_index": 0},
                         result=_result(saving, REC.predicted_saving.to_dict()), session_id=opt,
                         source_session_id=src)
    lines = {h["label"]: h["text"] for h in build_report(store, src)["headline"]}
    assert lines["Largest measured saving"].startswith("prune-mlp:0.1: "), lines
