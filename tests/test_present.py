"""app/present.py and the advisor model's text: one wording of advice and outcomes everywhere."""

from __future__ import annotations

from wattlens.advisor.recommend import (
    Evidence,
    PredictedSaving,
    Recommendation,
    Risk,
    rule_of_thumb,
)
from wattlens.app import present
from wattlens.app.gui.models.advisor_model import AdvisorModel


def _rec(ps: PredictedSaving, action: str | None = "prune-mlp:0.2") -> dict:
    return Recommendation(rule="prune-mlp", title="Prune the MLP", rationale="MLP takes the time.",
                          evidence=(Evidence("MLP share", 0.5, "fraction", "stack sampling"),),
                          predicted_saving=ps, confidence="low", risk=Risk("high", "quality drops"),
                          action=action).to_dict()


def _action(saving: float, *, src: int = 1) -> dict:
    return {"id": 7, "session_id": 9, "kind": "prune-mlp:0.2", "status": "verified", "source_session_id": src,
            "params": {"recommendation_index": 0},
            "result": {"verification": {"saving_fraction": saving, "saving_interval": [saving - 0.05, saving + 0.05],
                                        "baseline": {"energy_method": "counter"}},
                       "fidelity": {"top1_agreement": 0.97, "kl_base_candidate": 0.01}}}


def test_a_prediction_whose_interval_includes_zero_is_not_advice():
    m = AdvisorModel()
    m.set_session(1, [_rec(PredictedSaving(0.0, -0.05, 0.05, "regression", "")),
                      _rec(rule_of_thumb(0.1, 0.3, "published results"))])
    held, advice = m.recommendations
    assert held.held.startswith("not worth it yet: the predicted interval −5.0 % … +5.0 % includes no change")
    assert advice.held is None and advice.saving_text.startswith("predicted: −20.0 % energy per sample (saving)")
    m.set_advice({"session_id": 1, "recommendations": [_rec(PredictedSaving(0.0, -0.05, 0.05, "regression", ""))],
                  "silent_rules": []})
    assert m.status.startswith("0 recommendation(s), 1 not worth it yet")
    assert "risk to quality: high — quality drops" == m.recommendations[0].risk_text  # never a dict


def test_outcome_sits_beside_its_recommendation_and_is_flagged_outside_the_interval():
    docs = [_rec(rule_of_thumb(0.1, 0.3, "published results"))]
    recs, bad = present.read_recommendations(docs)
    assert bad == []
    inside, outside = present.outcomes(recs, [_action(0.2)], 1)[0], present.outcomes(recs, [_action(0.609)], 1)[0]
    assert not inside.flagged and inside.flag_text == "within the predicted interval"
    assert outside.flagged and outside.flag_text.startswith("FLAGGED: measured −60.9 % lies outside")
    # outside, but the measurement's own interval (±5 pp here) reaches the prediction: not a contradiction
    near = present.outcomes(recs, [_action(0.34)], 1)[0]
    assert not near.flagged and "cannot tell them apart" in near.flag_text and "FLAGGED" not in near.flag_text
    assert outside.predicted.startswith("−20.0 % energy per sample (saving), interval −30.0 % … −10.0 %")
    assert outside.measured.startswith("−60.9 % energy per sample (saving), 95 % CI")
    assert outside.fidelity == "top-1 agreement 97.0 %, KL 0.01 nats"
    assert present.outcomes(recs, [_action(0.2, src=2)], 1) == []  # applied from another session
    m = AdvisorModel()
    m.set_session(1, docs, [outside])
    lines = m.recommendations[0].outcome_lines
    assert lines[1] == f"predicted: {outside.predicted}" and lines[2] == f"measured: {outside.measured}"
    assert lines[3].startswith("FLAGGED")


def test_a_share_reads_as_a_percent_in_the_evidence_as_in_the_layer_table():
    # The layer rules' evidence is "fraction of sampled time"; it read "0.1213 fraction of sampled
    # time" beside a table that says "12.1 %" for the same figure.
    top = Evidence("self time share of lm_head", 0.1213, "fraction of sampled time", "agent timing")
    assert present.evidence_text(top) == "self time share of lm_head: 12.1 % of sampled time  [agent timing]"
    assert present.value_text(0.5, "fraction") == "50.0 %"
    assert present.value_text(0.5, "fractions") == "0.5 fractions"  # only the unit named so


def test_an_applied_action_measured_without_a_prior_prediction_says_so_not_measure_first():
    """The Markdown report's actions printed "predicted measure first: wattlens optimize …", the
    command that had just measured it."""
    from wattlens.advisor.recommend import measure_first

    action = _action(0.1)
    action["result"]["predicted"] = measure_first(
        "0 earlier A/B results of prune-mlp", "wattlens optimize MODEL --action prune-mlp:0.2").to_dict()
    o = present.outcome(action, None)
    assert o.predicted == "no prediction before this run (0 earlier A/B results of prune-mlp)"
    assert "measure first" not in o.predicted and not o.flagged


def test_a_measured_saving_whose_interval_includes_no_change_says_it_shows_no_difference():
    # the A/B figure stays (it is what was measured); beside it, that it proves nothing either way
    unproven = present.measured_text(0.05, (-0.02, 0.12), "counter")
    assert unproven.startswith("−5.0 % energy per sample (saving), 95 % CI −12.0 % … +2.0 % (counter)")
    assert unproven.endswith("does not show a difference")
    assert "difference" not in present.measured_text(0.05, (0.01, 0.12), "counter")
    # no interval (one counted round): the number, and that it is unverified and why
    one = present.measured_text(0.05, None, "counter", "one round gives no interval; use n_rounds ≥ 2")
    assert one == ("−5.0 % energy per sample (saving) (counter); unverified: one round gives no interval; "
                   "use n_rounds ≥ 2")


def test_an_optimize_session_gets_no_analyse_even_with_no_result_recorded():
    # a batch-size sweep (or a run stopped first) records no action: still the optimizer's own process
    m = AdvisorModel()
    m.set_session(4, [], [], [], optimizer=True)
    assert m.optimizer and m.status.startswith("an optimize run: it recorded no A/B result")
    m.set_session(5, [], [], [])
    assert not m.optimizer and m.status == ("no recommendation stored for this session (not analysed yet, or "
                                            "the last analysis found none) — press Analyse")


def test_fidelity_text_shows_every_measured_agreement_and_says_when_none_was():
    encoder = {"mode": "cosine", "cosine_similarity": 0.99871, "cosine_similarity_min": 0.9712,
               "quality_loss": 0.00129, "quality_metric": "1 - mean cosine similarity",
               "top1_agreement": None, "kl_base_candidate": None,
               "perplexity_base": None, "perplexity_candidate": None,
               "perplexity_reason": "perplexity needs a causal language model"}
    assert present.fidelity_text(encoder) == ("cosine 0.9987 (lowest 0.9712), "
                                              "quality loss (1 - mean cosine similarity) 0.00129")
    lm = {"top1_agreement": 0.995, "kl_base_candidate": 0.002, "perplexity_base": 412.3,
          "perplexity_candidate": 415.9, "quality_loss": 0.0087, "quality_metric": "relative perplexity increase"}
    assert present.fidelity_text(lm) == ("top-1 agreement 99.5 %, KL 0.002 nats, perplexity 412.3 → 415.9, "
                                         "quality loss (relative perplexity increase) 0.0087")
    assert present.fidelity_text(None) == present.fidelity_text({}) == "n/a (not measured)"


def test_a_point_inside_with_a_wide_interval_is_not_called_within_the_prediction():
    """Session 7 of the trial: the point estimate sat inside the predicted −10.9 … −6.5 % while the
    measurement's own 95 % CI was −85.7 … +456.1 %: the check says what holds, not a confirmation."""
    recs, _ = present.read_recommendations([_rec(rule_of_thumb(0.065, 0.109, "published results"))])
    wide = _action(0.08)
    wide["result"]["verification"]["saving_interval"] = [-4.561, 0.857]
    (o,) = present.outcomes(recs, [wide], 1)
    assert not o.flagged and "within the predicted interval" not in o.flag_text
    assert o.flag_text == ("point estimate inside the predicted interval −10.9 % … −6.5 %; the measurement's "
                           "own 95 % CI −85.7 % … +456.1 % is too wide to confirm it")
    assert "does not show a difference" in o.measured  # beside the stored status word, in the same row


def test_layer_coverage_names_a_rest_only_where_there_is_one():
    from wattlens.profiler.summary import layer_coverage

    part = layer_coverage(126.6, 139.2, {"stack-sampling"}, estimated=True)["text"]
    assert part.startswith("layers: 126.6 J of the target's 139.2 J (estimated, 91 %)")
    assert part.endswith("the rest: between the sampling windows")
    whole = layer_coverage(23.2, 23.2, {"stack-sampling"})["text"]  # the trial's session 5 read '100 % … the rest'
    assert "100 %" in whole and "the rest" not in whole
    assert layer_coverage(None, 23.2) is None and layer_coverage(1.0, 0.0) is None
