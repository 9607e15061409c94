"""Draw packaging/grafana-dashboard.json's panels from a real Prometheus server's data (PNG).

Grafana is not packaged by Debian, so a machine with only the distribution's packages cannot run
it. This renders the shipped dashboard's own PromQL (``$host`` → all hosts) over
Prometheus' HTTP API (``/api/v1/query_range`` for time series, ``/api/v1/query`` for a stat) with
pyqtgraph, panel by panel in the dashboard's grid order, so the picture shows what the dashboard's
queries return from a real scrape. It is not Grafana's look.

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 \
        --start UNIX_S --end UNIX_S -o docs/img/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "packaging" / "grafana-dashboard.json"
UNIT_LABEL = {"watt": "W", "joule": "J", "ops": "steps/s"}


def query(prom: str, path: str, **params) -> list[dict]:
    url = f"{prom}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (a local URL given by the caller)
        doc = json.load(resp)
    if doc.get("status") != "success":
        raise RuntimeError(f"{url}: {doc}")
    return doc["data"]["result"]


def series_name(labels: dict, legend: str | None) -> str:
    if legend:
        out = legend
        for k, v in labels.items():
            out = out.replace("{{" + k + "}}", v)
        return out
    keep = [f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("__name__", "job", "instance") and v]
    return ", ".join(keep) or "value"


def render(prom: str, start_s: float, end_s: float, out: Path, step_s: float = 2.0,
           host: str = ".*", dashboard: Path = DASHBOARD) -> dict[str, int]:
    """Render every panel; returns panel title → number of series drawn (0: the query was empty)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    doc = json.loads(dashboard.read_text())
    panels = sorted(doc["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    win = pg.GraphicsLayoutWidget()
    win.resize(1500, 300 * ((len(panels) + 1) // 2) + 60)
    win.addLabel(f"{doc.get('title', 'dashboard')} — the dashboard's queries over a real Prometheus scrape "
                 f"(rendered by scripts/render_dashboard.py, not Grafana)", row=0, col=0, colspan=2, size="11pt")
    counts: dict[str, int] = {}
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, panel in enumerate(panels):
        unit = UNIT_LABEL.get(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""), "")
        plot = win.addPlot(row=1 + i // 2, col=i % 2, title=panel["title"])
        plot.setLabel("left", units=unit)  # SI prefixes on the ticks (mJ, kJ)
        plot.addLegend(offset=(5, 5), labelTextSize="8pt")
        plot.showGrid(x=True, y=True, alpha=0.3)
        n = 0
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$host", host)
            if panel["type"] == "stat":
                for r in query(prom, "/api/v1/query", query=expr, time=end_s):
                    value = float(r["value"][1])
                    name = series_name(r["metric"], target.get("legendFormat"))
                    bar = pg.BarGraphItem(x=[n], height=[value], width=0.6, brush=colors[n % len(colors)],
                                          name=f"{name}: {value:.1f} {unit}")
                    plot.addItem(bar)
                    n += 1
                plot.getAxis("bottom").setTicks([[]])
                continue
            for r in query(prom, "/api/v1/query_range", query=expr, start=start_s, end=end_s, step=step_s):
                xs = [float(t) - start_s for t, _ in r["values"]]
                ys = [float(v) for _, v in r["values"]]
                plot.plot(xs, ys, pen=pg.mkPen(colors[n % len(colors)], width=2),
                          name=series_name(r["metric"], target.get("legendFormat")))
                n += 1
            plot.setLabel("bottom", "time since start", units="s")
        counts[panel["title"]] = n
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    win.grab().save(str(out))
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--start", type=float, required=True, help="Unix seconds")
    p.add_argument("--end", type=float, required=True, help="Unix seconds")
    p.add_argument("--step", type=float, default=2.0)
    p.add_argument("--host", default=".*")
    p.add_argument("-o", "--out", type=Path, required=True)
    a = p.parse_args()
    print(json.dumps(render(a.prometheus, a.start, a.end, a.out, a.step, a.host), indent=1))


if __name__ == "__main__":
    main()
