"""The per-rank layer section (``report["rank_layers"]``, built by
:func:`wattlens.profiler.rank_layers.per_rank_layers`), as plain rows every renderer shares."""

from __future__ import annotations

from wattlens.app.gui.models.format import ROOT_NAME, layer_label

HEADER = ("Rank", "Windows", "Covered", "Layer energy", "Costliest layers (self share)")


def _j(value) -> str:
    return "n/a" if value is None else f"{value:.3g} J"


def short_path(path: str) -> str:
    """The last two classes of a module-class path ("LlamaMLP/Linear"): a leaf class alone is
    ambiguous. The agent's root instance has the empty path: "(model root)", as every view says."""
    return "/".join(path.split("/")[-2:]) or ROOT_NAME


def rank_layer_rows(rank_layers: dict | None) -> list[tuple[str, ...]]:
    """One row per rank (see :data:`HEADER`); empty when no layer row carries a rank. A costliest
    layer is printed by its ``name`` where it has one (an agent instance with its class,
    ``Sequential.0 (Linear)``), else by :func:`short_path`; a backward row says so, as every view
    prints it (:func:`layer_label`)."""
    if not rank_layers:
        return []
    out = []
    for r in rank_layers["ranks"]:
        top = ", ".join(f"{layer_label(t.get('name') or short_path(t['path']), t.get('phase'))} "
                        + ("n/a" if t["self_share"] is None else f"{t['self_share'] * 100:.0f} %")
                        for t in r["top"])
        out.append((str(r["rank"]), str(r["windows"]), f"{r['covered_s']:.1f} s", _j(r["energy_j"]),
                    top or "n/a"))
    return out


def rank_layer_lines(rank_layers: dict | None) -> list[str]:
    """The job's total under the table, and the method."""
    if not rank_layers:
        return []
    out = [f"Job layer energy {_j(rank_layers['job_energy_j'])} over {rank_layers['ranks_seen']} rank(s)"
           + (f" ({rank_layers['job_energy_note']})" if rank_layers["job_energy_note"] else "") + "."]
    out.append(f"Method: {rank_layers['method']}.")
    return out
