"""Prometheus metrics (--metrics-port): scraped for real over loopback during a real attach."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_cli

PACKAGING = os.path.join(os.path.dirname(os.path.dirname(__file__)), "packaging")


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _target_energy_j(scrape: dict) -> float | None:
    vals = [s.value for s in scrape.get("wattlens_energy_joules_total", []) if s.labels["scope"] == "target"]
    return sum(vals) if vals else None


def test_attach_serves_energy_that_increases_between_scrapes(torch_child, db_path):
    child = torch_child(120)
    proc = subprocess.Popen([sys.executable, "-m", "wattlens.app", "attach", str(child.pid), "--no-stacks",
                             "--metrics-port", "0", "--duration", "120", "--db", str(db_path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if "serving Prometheus metrics at " in line:
                url = line.rsplit(" ", 1)[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
        first = _scrape(url)
        deadline = time.monotonic() + 90  # a hang guard only: the loop ends at the first increase
        e0 = _target_energy_j(first)
        while e0 is None and time.monotonic() < deadline:
            time.sleep(0.3)
            first = _scrape(url)
            e0 = _target_energy_j(first)
        assert e0 is not None, first
        e1 = e0
        while e1 <= e0 and time.monotonic() < deadline:
            time.sleep(0.3)
            second = _scrape(url)
            e1 = _target_energy_j(second)
        assert e1 > e0
        energy = second["wattlens_energy_joules_total"]
        scopes = {(s.labels["source"], s.labels["scope"]): s for s in energy}
        cpu_machine, cpu_target = scopes[("cpu-model", "machine")], scopes[("cpu-model", "target")]
        assert cpu_machine.labels["method"] == "estimated"
        assert cpu_target.labels["method"] == "attributed-estimated"
        assert cpu_target.labels["pid"] == str(child.pid) and cpu_target.labels["host"] == socket.gethostname()
        assert set(cpu_target.labels) == {"source", "method", "scope", "host", "pid"}  # no rank: it has none
        assert set(cpu_machine.labels) == {"source", "method", "scope", "host"}  # no pid: not a process's
        powers = {(s.labels["source"], s.labels["scope"]) for s in second["wattlens_power_watts"]}
        assert ("cpu-model", "machine") in powers
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "stopped"  # measuring went on as without metrics


def test_run_counts_the_agents_steps_with_their_energy(db_path):
    loop = os.path.join(os.path.dirname(__file__), "workloads", "torch_loop.py")
    proc = subprocess.Popen([sys.executable, "-m", "wattlens.app", "run", "--metrics-port", "0", "--db",
                             str(db_path), "--json", "--", sys.executable, loop, "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = next(line.rsplit(" ", 1)[1].strip() for line in proc.stderr
                   if "serving Prometheus metrics at " in line)
        deadline = time.monotonic() + 90  # a hang guard only
        steps = []
        while not any(s.value > 0 for s in steps) and time.monotonic() < deadline:
            time.sleep(0.3)
            scrape = _scrape(url)
            steps = scrape.get("wattlens_steps_total", [])
        assert steps and steps[0].value > 0 and "rank" not in steps[0].labels  # one process: no rank label
        assert steps[0].labels["pid"].isdigit()  # the command's process
        counted = {s.name: s.value for s in scrape["wattlens_step_energy_joules_count"]
                   + scrape["wattlens_step_energy_joules_sum"]}
        assert counted["wattlens_step_energy_joules_count"] <= steps[0].value
        if counted["wattlens_step_energy_joules_count"]:
            assert counted["wattlens_step_energy_joules_sum"] > 0
    finally:
        out, err = proc.communicate(timeout=300)  # the job ends by itself after 20 s
    assert proc.returncode == 0, err
    assert json.loads(out)["steps"]["count"] >= steps[0].value


def test_taken_port_is_a_one_line_error_exit_2(db_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = run_cli("attach", str(os.getpid()), "--metrics-port", str(port), "--db", str(db_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--metrics-port" in lines[0]
    listing = json.loads(run_cli("sessions", "--db", str(db_path), "--json").stdout)
    assert listing == []  # nothing was started


def test_steps_per_rank_and_step_energy_summary():
    from wattlens.profiler.metrics import MetricsExporter
    from wattlens.profiler.records import SamplePoint, StepRecord

    ex = MetricsExporter(0)
    ex._sources = {"rapl:0": "counter"}
    ex.pid = "42"
    ex([SamplePoint("rapl:0/energy_j", 1, 10.0), SamplePoint("target/rapl:0/energy_j", 1, 4.0)])
    ex.add_step(StepRecord(0, 0, 1, energy_j=1.5))
    ex.add_step(StepRecord(1, 1, 2, energy_j=2.5))
    ex.add_step(StepRecord(2, 2, 3, energy_j=None))  # unknown energy: counted as a step, not in the sum
    fams = {f.name: f for f in ex.collect()}
    energy = {s.labels["scope"]: s.value for s in fams["wattlens_energy_joules"].samples}
    assert energy == {"machine": 10.0, "target": 4.0}
    (steps,) = fams["wattlens_steps"].samples
    assert steps.name == "wattlens_steps_total" and steps.value == 3
    summ = {s.name: s.value for s in fams["wattlens_step_energy_joules"].samples}
    assert summ == {"wattlens_step_energy_joules_count": 2, "wattlens_step_energy_joules_sum": 4.0}
    assert "wattlens_power_watts" in fams and not fams["wattlens_power_watts"].samples  # no power yet: absent, not 0


def test_cli_and_sampling_path_do_not_import_prometheus_client():
    code = ("import sys\nfrom wattlens.app import cli\nfrom wattlens.profiler.session import ProfilingSession\n"
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_grafana_dashboard_is_json_over_these_metrics():
    with open(os.path.join(PACKAGING, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for name in ("wattlens_energy_joules_total", "wattlens_power_watts", "wattlens_steps_total",
                 "wattlens_step_energy_joules_sum"):
        assert name in exprs


def test_an_address_that_is_not_this_machines_says_so_and_ipv6_urls_are_bracketed():
    from wattlens.profiler.metrics import MetricsExporter, MetricsPortError

    with pytest.raises(MetricsPortError) as err:
        MetricsExporter(0, "203.0.113.7").start()  # TEST-NET-3: never an address of this machine
    assert "--metrics-addr" in err.value.hint and "--metrics-port" not in err.value.hint
    v6 = MetricsExporter(9464, "::1")
    assert v6.url == "http://[::1]:9464/metrics"
    assert MetricsExporter(9464, "0.0.0.0").url == "http://0.0.0.0:9464/metrics"
