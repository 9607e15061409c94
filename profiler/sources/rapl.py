"""CPU package and DRAM energy from Linux powercap RAPL (``/sys/class/powercap``).

``energy_uj`` is a wrapping counter; ``max_energy_range_uj`` gives the wrap. The sysfs root is
configurable (``WATTLENS_POWERCAP_ROOT``) so tests run against a fake tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from wattlens.profiler.sources.base import CounterDelta, Reading

DEFAULT_ROOT = "/sys/class/powercap"
PERMISSION_FIX = (
    "run wattlens as root, or let your user read the counters: "
    "sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "(a udev rule makes it permanent)"
)


def powercap_root() -> Path:
    return Path(os.environ.get("WATTLENS_POWERCAP_ROOT", DEFAULT_ROOT))


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class RaplDomainSource:
    """One RAPL domain: ``package-N`` (kind cpu) or its ``dram`` subdomain (kind dram)."""

    method = "counter"

    def __init__(self, zone_dir: Path, name: str, package: int):
        self.zone_dir = zone_dir
        self.domain = name
        self.kind = "dram" if name == "dram" else "cpu"
        self.id = f"rapl:{name}" if name.startswith("package") else f"rapl:{name}-{package}"
        self.label = f"CPU {name} (RAPL)" if self.kind == "cpu" else f"DRAM of package {package} (RAPL)"
        try:
            range_uj = _read_int(zone_dir / "max_energy_range_uj")
        except (OSError, ValueError):
            range_uj = None
        self._counter = CounterDelta(range_j=range_uj / 1e6 if range_uj else None)

    def read(self, t_ns: int) -> Reading:
        try:
            uj = _read_int(self.zone_dir / "energy_uj")
        except PermissionError:
            return Reading(t_ns, None, None, reason=f"permission denied reading {self.zone_dir}/energy_uj")
        except (OSError, ValueError) as exc:
            return Reading(t_ns, None, None, reason=f"cannot read {self.zone_dir}/energy_uj: {exc}")
        energy_j = self._counter.add(t_ns, uj / 1e6)
        return Reading(t_ns, energy_j, self._counter.power_w)

    def describe(self) -> dict:
        return {"zone": str(self.zone_dir), "domain": self.domain}

    def close(self) -> None:
        pass


def discover_rapl(root: Path | None = None) -> tuple[list[RaplDomainSource], list[tuple[str, str, str]]]:
    root = root or powercap_root()
    if not root.exists():
        return [], [("rapl", f"no powercap interface at {root}",
                     "RAPL needs a Linux host on Intel/AMD hardware (most VMs and containers hide it)")]
    sources: list[RaplDomainSource] = []
    problems: list[tuple[str, str, str]] = []
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.is_dir())
    if not zones:
        return [], [("rapl", f"no RAPL zones under {root}",
                     "RAPL needs a Linux host on Intel/AMD hardware (most VMs and containers hide it)")]
    for zone in zones:
        parts = zone.name.split(":")
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        package = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        top_level = len(parts) == 2
        if not (top_level and name.startswith("package")) and name != "dram":
            continue  # core/uncore/psys: parts of the package, not counted twice
        src = RaplDomainSource(zone, name, package)
        try:
            _read_int(zone / "energy_uj")
        except PermissionError:
            problems.append((src.id, f"permission denied reading {zone}/energy_uj", PERMISSION_FIX))
            continue
        except (OSError, ValueError) as exc:
            problems.append((src.id, f"cannot read {zone}/energy_uj: {exc}", "check the powercap driver"))
            continue
        sources.append(src)
    return sources, problems
