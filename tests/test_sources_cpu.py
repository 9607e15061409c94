from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wattlens.profiler import attribution
from wattlens.profiler.sources import discover
from wattlens.profiler.sources.cpu_model import CpuModelSource, build_model
from wattlens.profiler.sources.rapl import discover_rapl


def make_zone(root: Path, name: str, zone: str, energy_uj: int, max_uj: int = 262143328850) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@pytest.fixture
def powercap(tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    root.mkdir()
    monkeypatch.setenv("WATTLENS_POWERCAP_ROOT", str(root))
    return root


def test_rapl_package_and_dram_counters(powercap):
    pkg = make_zone(powercap, "package-0", "intel-rapl:0", 1_000_000)
    make_zone(powercap, "core", "intel-rapl:0:0", 5)  # part of the package: not counted twice
    dram = make_zone(powercap, "dram", "intel-rapl:0:1", 2_000_000)
    found = discover(gpu=False)
    ids = {s.id: s for s in found.usable}
    assert set(ids) == {"rapl:package-0", "rapl:dram-0"}  # no CPU model when RAPL works
    assert ids["rapl:package-0"].method == "counter" and ids["rapl:dram-0"].kind == "dram"
    p, d = ids["rapl:package-0"], ids["rapl:dram-0"]
    p.read(0)
    d.read(0)
    (pkg / "energy_uj").write_text("31000000\n")  # +30 J in 2 s
    (dram / "energy_uj").write_text("4000000\n")
    rp, rd = p.read(2_000_000_000), d.read(2_000_000_000)
    assert rp.energy_j == pytest.approx(30.0) and rp.power_w == pytest.approx(15.0)
    assert rd.energy_j == pytest.approx(2.0)


def test_rapl_counter_wraparound(powercap):
    z = make_zone(powercap, "package-0", "intel-rapl:0", 9_000_000, max_uj=10_000_000)
    (src,), _ = discover_rapl()
    src.read(0)
    (z / "energy_uj").write_text("1000000\n")  # wrapped: 9 → 10 (range) → 1 J
    r = src.read(1_000_000_000)
    assert r.energy_j == pytest.approx(2.0)
    (z / "energy_uj").write_text("3000000\n")
    assert src.read(2_000_000_000).energy_j == pytest.approx(4.0)


def test_rapl_permission_denied_names_the_fix(powercap, monkeypatch):
    make_zone(powercap, "package-0", "intel-rapl:0", 1)
    real_read_text = Path.read_text

    def deny(self, *a, **k):  # root ignores chmod, so deny at the read itself
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
    found = discover(gpu=False)
    (u,) = [u for u in found.unavailable if u.source_id == "rapl:package-0"]
    assert "permission denied" in u.reason
    assert "root" in u.fix and "chmod" in u.fix
    assert [s.id for s in found.usable] == ["cpu-model"]  # falls back to the estimate


def test_no_powercap_falls_back_to_the_labelled_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTLENS_POWERCAP_ROOT", str(tmp_path / "missing"))
    found = discover(gpu=False)
    (src,) = found.usable
    assert src.id == "cpu-model" and src.method == "estimated"
    assert any(u.source_id == "rapl" and "VM" in u.fix for u in found.unavailable)


def test_cpu_model_table_override_and_default():
    m = build_model(model_name="AMD EPYC 7763 64-Core Processor", visible_threads=128)
    assert m.tdp_w == 280 and "table" in m.tdp_source
    vm = build_model(model_name="AMD EPYC 7763 64-Core Processor", visible_threads=8)
    assert vm.tdp_w == pytest.approx(280 * 8 / 128) and "8/128" in vm.tdp_source
    o = build_model(tdp_override_w=95, model_name="anything")
    assert o.tdp_w == 95 and "override" in o.tdp_source
    d = build_model(model_name="Mystery CPU", visible_threads=4)
    assert d.tdp_w == 20.0 and "unknown CPU" in d.tdp_source and "WATTLENS_CPU_TDP_W" in d.tdp_source
    assert d.power_w(0.0) == pytest.approx(d.idle_w)
    assert d.power_w(1.0) == pytest.approx(d.tdp_w)
    assert d.power_w(0.5) == pytest.approx((d.idle_w + d.tdp_w) / 2)


def test_env_override(monkeypatch):
    monkeypatch.setenv("WATTLENS_CPU_TDP_W", "42")
    assert build_model(model_name="x").tdp_w == 42


def test_cpu_model_source_integrates_its_estimate():
    src = CpuModelSource(build_model(tdp_override_w=100))
    r0 = src.read(0)
    assert r0.energy_j == 0.0
    r1 = src.read(1_000_000_000)
    assert 30.0 <= r1.power_w <= 100.0
    assert r1.energy_j == pytest.approx((r0.power_w + r1.power_w) / 2, rel=1e-6)


@given(st.floats(0, 1e3), st.floats(0, 10), st.floats(0.001, 10))
def test_cpu_attribution_never_exceeds_measured(energy_j, target_s, busy_s):
    share = attribution.cpu_share(target_s, busy_s)
    att = attribution.attribute_cpu(energy_j, share)
    assert 0.0 <= att.energy_j <= energy_j + 1e-9


@given(st.floats(0, 1e4), st.floats(0.01, 10), st.floats(0, 1000), st.floats(0, 100), st.floats(0, 100))
def test_gpu_attribution_never_exceeds_measured(energy_j, dt_s, idle_w, target_sm, other_sm):
    from wattlens.profiler.gpu_share import GpuTracker

    class _NoMig:
        def mig_enabled(self):
            return False, None

    tracker = GpuTracker(_NoMig(), pidns=None, known_idle_w=idle_w)
    share = attribution.gpu_share(target_sm, target_sm + other_sm)
    total = 0.0
    for e in (energy_j, 0.0, energy_j / 2):  # a tick where the counter did not move in between
        att = attribution.attribute_gpu(tracker._dynamic_j(e, dt_s), share)
        assert att.energy_j >= 0.0
        total += att.energy_j
    assert total <= energy_j * 1.5 + 1e-9


def test_attribution_arithmetic():
    assert attribution.cpu_share(1.0, 4.0) == 0.25
    assert attribution.cpu_share(5.0, 4.0) == 1.0  # clipped: a tick can land between reads
    assert attribution.cpu_share(0.0, 0.0) is None
    att = attribution.attribute_gpu(800.0, 0.5)
    assert att.energy_j == pytest.approx(400.0) and att.method == attribution.GPU_METHOD
    unknown_idle = attribution.attribute_gpu(1000.0, 0.5, idle_known=False)
    assert unknown_idle.method == attribution.GPU_TOTAL_METHOD
    missing = attribution.attribute_gpu(1000.0, None, reason="no per-process data")
    assert missing.energy_j is None and missing.reason == "no per-process data"
