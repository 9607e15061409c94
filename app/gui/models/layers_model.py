"""Layer figures accumulated over LayerCost windows: a tree of module paths with inclusive and
self energy/time, and the flat "where does the energy go" list for the bar chart.

Shares: a node's inclusive energy over the total, where the total is the sum of every row's
``self_energy_j`` (buckets included) — by LayerCost's conservation law that is the target energy
of the sampled windows. Windows whose energy was not known yet (None) contribute time only, so
energy shares use only windows with energy, and time shares use all windows; both are shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from wattlens.app.gui.models.signal import Signal
from wattlens.profiler.records import LayerCost

METHOD_TEXT = {
    "stack-sampling": "stack sampling (py-spy): CPU-side time share by module class × target energy",
    "agent-timing": "in-process agent: per-module timing × target energy",
}


@dataclass
class LayerNode:
    name: str  # the last path component (with the phase when it is not the forward pass)
    path: str
    granularity: str  # class | instance | bucket
    phase: str
    time_s: float = 0.0
    self_time_s: float = 0.0
    energy_j: float | None = None
    self_energy_j: float | None = None
    energy_share: float | None = None  # inclusive energy / total energy
    time_share: float | None = None  # inclusive time / total time
    self_energy_share: float | None = None
    self_time_share: float | None = None
    children: list[LayerNode] = field(default_factory=list)

    @property
    def share(self) -> float | None:
        """The share the view sorts by: energy where known, else time."""
        return self.energy_share if self.energy_share is not None else self.time_share


@dataclass(frozen=True)
class Bar:
    label: str  # short: the last two path components
    path: str
    value: float  # self energy (J) or self time (s)
    share: float  # of the total
    unit: str  # "J" or "s"


class LayerTree:
    def __init__(self) -> None:
        self._agg: dict[tuple[str, str, str], dict] = {}
        self.methods: set[str] = set()
        self.windows: set[tuple[int, int]] = set()
        self.total_energy_j = 0.0
        self.total_time_s = 0.0
        self.energy_known = False
        self.changed = Signal()

    def __len__(self) -> int:
        return len(self._agg)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def add(self, rows: Iterable[LayerCost]) -> None:
        rows = list(rows)
        if not rows:
            return
        for lc in rows:
            key = (lc.path, lc.granularity, lc.phase if lc.granularity != "bucket" else "")
            a = self._agg.setdefault(key, {"time_s": 0.0, "self_time_s": 0.0, "energy_j": None,
                                           "self_energy_j": None})
            a["time_s"] += lc.time_s
            self_t = lc.self_time_s if lc.self_time_s is not None else (lc.time_s if lc.granularity == "bucket" else 0.0)
            a["self_time_s"] += self_t
            self.total_time_s += self_t
            if lc.energy_j is not None:
                a["energy_j"] = (a["energy_j"] or 0.0) + lc.energy_j
            if lc.self_energy_j is not None:
                a["self_energy_j"] = (a["self_energy_j"] or 0.0) + lc.self_energy_j
                self.total_energy_j += lc.self_energy_j
                self.energy_known = True
            self.methods.add(lc.method)
            self.windows.add((lc.window_start_ns, lc.window_end_ns))
        self.changed.emit()

    # ---- views of the data ------------------------------------------------------------------------
    def _node(self, key: tuple[str, str, str], a: dict) -> LayerNode:
        path, gran, phase = key
        name = path.rsplit("/", 1)[-1]
        if phase and phase != "forward":
            name += f" ({phase})"
        e_tot = self.total_energy_j if self.energy_known and self.total_energy_j > 0 else None
        t_tot = self.total_time_s if self.total_time_s > 0 else None
        return LayerNode(
            name=name, path=path, granularity=gran, phase=phase, time_s=a["time_s"],
            self_time_s=a["self_time_s"], energy_j=a["energy_j"], self_energy_j=a["self_energy_j"],
            energy_share=(a["energy_j"] / e_tot) if e_tot and a["energy_j"] is not None else None,
            time_share=(a["time_s"] / t_tot) if t_tot else None,
            self_energy_share=(a["self_energy_j"] / e_tot) if e_tot and a["self_energy_j"] is not None else None,
            self_time_share=(a["self_time_s"] / t_tot) if t_tot else None,
        )

    def roots(self) -> list[LayerNode]:
        """The module-path tree (buckets are top-level leaves), each level sorted by share."""
        nodes = {key: self._node(key, a) for key, a in self._agg.items()}
        roots: list[LayerNode] = []
        for (path, gran, phase), node in nodes.items():
            parent = None
            if gran != "bucket" and "/" in path:
                parent = nodes.get((path.rsplit("/", 1)[0], gran, phase))
            (parent.children if parent is not None else roots).append(node)

        def order(ns: list[LayerNode]) -> None:
            ns.sort(key=lambda n: (n.share or 0.0, n.time_s), reverse=True)
            for n in ns:
                order(n.children)

        order(roots)
        return roots

    def bars(self, n: int = 12) -> list[Bar]:
        """Self (exclusive) energy per node, largest first: these add up to the total, so the bars
        say where the energy goes. Self time when no energy is known."""
        use_energy = self.energy_known and self.total_energy_j > 0
        total = self.total_energy_j if use_energy else self.total_time_s
        if total <= 0:
            return []
        out = []
        for (path, gran, phase), a in self._agg.items():
            value = a["self_energy_j"] if use_energy else a["self_time_s"]
            if not value:
                continue
            parts = path.split("/")
            label = "/".join(parts[-2:]) if len(parts) > 1 else parts[0]
            if gran == "bucket":
                label = f"[{label}]"
            elif phase and phase != "forward":
                label += f" ({phase})"
            out.append(Bar(label, path, value, value / total, "J" if use_energy else "s"))
        out.sort(key=lambda b: b.value, reverse=True)
        return out[:n]

    def describe(self) -> str:
        """One line for the view: what these figures are and over how much time."""
        if not self._agg:
            return "no layer figures yet"
        method = "; ".join(METHOD_TEXT.get(m, m) for m in sorted(self.methods))
        span_s = sum(e - s for s, e in self.windows) / 1e9
        basis = "energy" if self.energy_known else "time (energy not known yet)"
        return f"{method} — {len(self.windows)} window(s), {span_s:.1f} s sampled; shares by {basis}"
