"""CSV and trace exports of a stored 2-rank job keep each row's rank: the two ranks' "step 0"
rows are told apart, and the trace draws each rank's steps (and layers) on its own track."""

from __future__ import annotations

import csv
import json

from wattlens.app.report.formats import write_report
from wattlens.profiler.records import LayerCost, StepRecord
from wattlens.profiler.store import Store


def _job(store: Store, ranks: tuple[int | None, ...]) -> int:
    sid, _ = store.create_session(name="job", kind="run", started_at=0.0, start_ns=0)
    steps = [StepRecord(i, i * 10**8, (i + 1) * 10**8 - 10**6, samples=4, energy_j=0.5 + (r or 0),
                        rank=r, local_rank=r, world_size=None if r is None else len(ranks))
             for r in ranks for i in range(3)]
    layers = [LayerCost(0, 3 * 10**8, "model.mlp", "instance", "agent-timing", 0.1, 0.5, 0.2, 0.1, 0.2, rank=r)
              for r in ranks]
    store.write_batch(sid, (), steps=steps, layer_costs=layers)
    return sid


def _csv(store, sid, what, tmp_path):
    path = write_report(store, sid, "csv", tmp_path / f"{what}.csv", what=what)
    return list(csv.DictReader(path.open()))


def test_csv_rows_carry_their_rank(db_path, tmp_path):
    store = Store(db_path)
    try:
        job, single = _job(store, (0, 1)), _job(store, (None,))
        steps = _csv(store, job, "steps", tmp_path)
        assert sorted((r["rank"], r["step"]) for r in steps if r["step"] == "0") == [("0", "0"), ("1", "0")]
        assert {r["rank"] for r in _csv(store, job, "layers", tmp_path)} == {"0", "1"}
        # a single-process session: the column is there, empty (not 0)
        assert {r["rank"] for r in _csv(store, single, "steps", tmp_path)} == {""}
        assert {r["rank"] for r in _csv(store, single, "layers", tmp_path)} == {""}
    finally:
        store.close()


def test_trace_has_one_steps_track_per_rank(db_path, tmp_path):
    store = Store(db_path)
    try:
        job = _job(store, (0, 1))
        doc = json.loads(write_report(store, job, "trace", tmp_path / "t.json").read_text())
    finally:
        store.close()
    ev = doc["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    step_tids = {e["args"]["rank"]: e["tid"] for e in ev if e.get("cat") == "step"}
    assert set(step_tids) == {0, 1} and step_tids[0] != step_tids[1]
    assert [names[step_tids[r]] for r in (0, 1)] == ["steps, rank 0", "steps, rank 1"]
    for r in (0, 1):  # each track holds one rank's steps only: none overlap
        assert sorted(e["args"]["step"] for e in ev if e.get("cat") == "step" and e["tid"] == step_tids[r]) == [0, 1, 2]
    layer_tids = {e["args"]["rank"]: e["tid"] for e in ev if str(e.get("cat", "")).startswith("layer")}
    assert set(layer_tids) == {0, 1} and layer_tids[0] != layer_tids[1]
    assert len(set(names)) == len(names) and not set(layer_tids.values()) & set(step_tids.values())


def test_the_json_report_of_a_job_counts_job_steps_and_keeps_to_the_schema(db_path, tmp_path):
    from pathlib import Path

    from tests.test_report_views import validate
    from wattlens.profiler.summary import step_stats

    store = Store(db_path)
    try:
        job = _job(store, (0, 1))
        store.finish_session(job, status="completed", end_reason=None, ended_at=1.0, duration_s=1.0,
                             summary={"steps": step_stats(store.steps(job))})
        doc = json.loads(write_report(store, job, "json", tmp_path / "r.json").read_text())
        schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "report-schema.json").read_text())
        validate(doc, schema)
        st = doc["summary"]["steps"]
        assert (st["count"], st["ranks"], st["rank_steps"]) == (3, 2, 6)
        assert st["energy_per_step_j"] == 0.5 + 1.5  # both ranks' share of each job step
    finally:
        store.close()
