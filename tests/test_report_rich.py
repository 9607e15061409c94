"""HTML, PDF, Markdown and JSON reports of a REAL session: a torch child measured by a
ProfilingSession into a temporary SQLite store, plus steps, layer costs, a recommendation and an
action stored through the Store API so that every section of the report renders."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, start_torch_child
from wattlens.advisor.recommend import Evidence, Recommendation, Risk, measure_first, rule_of_thumb
from wattlens.app.report import rich
from wattlens.app.report.data import build_report
from wattlens.app.report.formats import fmt, write_report
from wattlens.profiler.process import Target
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store
from wattlens.profiler.summary import energy_between

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "report-schema.json"
EVIL_NAME = 'bert <script>alert("x")</script> & co'
REC_FULL = Recommendation(
    rule="quantize-int8", title="Quantize the Linear layers to dynamic int8 <fast>",
    rationale="Linear layers take most of the CPU time and this CPU has int8 kernels.",
    evidence=(Evidence("Linear share of the model's time", 0.62, "fraction", "stack sampling"),
              Evidence("target energy", 4.2, "J", "target/energy_j")),
    predicted_saving=rule_of_thumb(0.18, 0.42, "published CPU int8 results", central=0.3),
    confidence="medium", risk=Risk("low", "top-1 agreement is usually above 99 %"),
    action="quantize-int8", command="wattlens optimize MODEL --action quantize-int8 --out MODEL-int8",
).to_dict()
REC_MEASURE_FIRST = Recommendation(
    rule="batch-size", title="Raise the batch size",
    rationale="Small batches leave the cores idle.",
    evidence=(Evidence("target CPU use, mean", 30.9, "% of one core", "target/cpu_pct"),),
    predicted_saving=measure_first("a short sweep measures it", "wattlens optimize MODEL --batch-sizes 1,2,4"),
    confidence="low", risk=Risk("medium", "a larger batch changes the optimisation"),
    command="wattlens optimize MODEL --batch-sizes 1,2,4",
).to_dict()
REC_SPARSE = {"rule": "legacy", "title": "Try a larger batch size"}  # not a Recommendation: said so, not guessed
ACTION_RESULT = {
    "predicted_text": "30 % (18 – 42 %)",
    "measured_text": "24 % ± 5 %",
    "verification": {"saving_fraction": 0.24, "saving_interval": [0.19, 0.29], "latency_saving_fraction": 0.25,
                     "baseline": {"energy_per_sample_j": 0.5, "energy_method": "counter", "device": "cpu",
                                  "latency_per_sample_s": 0.012, "model_params": 1000},
                     "candidate": {"energy_per_sample_j": 0.38, "energy_method": "counter", "device": "cpu",
                                   "latency_per_sample_s": 0.009, "model_params": 1300},
                     "n_rounds": 2, "batches_per_round": 3, "batch_size": 4, "inputs": "random tokens"},
    "fidelity": {"top1_agreement": 0.995, "kl_base_candidate": 0.002},
    "sizes": {"base_params": 1000, "candidate_params": 1300, "base_tensor_bytes": 4000, "candidate_tensor_bytes": 1500},
}


def _measure(store: Store, pid: int, name: str, note: str | None = None) -> int:
    session = ProfilingSession(store, target=Target(pid), kind="attach", name=name, interval_s=0.1,
                               duration_s=1.5, discovery=discover(gpu=False), stacks=False)
    sid = session.start()
    if note:
        session.note(note)
    session.run(poll_s=0.05)
    return sid


def _add_steps_and_layers(store: Store, sid: int) -> None:
    """Steps and layer windows over the session's span, with energy from its own stored series."""
    t, e = store.series_data(sid, ["target/energy_j"])["target/energy_j"]
    edges = np.linspace(t[0], t[-1], 5).astype(np.int64)
    steps = [StepRecord(i, int(a), int(b), samples=32, tokens=32 * 64,
                        energy_j=energy_between(t, e, int(a), int(b)))
             for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
    window_j = energy_between(t, e, int(t[0]), int(t[-1]))
    span_s = (t[-1] - t[0]) / 1e9
    shares = {"Sequential": (0.8, 0.05), "Sequential/Linear": (0.55, 0.55), "Sequential/ReLU": (0.2, 0.2),
              "(optimizer)": (0.15, 0.15), "(outside forward)": (0.05, 0.05)}
    layers = [LayerCost(int(t[0]), int(t[-1]), path, "bucket" if path.startswith("(") else "class",
                        "stack-sampling", time_s=incl * span_s, share=incl, energy_j=incl * window_j,
                        self_time_s=own * span_s, self_energy_j=own * window_j, n_samples=40)
              for path, (incl, own) in shares.items()]
    store.write_batch(sid, (), layer_costs=layers, steps=steps,
                      events=[EventRecord(int(t[-1]), "warning", "a <b>bold</b> message", {})])


@pytest.fixture(scope="module")
def session_db(tmp_path_factory):
    """Two real sessions of one torch child: #a fully dressed, #b bare (the comparison baseline)."""
    db = tmp_path_factory.mktemp("rich") / "wattlens.db"
    store = Store(db)
    child = start_torch_child(30)
    try:
        sid = _measure(store, child.pid, EVIL_NAME, note="stack sampling was off for this test")
        other = _measure(store, child.pid, "baseline")
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    _add_steps_and_layers(store, sid)
    store.add_recommendations(sid, [REC_FULL, REC_MEASURE_FIRST, REC_SPARSE])
    store.add_action(kind="quantize-int8", status="verified", params={"rule": "quantize-int8-cpu"},
                     result=ACTION_RESULT, session_id=sid, source_session_id=sid)
    yield store, db, sid, other
    store.close()


@pytest.fixture(scope="module")
def written(session_db, tmp_path_factory):
    store, _db, sid, other = session_db
    out = tmp_path_factory.mktemp("out")
    paths = {}
    for f in ("html", "pdf", "md", "json"):
        paths[f] = write_report(store, sid, f, out / f"report.{f}", compare_id=other, grid_g_per_kwh=400.0)
    paths["bare.pdf"] = write_report(store, other, "pdf", out / "bare.pdf")
    paths["bare.html"] = write_report(store, other, "html", out / "bare.html")
    return paths


# ---- HTML ---------------------------------------------------------------------------------------
def test_html_is_self_contained(written):
    text = written["html"].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"<script|<link\b|<iframe|@import|url\(\s*['\"]?(?!#)", text, re.I)
    assert "clip-path=\"url(#" in text  # the plots' own clip paths: internal references only
    assert text.count("<svg") == 5  # power, energy, utilisation, energy per step, layers


def test_html_escapes_user_strings(written):
    text = written["html"].read_text(encoding="utf-8")
    assert "bert &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in text
    assert "Quantize the Linear layers to dynamic int8 &lt;fast&gt;" in text
    assert "a &lt;b&gt;bold&lt;/b&gt; message" in text and "<b>bold</b>" not in text


def test_html_shows_the_numbers_wattlens_show_prints(session_db, written):
    _store, db, sid, _other = session_db
    shown = run_cli("show", str(sid), "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    numbers = re.findall(r"(?<![\w.])(-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)? (?:J|W|s|%))(?!\w)", shown.stdout)
    assert len(numbers) >= 8, shown.stdout  # duration, energy, mean, target, steps, layers ...
    text = written["html"].read_text(encoding="utf-8")
    missing = [n for n in numbers if n not in text]
    assert not missing, f"numbers printed by `wattlens show` but absent from the HTML: {missing}"


def test_html_marks_every_estimated_energy_figure(session_db, written):
    store, _db, sid, _other = session_db
    report = build_report(store, sid)
    text, compared = written["html"].read_text(encoding="utf-8").split('<section id="comparison">')
    # the comparison shows the other session's figures too, which carry that session's methods
    this_energy = fmt(report["summary"]["energy_j"], "J")
    if rich.estimate_flags(report)["total"]:
        assert f'<td>Energy, all sources</td><td class="num">{this_energy}<span class="est"' in compared
    est = [s for s in report["summary"]["sources"] if s["method"] == "estimated"]
    if not est:
        pytest.skip("this machine measures its CPU (RAPL): no estimated source to mark")
    # the stated basis of a CPU model's TDP names wattages of its own ("× 2 = 10 W, raised to the
    # 15 W floor"): a basis, not the source's figures, so it is left out of the search
    for src in report.get("sources") or []:
        basis = (src.get("details") or {}).get("tdp_source")
        if basis:
            text = text.replace(html.escape(basis), "")
    for s in est:
        for value, unit in ((s["energy_j"], "J"), (s["mean_power_w"], "W")):
            figure = fmt(value, unit)
            # whole figures only: "12 W" must not match inside "0.0112 Wh" (ci, stop 26)
            at = [m.end() for m in re.finditer(rf"(?<![\w.,-]){re.escape(figure)}(?!\w)", text)]
            assert at and all(text[i:].startswith('<span class="est"') for i in at), figure
    tgt = fmt(report["summary"]["target"]["energy_j"], "J")
    assert f'{tgt}<span class="est"' in text


def test_html_sections_and_side_by_side_savings(written):
    text = written["html"].read_text(encoding="utf-8")
    assert text.index('<section id="headline">') < text.index('<section id="summary">')  # the headline first
    assert "This session cost" in text and "Largest measured saving" in text
    assert "quantize-int8: −24.0 % energy per sample (saving)" in text  # with its risk
    assert "risk to quality: low — top-1 agreement is usually above 99 %" in text
    for section in ("summary", "measured", "timeline", "steps", "layers", "recommendations", "actions",
                    "comparison", "events", "methods"):
        assert f'<section id="{section}">' in text
    assert "Compared with session #" in text
    assert "−30.0 % energy per sample (saving), interval −42.0 % … −18.0 %" in text  # predicted
    assert "−24.0 % energy per sample (saving), 95 % CI −29.0 % … −19.0 % (counter)" in text  # measured
    assert "within the predicted interval" in text and "recommended → applied → measured" in text
    assert "top-1 agreement 99.5 %" in text and "Verification — quantize-int8" in text
    assert "baseline.energy_per_sample_j" not in text  # the A/B result in words, not a dump of keys
    assert "tensor elements 1,000 → 1,300" in text
    for axis in ("power (W)", "energy (J)", "utilisation (%)", "energy per step (J)", "self energy (J"):
        assert axis in text, axis
    assert "time since" in text and "(s)" in text


def test_missing_values_render_as_na_never_zero(session_db):
    store, _db, sid, _other = session_db
    report = build_report(store, sid)
    views = {v.title: v for v in rich.recommendation_views(report)}
    sparse = views["(unreadable recommendation)"]
    assert sparse.predicted == "n/a" and sparse.risk == "n/a" and "wattlens advise" in sparse.rationale
    full = views[REC_FULL["title"]]
    assert full.predicted == "−30.0 % energy per sample (saving), interval −42.0 % … −18.0 %"
    assert full.measured.startswith("−24.0 % energy per sample (saving)") and not full.flagged
    assert full.risk == "low — top-1 agreement is usually above 99 %"
    assert full.evidence[0] == ["Linear share of the model's time", "62.0 %", "stack sampling"]
    assert full.evidence[1][1] == rich.Fig("4.2 J", rich.estimate_flags(report)["derived"])
    assert ("Command", REC_FULL["command"]) in full.details
    first = views["Raise the batch size"]
    assert first.predicted == "measure first: wattlens optimize MODEL --batch-sizes 1,2,4"
    assert first.action == "n/a (advice only)"
    assert ("Measure with", "wattlens optimize MODEL --batch-sizes 1,2,4") in first.details


def test_real_advice_renders(session_db, tmp_path):
    """Whatever the real advisor says about this session renders, escaped, in both formats."""
    from wattlens.app.advise import advise

    store, _db, sid, _other = session_db
    docs = advise(store, sid)["recommendations"]
    try:
        html_text = rich.render_html(build_report(store, sid), store.series_data(sid))
        assert all(html.escape(d["title"]) in html_text for d in docs)
        assert len(rich.write_pdf(build_report(store, sid), store.series_data(sid), tmp_path / "a.pdf")) >= 4
    finally:
        store.add_recommendations(sid, [REC_FULL, REC_MEASURE_FIRST, REC_SPARSE])


def test_bare_session_html_says_what_is_missing(written):
    text = written["bare.html"].read_text(encoding="utf-8")
    # why there are no steps, for how it was recorded (attach), and what gives them
    assert html.escape("n/a — attach mode measures the whole process, not its steps: `wattlens run -- COMMAND`") in text
    assert html.escape(rich.NO_LAYERS) in text
    assert 'id="comparison"' not in text and text.count("<svg") == 3


# ---- PDF ----------------------------------------------------------------------------------------
SECTIONS = ["Summary", "Power and energy over time", "Energy per step and per layer", "Recommendations and actions",
            "Comparison, events and methods"]


def test_pdf_has_one_section_per_page_and_continues_long_ones(session_db, written, tmp_path):
    full = written["pdf"].read_bytes()
    bare = written["bare.pdf"].read_bytes()
    assert full.startswith(b"%PDF-") and bare.startswith(b"%PDF-")
    assert full.rstrip().endswith(b"%%EOF")
    store, _db, sid, other = session_db
    titles = rich.write_pdf(build_report(store, sid, compare_id=other, grid_g_per_kwh=400.0), store.series_data(sid),
                            tmp_path / "x.pdf")
    assert rich.pdf_page_count(full) == len(titles) == rich.pdf_page_count((tmp_path / "x.pdf").read_bytes())
    assert [t for t in titles if not t.endswith("(continued)")] == SECTIONS
    assert all(t.removesuffix(" (continued)") in SECTIONS for t in titles)
    # the time plots, steps + layers: one page each here (the summary opens with the headline and
    # may continue on a second page)
    body = [t for t in titles if t != "Summary (continued)"]
    assert body[:3] == SECTIONS[:3]
    # no recommendations, actions or comparison: four pages, each fits
    assert rich.write_pdf(build_report(store, other), store.series_data(other), tmp_path / "b.pdf") == \
        ["Summary", "Power and energy over time", "Energy per step and per layer", "Events and methods"]
    assert rich.pdf_page_count(bare) == 4


# ---- JSON and Markdown --------------------------------------------------------------------------
def test_json_report_validates_against_the_schema(session_db, written):
    from tests.test_report_views import validate

    schema = json.loads(SCHEMA_PATH.read_text())
    doc = json.loads(written["json"].read_text())
    assert doc["comparison"] is not None and doc["layers"] and doc["steps"]
    validate(doc, schema)
    store, _db, sid, _other = session_db
    with_samples = json.loads(json.dumps(build_report(store, sid, include_samples=True), default=str))
    validate(with_samples, schema)


def test_markdown_is_written(written):
    text = written["md"].read_text()
    assert text.startswith("# wattlens report") and "Compared with session" in text


def test_unknown_format_is_bad_input(tmp_path):
    from wattlens.profiler.errors import BadInputError

    with pytest.raises(BadInputError):
        rich.write("docx", {}, {}, tmp_path / "x.docx")


def test_every_view_says_what_the_layers_add_up_to(session_db, written):
    """The layers' self energies against the target's energy, and where the rest is: one line,
    computed once (the summary), the same in show, MD and HTML (and the PDF, from the same rows)."""
    store, db, sid, _other = session_db
    report = build_report(store, sid)
    cov = report["summary"]["layer_coverage"]
    layer_j = sum(lr["self_energy_j"] or 0.0 for lr in report["layers"])
    assert cov["layers_energy_j"] == pytest.approx(layer_j)
    assert cov["target_energy_j"] == report["summary"]["target"]["energy_j"]
    assert cov["text"].startswith("layers: ") and "of the target's" in cov["text"]
    assert cov["rest"] == "between the sampling windows"  # stack sampling
    shown = run_cli("show", str(sid), "--db", str(db))
    assert cov["text"] in shown.stdout
    assert cov["text"] in written["md"].read_text()
    assert cov["text"] in html.unescape(written["html"].read_text(encoding="utf-8"))


def test_markdown_comparison_says_whose_methods_its_marks_follow(written):
    """MD marks this session's column as the HTML does, and says (as the HTML does) that the other
    session's figures carry that session's own methods: no column reads as a measurement unmarked."""
    from wattlens.app.report.rich_view import CMP_NOTE

    md = written["md"].read_text()
    assert CMP_NOTE in html.unescape(written["html"].read_text(encoding="utf-8"))
    assert CMP_NOTE in md.split("## Compared with session", 1)[1]
