"""The per-rank layer view names an nn.Sequential model's layers by class and index
("Sequential.0 (Linear)"), by the agent's naming rule, never as a bare index ("0")."""

from __future__ import annotations

import torch

from tests.test_agent_tracker import Sink
from wattlens.app.report.rank_layers import rank_layer_rows
from wattlens.profiler.agent.naming import display_name
from wattlens.profiler.agent.tracker import Tracker
from wattlens.profiler.agentlink import layer_costs
from wattlens.profiler.rank_layers import module_classes, per_rank_layers
from wattlens.profiler.records import EventRecord

pytest_plugins = ["tests.ranks_jobs"]


def _rank_of_a_sequential_model(rank: int) -> tuple[EventRecord, list]:
    """One rank's agent timing a real nn.Sequential training loop: the hello it would send (its
    model table, as agentlink stores it) and its layer rows."""
    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=0, count_flops="off")
    tracker.install()
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 64)
    try:
        for _ in range(4):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    models = {m["prefix"]: {k: v for k, v in m.items() if k != "type"} for m in sink.of("model")}
    hello = EventRecord(0, "agent-hello", "agent reported its process and models",
                        {"pid": 1000 + rank, "rank": rank, "models": list(models.values())})
    rows = [lc for msg in sink.of("layers") for lc in layer_costs(msg, 1.0, rank=rank)]
    return hello, rows


def test_sequential_layers_are_named_by_class_and_index_in_the_rank_table():
    hellos, layers = [], []
    for rank in (0, 1):
        hello, rows = _rank_of_a_sequential_model(rank)
        hellos.append(hello)
        layers += rows
    assert {lc.path for lc in layers if lc.granularity == "instance"} >= {"0", "2"}  # the agent's paths
    out = per_rank_layers(layers, events=hellos)
    names = [t["name"] for r in out["ranks"] for t in r["top"] if t["path"] in ("0", "1", "2")]
    assert names and set(names) <= {"Sequential.0 (Linear)", "Sequential.1 (ReLU)", "Sequential.2 (Linear)"}
    for row in rank_layer_rows(out):
        shown = row[4].split(", ")
        assert any(s.startswith("Sequential.") and "(Linear)" in s for s in shown), row
        assert not any(s.split(" ")[0].isdigit() for s in shown), row  # never a bare "0 41 %"
        named = [s.rsplit(" ", 2)[0] for s in shown]
        assert len(named) == len(set(named)), row  # a layer's backward row is told from its forward


def test_display_name_follows_the_agents_paths():
    classes = {"": "Sequential", "0": "Block", "0.fc": "Linear", "head": "Linear"}
    assert display_name("0", classes) == "Sequential.0 (Block)"
    assert display_name("0.fc", classes) == "Sequential.0.fc (Linear)"
    assert display_name("head", classes) == "head (Linear)"
    assert display_name("3", {}) == "3"  # no model table: the path as it is
    assert display_name("", classes) == ""  # the root: the views name it "(model root)"
    # a second root keeps its own "@Class" prefix, which already names its container
    assert display_name("@Sequential.0", {"@Sequential.0": "Linear"}) == "@Sequential.0 (Linear)"


def test_a_stored_two_rank_job_names_its_sequential_layers(heavy_rank0_job):
    """The real job (workloads/ddp_ranks.py, an nn.Sequential under DDP on gloo): the hellos the
    store kept name each rank's layers."""
    from wattlens.app.report.data import build_report
    from wattlens.profiler.store import Store

    db, session_id = heavy_rank0_job
    store = Store(db)
    try:
        events = store.events(session_id)
        report = build_report(store, session_id)  # what show and every report format print
    finally:
        store.close()
    classes = module_classes(events)
    assert set(classes) == {0, 1}
    out = report["rank_layers"]
    for r in out["ranks"]:
        indexed = [t for t in r["top"] if t["path"][:1].isdigit()]
        assert indexed, r["top"]
        assert all(t["name"].startswith(f"{classes[r['rank']]['']}.") and t["name"].endswith(")")
                   for t in indexed), r["top"]
