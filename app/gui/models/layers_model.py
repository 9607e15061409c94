"""Layer figures accumulated over LayerCost windows: a tree of module paths with inclusive and
self energy/time, and the flat "where does the energy go" list for the bar chart.

Shares: a node's inclusive energy over the total, where the total is the sum of every row's
``self_energy_j`` (buckets included) — by LayerCost's conservation law that is the target energy
of the sampled windows. Windows whose energy was not known yet (None) contribute time only, so
energy shares use only windows with energy, and time shares use all windows; both are shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from wattlens.app.gui.models.format import ROOT_NAME
from wattlens.app.gui.models.signal import Signal
from wattlens.profiler import figures
from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks import backward_map, native
from wattlens.profiler.summary import layer_coverage

METHOD_TEXT = {
    "stack-sampling": "stack sampling (py-spy): CPU-side time share by module class × target energy",
    "agent-timing": "in-process agent: per-module timing × target energy",
    backward_map.METHOD: backward_map.METHOD_TEXT,
}




def parent_path(path: str, granularity: str) -> str | None:
    """The parent node's path, or None for a top-level node. Class paths (stack sampling) are
    ``A/B/C``; instance paths (the agent) are ``named_modules()`` names, ``""`` being the model's
    root and ``@Class`` another root-level module; a bucket's parts are ``bucket/part``
    (``backward/<class path>``, ``optimizer/_fused_adamw/mul_``) under their bucket."""
    if granularity == "bucket":
        return path.rsplit("/", 1)[0] if "/" in path else None
    if granularity == "class":
        return path.rsplit("/", 1)[0] if "/" in path else None
    if path == "":
        return None
    if "." in path:
        return path.rsplit(".", 1)[0]
    return None if path.startswith("@") else ""


def short_name(path: str, granularity: str, parts: int = 1) -> str:
    """The last ``parts`` components (``"h.0.mlp.act"`` for 3 of ``transformer.h.0.mlp.act``)."""
    if granularity != "bucket" and path == "":
        return ROOT_NAME
    sep = "/" if granularity == "class" else "."
    comps = path.split(sep)
    if granularity == "instance" and len(comps) > parts and comps[-parts].isdigit():
        parts += 1  # "h.0.mlp" rather than "0.mlp": keep the container's name with an index
    return sep.join(comps[-parts:])


def node_tooltip(path: str, granularity: str) -> str:
    """What a tree row is. A class path (stack sampling) nests classes as they call each other, so
    ``GPT2LMHeadModel/Linear`` is the Linear modules GPT2LMHeadModel's own forward calls directly
    (GPT-2's lm_head), beside ``GPT2LMHeadModel/GPT2Model``; py-spy sees classes, not attribute names.
    ``GPT2LMHeadModel/Linear/GPT2Model`` (seen once, 10 ms at 100 Hz) is a torn read: py-spy runs
    ``--nonblocking`` (profiler/stacks/sampler.py), and a stack read while it changes can mix frames."""
    if granularity == "class" and "/" in path:
        parent, cls = path.rsplit("/", 1)
        return (f"{path}: the {cls} modules that {parent.rsplit('/', 1)[-1]}.forward calls directly "
                f"(stack sampling sees module classes, not attribute names: every such {cls} shares this row). "
                "py-spy reads stacks without pausing the job, so a stack read while it changed can rarely "
                "give an impossible nesting (a model class under Linear): a row of a sample or two")
    if granularity == "class":
        return f"{path}: a top-level module class (stack sampling)"
    if granularity == "bucket":
        return f"{path}: time outside any module's forward"
    return f"{path or ROOT_NAME} (module instance, from the in-process agent)"


def _key(lc: LayerCost) -> tuple[str, str, str]:
    """A node of the tree: a bucket has no phase (its parts carry the backward's)."""
    return (lc.path, lc.granularity, lc.phase if lc.granularity != "bucket" else "")


def _self_time(lc: LayerCost) -> float:
    if lc.self_time_s is not None:
        return lc.self_time_s
    return lc.time_s if lc.granularity == "bucket" else 0.0


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
    self_share_se: float | None = None  # standard error of self_time_share (sampled rows only)
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
        self.changed = Signal()
        #: the target's energy so far (J), for the coverage line ``describe`` shows (:meth:`set_target`)
        self.target_energy_j: Callable[[], float | None] | None = None
        self.target_estimated = False  # the target's energy comes from an estimate (CPU power model)
        self._clear()

    def _clear(self) -> None:
        self._agg: dict[tuple[str, str, str], dict] = {}
        self.methods: set[str] = set()
        self.windows: set[tuple[int, int]] = set()
        self.total_energy_j = 0.0
        self.total_time_s = 0.0
        self.energy_known = False
        # windows whose energy was not known when they arrived (the stack sampler asks at the
        # window's end, before the power sampler has passed it): filled in by ``resolve``
        self.pending: dict[tuple[int, int], list[LayerCost]] = {}
        self.resolved_windows = 0
        self.split_buckets: set[str] = set()  # buckets whose rows are shared out by native reads, by op
        self._se = figures.SelfShareSE(_key, _self_time)  # what `show` and the reports print beside each share

    def set_target(self, energy_j: Callable[[], float | None], *, estimated: bool) -> None:
        """Where the coverage line reads the target's energy so far (the series the rows' energy
        comes from), and whether that energy is an estimate. Kept across :meth:`reset`."""
        self.target_energy_j, self.target_estimated = energy_j, estimated

    def reset(self, rows: Iterable[LayerCost],
              energy_between: Callable[[int, int], float | None] | None = None) -> None:
        """The figures of ``rows`` alone (a session's rows as stored), in place of all so far."""
        self._clear()  # the views stay connected to ``changed``
        self.add(rows, energy_between)

    def __len__(self) -> int:
        return len(self._agg)

    def add(self, rows: Iterable[LayerCost],
            energy_between: Callable[[int, int], float | None] | None = None) -> None:
        """Add LayerCost rows (one or more windows). Rows without energy count by time now, and
        by energy once ``energy_between(window_start_ns, window_end_ns)`` knows the window's
        energy (now, or at a later ``resolve``)."""
        rows = list(rows)
        if not rows:
            return
        windows: dict[tuple[int, int], list[LayerCost]] = {}
        for lc in rows:
            windows.setdefault((lc.window_start_ns, lc.window_end_ns), []).append(lc)
        for win, wrows in windows.items():
            self._add_time(wrows)
            self._se.add_window(wrows)
            if any(r.self_energy_j is not None for r in wrows):
                self._add_energy(wrows)
            elif all(r.rank is None for r in wrows):
                self.pending[win] = wrows
            # else: one rank's window; the target's energy over its span is every rank's, so it
            # stays counted by time (the sampler gives a rank's window its own share when it can)
        if self.pending and energy_between is not None:
            self._resolve(energy_between)
        self.changed.emit()

    def resolve(self, energy_between: Callable[[int, int], float | None]) -> int:
        """Give pending windows their energy where it is known now; returns how many."""
        n = self._resolve(energy_between)
        if n:
            self.changed.emit()
        return n

    def _resolve(self, energy_between) -> int:
        done = []
        for (t0, t1), wrows in self.pending.items():
            energy_j = energy_between(t0, t1)
            if energy_j is None:
                continue
            self._add_energy(figures.split_window_energy(
                [replace(r, self_time_s=_self_time(r)) for r in wrows], energy_j))
            done.append((t0, t1))
        for win in done:
            del self.pending[win]
        self.resolved_windows += len(done)
        return len(done)

    def _add_time(self, rows: list[LayerCost]) -> None:
        for lc in rows:
            a = self._entry(lc)
            a["time_s"] += lc.time_s
            self_t = _self_time(lc)
            a["self_time_s"] += self_t
            self.total_time_s += self_t
            self.methods.add(lc.method)
            self.windows.add((lc.window_start_ns, lc.window_end_ns))
            bucket, _, part = lc.path.partition("/")
            if lc.granularity == "bucket" and part and lc.method != backward_map.METHOD and (
                    bucket == "backward" or part.count("/") >= 1):  # backward/<op>, optimizer/<part>/<op>
                self.split_buckets.add(bucket)

    def _add_energy(self, rows: list[LayerCost]) -> None:
        for lc in rows:
            a = self._entry(lc)
            if lc.energy_j is not None:
                a["energy_j"] = (a["energy_j"] or 0.0) + lc.energy_j
            if lc.self_energy_j is not None:
                a["self_energy_j"] = (a["self_energy_j"] or 0.0) + lc.self_energy_j
                self.total_energy_j += lc.self_energy_j
                self.energy_known = True

    def _entry(self, lc: LayerCost) -> dict:
        return self._agg.setdefault(_key(lc), {"time_s": 0.0, "self_time_s": 0.0, "energy_j": None,
                                          "self_energy_j": None})

    # ---- views of the data ------------------------------------------------------------------------
    def _node(self, key: tuple[str, str, str], a: dict) -> LayerNode:
        path, gran, phase = key
        name = short_name(path, gran)
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
            self_share_se=self._se.get(key),
        )

    def roots(self) -> list[LayerNode]:
        """The module-path tree (buckets at the top, their parts under them), each level sorted
        by share."""
        nodes = {key: self._node(key, a) for key, a in self._agg.items()}
        roots: list[LayerNode] = []
        for (path, gran, phase), node in nodes.items():
            parent = None
            up = parent_path(path, gran)
            while up is not None and parent is None:  # the nearest ancestor that has a row
                # (containers such as ModuleList run no forward of their own and have none)
                parent = nodes.get((up, gran, phase))
                if (parent is not None and gran == "bucket" and "/" in up
                        and parent.time_s <= parent.self_time_s * (1 + 1e-9)):
                    # a part whose time is all its own is a leaf of its bucket's split (the
                    # backward by class path: each row holds its own share only), not a
                    # container of the parts below it, whose time it does not include
                    parent = None
                if parent is None and phase == "backward":  # no backward row there: the forward one
                    parent = nodes.get((up, gran, "forward"))
                if parent is None:
                    up = parent_path(up, gran)
            if parent is not None and gran == "instance":
                rel = path[len(up) + 1:] if up else path  # "h.1" under "transformer"
                node.name = rel + (f" ({phase})" if phase and phase != "forward" else "")
            elif parent is not None and gran == "bucket":  # "LlamaModel/…/Linear" under "backward"
                node.name = path[len(up) + 1:]
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
            label = short_name(path, gran, parts=2 if gran == "class" else 3)
            bucket, _, part = path.partition("/")
            if gran == "bucket" and part:  # a bucket's part: backward/<class path or op>, ...
                label = f"{short_name(part, 'class', parts=2)} ({bucket})"
            elif gran == "bucket":
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
        if self.split_buckets:  # the op rows are an estimate: said with how, as the session's note says
            method += f"; {' and '.join(sorted(self.split_buckets))} {native.OP_SPLIT_TEXT}"
        basis = "energy" if self.energy_known else "time (energy not known yet)"
        text = f"{method} — {len(self.windows)} window(s), {span_s:.1f} s sampled; shares by {basis}"
        if self.pending and self.energy_known:
            text += f" ({len(self.pending)} window(s) still waiting for their energy)"
        # what the layers add up to against the target's energy, worded as show and the reports do
        cov = (layer_coverage(self.total_energy_j, self.target_energy_j(), self.methods,
                              estimated=self.target_estimated)
               if self.energy_known and self.target_energy_j is not None else None)
        return f"{text}; {cov['text']}" if cov else text

