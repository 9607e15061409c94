"""The rank rules on per-rank figures (profiler.ranks.per_rank rows): idle-rank and fewer-ranks
fire on their evidence and stay silent without it. The real 2-rank gloo jobs are in
tests/test_rank_energy.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from wattlens.advisor.features import GpuFeatures
from wattlens.advisor.rules import RULES, fewer_ranks, idle_rank


def _rank(rank, step_s, coll_s, energy_j=None, device="cpu", steps=50):
    return {"rank": rank, "local_rank": rank, "device": device, "steps": steps, "mean_step_s": step_s,
            "collective_s_per_step": coll_s, "collective_share": coll_s / step_s,
            "busy_s_per_step": step_s - coll_s, "collective_s_by_op": {"all_reduce": coll_s * steps},
            "energy_per_step_j": energy_j, "energy_j": None}


def _features(*ranks, timed=True, gpus=()):
    job = {"world_size": len(ranks), "ranks_seen": len(ranks), "ranks": list(ranks), "collectives_timed": timed,
           "energy_method": "per-rank CPU time + GPU per-process share of its device"}
    return SimpleNamespace(ranks=job, gpus=tuple(gpus))


def test_both_rules_are_registered():
    assert idle_rank in RULES and fewer_ranks in RULES


def test_idle_rank_names_the_rank_that_waits_and_its_energy():
    f = _features(_rank(0, 0.10, 0.01, 1.0), _rank(1, 0.10, 0.09, 0.4), _rank(2, 0.10, 0.02, 0.9))
    recs = idle_rank.evaluate(f)
    assert [r.title for r in recs] == ["Rank 1 is mostly idle: it waits in collectives for the other ranks"]
    ev = {e.what: e.value for e in recs[0].evidence}
    assert ev["rank 1 power while waiting"] == pytest.approx(4.0)  # 0.4 J / 0.1 s, its mean power
    assert ev["rank 1 energy spent waiting, per step (estimated)"] == pytest.approx(0.36)
    assert ev["rank 1 energy spent waiting over the run (estimated)"] == pytest.approx(18.0)
    assert 0 < recs[0].predicted_saving.low < recs[0].predicted_saving.high <= 0.36 / 2.3 + 1e-9


def test_idle_rank_uses_the_devices_measured_idle_power_on_a_gpu():
    gpu = GpuFeatures("nvml:1", "H100", None, None, None, None, None, None, idle_power_w=60.0)
    f = _features(_rank(0, 0.1, 0.01, 30.0, "cuda:0"), _rank(1, 0.1, 0.09, 10.0, "cuda:1"), gpus=[gpu])
    ev = {e.what: e for e in idle_rank.evaluate(f)[0].evidence}
    assert ev["rank 1 power while waiting"].value == 60.0
    assert "measured idle power of nvml:1" in ev["rank 1 power while waiting"].source


@pytest.mark.parametrize("ranks, timed", [
    ((_rank(0, 0.1, 0.02, 1.0), _rank(1, 0.1, 0.03, 1.0)), True),   # balanced
    ((_rank(0, 0.1, 0.01, 1.0), _rank(1, 0.1, 0.09, 0.4)), False),  # collectives not timed
    ((_rank(0, 0.1, 0.08, 1.0), _rank(1, 0.1, 0.09, 1.0)), True),   # both wait alike (comm-bound)
    ((_rank(0, 0.1, 0.01, 1.0), _rank(1, 0.1, 0.04, 1.0)), True),   # less busy, but waits < half
    ((_rank(0, 0.1, 0.01, 1.0),), True),                             # one rank
], ids=["balanced", "untimed", "all-waiting", "waits-little", "single"])
def test_idle_rank_stays_silent_without_its_evidence(ranks, timed):
    assert idle_rank.evaluate(_features(*ranks, timed=timed)) == []


def test_fewer_ranks_predicts_the_energy_of_the_same_work_on_fewer_ranks():
    # 2 ranks, 10 ms work each, 90 ms in collectives of a 100 ms step, 0.5 J per step each
    f = _features(*[_rank(r, 0.1, 0.09, 0.5) for r in range(2)])
    rec = fewer_ranks.evaluate(f)[0]
    assert rec.title.startswith("Run the same work on 1 rank instead of 2")
    s = rec.predicted_saving
    # waiting power = mean power 5 W: E_wait = 2 × 0.09 × 5 = 0.9 J of 1.0 J; one rank needs no
    # communication (optimistic: 0.1 J) or keeps 0.09 s × 5 W = 0.45 J (pessimistic: 0.55 J)
    assert s.high == pytest.approx(1 - 0.1 / 1.0) and s.low == pytest.approx(1 - 0.55 / 1.0)
    assert any("assumes" in n for n in rec.notes) and rec.confidence == "low"


def test_fewer_ranks_halves_the_ranks_and_states_the_step_time():
    # 4 ranks waiting 80 % of a 100 ms step: 2 ranks with twice the per-rank batch, 40 ms of work
    # each, communication 80 ms × ring(2 of 4) = 53 ms … 80 ms
    rec = fewer_ranks.evaluate(_features(*[_rank(r, 0.1, 0.08, 0.5) for r in range(4)]))[0]
    assert rec.title.startswith("Run the same work on 2 ranks instead of 4, with 2× the per-rank batch")
    assert "a step takes 93.3–120 ms (now 100 ms)" in rec.rationale
    # below the waiting threshold (40 % in collectives): silent
    assert fewer_ranks.evaluate(_features(*[_rank(r, 0.1, 0.04, 0.5) for r in range(4)])) == []


@pytest.mark.parametrize("ranks, timed", [
    ([_rank(r, 0.1, 0.02, 0.5) for r in range(2)], True),             # busy ranks
    ([_rank(r, 0.1, 0.09, 0.5) for r in range(2)], False),            # collectives not timed
    ([_rank(0, 0.1, 0.09, 0.5), _rank(1, 0.1, 0.09, None)], True),    # a rank without step energy
    ([_rank(0, 0.1, 0.09, 0.5), _rank(1, 0.1, 0.2, 0.5)], True),      # a rank busy most of its step
    ([_rank(0, 0.1, 0.09, 0.5)], True),                               # one rank
], ids=["busy", "untimed", "no-energy", "one-busy", "single"])
def test_fewer_ranks_stays_silent_without_its_evidence(ranks, timed):
    assert fewer_ranks.evaluate(_features(*ranks, timed=timed)) == []
