"""Prometheus metrics (--metrics-port): per-rank energy, the label sets of each family, HEAD.

Served on a real port and read with urllib; the per-rank figures come from the real RankSplit
(profiler/rank_energy.py) and, end to end, from a real 2-rank gloo job under `wattlens run`.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_cli
from wattlens.profiler import rank_energy
from wattlens.profiler.metrics import MetricsExporter
from wattlens.profiler.rank_energy import GpuTick, RankSplit
from wattlens.profiler.ranks import rank_totals
from wattlens.profiler.records import SamplePoint, StepRecord

RANKS_JOB = Path(__file__).parent / "workloads" / "ddp_ranks.py"  # the 2-rank gloo job tests/ranks_jobs.py runs


def _get(url: str, method: str = "GET"):
    """(status, headers, body) of one request; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _families(url: str) -> dict:
    status, _headers, body = _get(url)
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


@pytest.fixture
def exporter():
    made: list[MetricsExporter] = []

    def make() -> MetricsExporter:
        ex = MetricsExporter(0)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.stop()


def _two_ranks(now: list[int], events: list) -> RankSplit:
    split = RankSplit(clock_ns=lambda: now[0], on_event=events.append)
    split.register(1001, 0)
    split.register(1002, 1)
    return split


#: the launcher (1000) and its two rank processes
PARENTS = {1000: None, 1001: 1000, 1002: 1000}


def _serving_two_ranks(exporter, sources: dict[str, str]):
    """(exporter serving a two-rank split over ``sources``, the split, its clock, its events, URL)."""
    now, events = [0], []
    split = _two_ranks(now, events)
    ex = exporter()
    ex._sources, ex.pid, ex.rank_split = sources, "1000", split
    return ex, split, now, events, f"http://127.0.0.1:{ex.start()}/metrics"


# ---- HTTP ------------------------------------------------------------------------------------------
def test_head_answers_as_get_does_without_a_body_and_other_paths_are_sensible(exporter):
    ex = exporter()
    ex._sources, ex.pid = {"rapl:0": "counter"}, "42"
    ex([SamplePoint("rapl:0/energy_j", 1, 10.0)])
    port = ex.start()
    base = f"http://127.0.0.1:{port}"
    get_status, get_headers, get_body = _get(base + "/metrics")
    status, headers, body = _get(base + "/metrics", "HEAD")
    assert (get_status, status) == (200, 200)  # prometheus_client's own handler answered HEAD 405
    assert body == b"" and b"wattlens_energy_joules_total" in get_body
    assert headers["Content-Type"] == get_headers["Content-Type"]
    assert int(headers["Content-Length"]) == len(get_body)  # a body of that length is what GET sends
    # "/" is a page that says where the metrics are (prometheus_client served metrics on any path)
    status, headers, body = _get(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'href="/metrics"' in body
    assert _get(base + "/", "HEAD")[:1] == (200,) and _get(base + "/", "HEAD")[2] == b""
    status, _h, body = _get(base + "/favicon.ico")
    assert status == 404 and b"/metrics" in body
    assert _get(base + "/nothing", "HEAD")[0] == 404
    status, headers, _b = _get(base + "/metrics", "DELETE")
    assert status == 405 and "HEAD" in headers["Allow"] and "GET" in headers["Allow"]
    status, headers, _b = _get(base + "/metrics", "OPTIONS")
    assert status == 200 and "HEAD" in headers["Allow"]


# ---- label sets ----------------------------------------------------------------------------------------
def test_each_series_carries_only_the_labels_it_can_have_and_none_is_empty(exporter):
    ex = exporter()
    ex._sources, ex.pid = {"rapl:0": "counter"}, "42"
    ex([SamplePoint("rapl:0/energy_j", 1, 10.0), SamplePoint("target/rapl:0/energy_j", 1, 4.0),
        SamplePoint("rapl:0/power_w", 1, 5.0), SamplePoint("target/rapl:0/power_w", 1, 2.0)])
    ex.add_step(StepRecord(0, 0, 1, energy_j=1.5))  # a single-process job: no rank
    url = f"http://127.0.0.1:{ex.start()}/metrics"
    text = _get(url)[2].decode()
    assert '=""' not in text, text
    fams = _families(url)
    for name in ("wattlens_energy_joules", "wattlens_power_watts"):
        by_scope = {s.labels["scope"]: s.labels for s in fams[name].samples}
        assert set(by_scope["machine"]) == {"source", "method", "scope", "host"}  # a machine has no PID
        assert set(by_scope["target"]) == {"source", "method", "scope", "host", "pid"}
        assert by_scope["target"]["pid"] == "42"
    (steps,) = fams["wattlens_steps"].samples
    assert steps.labels == {"host": ex.host, "pid": "42"}
    assert {frozenset(s.labels) for s in fams["wattlens_step_energy_joules"].samples} == {
        frozenset({"host", "pid"})}
    assert "wattlens_rank_energy_joules" not in fams  # not a run with ranks


def test_a_ranks_steps_carry_its_rank_and_its_own_process(exporter):
    ex = exporter()
    ex.pid = "1000"  # the launcher
    ex.rank_split = _two_ranks([0], [])
    for i, rank in enumerate((0, 1, 1)):
        ex.add_step(StepRecord(i, i, i + 1, energy_j=1.0, rank=rank))
    fams = _families(f"http://127.0.0.1:{ex.start()}/metrics")
    steps = {s.labels["rank"]: s for s in fams["wattlens_steps"].samples}
    assert {r: (s.labels["pid"], s.value) for r, s in steps.items()} == {"0": ("1001", 1), "1": ("1002", 2)}


# ---- per-rank energy --------------------------------------------------------------------------------
def test_per_rank_energy_is_a_counter_with_each_ranks_process_and_the_reports_method(exporter):
    ex, split, _now, events, url = _serving_two_ranks(exporter, {"rapl:0": "counter"})
    parents = PARENTS
    series: dict[str, tuple[list, list]] = {}
    cpu = {1000: 0.0, 1001: 0.0, 1002: 0.0}
    seen = []
    for i in range(1, 4):
        cpu[1001] += 0.3  # rank 0 burns 3x rank 1's CPU time
        cpu[1002] += 0.1
        points = split.tick(i, cpu_s_by_pid=dict(cpu), parents=parents, cpu_j=4.0, gpus=[],
                            target_total_j=4.0 * i)
        ex(points)
        for p in points:
            series.setdefault(p.key, ([], []))[0].append(p.t_ns)
            series[p.key][1].append(p.value)
        seen.append({s.labels["rank"]: s for s in _families(url)["wattlens_rank_energy_joules"].samples})
    assert [sorted(s) for s in seen] == [["0", "1"]] * 3
    assert all(seen[i][r].value > seen[i - 1][r].value for i in (1, 2) for r in ("0", "1"))  # as it runs
    last = seen[-1]
    assert last["0"].value == pytest.approx(9.0) and last["1"].value == pytest.approx(3.0)
    assert {r: s.labels["pid"] for r, s in last.items()} == {"0": "1001", "1": "1002"}
    # the method label is the reports' "Energy method" of that rank, word for word
    rows = [{"rank": 0}, {"rank": 1}]
    rank_totals(rows, events, {k: (np.array(t), np.array(v)) for k, (t, v) in series.items()})
    assert [last[str(r["rank"])].labels["method"] for r in rows] == [r["energy_method"] for r in rows]
    assert last["0"].labels["method"] == rank_energy.CPU_BY_TIME
    assert set(last["0"].labels) == {"host", "pid", "rank", "method"}
    fam = _families(url)["wattlens_rank_energy_joules"]
    assert fam.type == "counter" and "estimate" not in fam.documentation  # measured sources, own figures


def test_per_rank_energy_says_it_is_an_estimate_when_it_is(exporter):
    # the CPU power model under it: an estimate
    ex, split, now, events, url = _serving_two_ranks(exporter, {"cpu-model": "estimated"})
    parents = PARENTS
    ex(split.tick(1, cpu_s_by_pid={1000: 0.0, 1001: 0.1}, parents=parents, cpu_j=1.0, gpus=[],
                  target_total_j=1.0))  # rank 1's PID 1002 never shows in the tree (another namespace)
    fam = _families(url)["wattlens_rank_energy_joules"]
    assert "An estimate" in fam.documentation and "CPU power model" in fam.documentation
    # a rank whose process is not in the tree: an equal split, said in its method and the HELP text
    ex._sources = {"nvml:0": "counter", "rapl:0": "counter"}
    now[0] = int((rank_energy.NOT_IN_TREE_AFTER_S + 1) * 1e9)
    ex(split.tick(now[0], cpu_s_by_pid={1000: 0.0, 1001: 1.0}, parents={1000: None, 1001: 1000}, cpu_j=8.0,
                  gpus=[GpuTick("nvml:0", 0, 2.0, None, None)], target_total_j=11.0))
    fam = _families(url)["wattlens_rank_energy_joules"]
    methods = {s.labels["rank"]: s.labels["method"] for s in fam.samples}
    assert methods["1"] == " + ".join([rank_energy.CPU_BY_TIME, rank_energy.CPU_EQUAL, rank_energy.GPU_EQUAL])
    assert "An estimate" in fam.documentation and "equal split" in fam.documentation
    assert "CPU power model" not in fam.documentation


def test_run_of_a_two_rank_job_serves_each_ranks_energy_as_it_runs(db_path):
    """A real 2-rank gloo job under `wattlens run --metrics-port 0`: both ranks' energy grows between
    scrapes, each under its own process, and the method is the one `show` reports afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattlens.app", "run", "--metrics-port", "0", "--db", str(db_path), "--json", "--",
         sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(RANKS_JOB),
         "10000000", "even"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = next(line.rsplit(" ", 1)[1].strip() for line in proc.stderr
                   if "serving Prometheus metrics at " in line)
        deadline = time.monotonic() + 240  # a hang guard only: the loop ends when both ranks grew
        first: dict = {}
        last: dict = {}
        steps: dict = {}
        while time.monotonic() < deadline:
            time.sleep(0.3)
            fams = _families(url)
            last = {s.labels["rank"]: s for s in fams["wattlens_rank_energy_joules"].samples}
            steps = {s.labels["rank"]: s.labels["pid"] for s in fams["wattlens_steps"].samples}
            if not first and set(last) == {"0", "1"}:
                first = last
            if first and all(last[r].value > first[r].value for r in ("0", "1")) and len(steps) == 2:
                break
        assert first and all(last[r].value > first[r].value for r in ("0", "1")), last
        launcher = {s.labels["pid"] for s in fams["wattlens_energy_joules"].samples if s.labels["scope"] == "target"}
        pids = {s.labels["pid"] for s in last.values()}
        assert len(pids) == 2 and not pids & launcher  # each rank's own process, not the launcher
        assert steps == {r: s.labels["pid"] for r, s in last.items()}  # one join key for steps and energy
        assert _get(url, "HEAD")[0] == 200
        methods = {r: s.labels["method"] for r, s in last.items()}
    finally:
        proc.send_signal(signal.SIGTERM)  # passed on to torchrun, which ends its workers
        out, err = proc.communicate(timeout=120)
    session_id = json.loads(out)["session_id"]
    show = run_cli("show", str(session_id), "--db", str(db_path), "--json")
    assert show.returncode == 0, show.stderr
    ranks = json.loads(show.stdout)["ranks"]["ranks"]
    assert {str(r["rank"]): r["energy_method"] for r in ranks} == methods, err[-2000:]
