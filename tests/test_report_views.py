"""The rich report's pure helpers (formatting of savings, thinning, time origin, PDF flow) and the
report schema itself. No session needed: these run in milliseconds.

``validate`` checks a document against docs/report-schema.json with jsonschema when it is
installed, and always with a small subset validator below: jsonschema is not a dependency of
wattlens, so the check must not silently vanish where it is missing. The subset validator refuses
any keyword it does not implement, so the schema cannot grow past what is checked here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from wattlens.app.report import rich, rich_view
from wattlens.app.report.formats import fmt

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "report-schema.json"
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs", "examples", "default"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


class SchemaError(AssertionError):
    pass


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _TYPES[name])


def _check(value, schema: dict, root: dict, at: str) -> None:
    unknown = set(schema) - _ANNOTATIONS - {"type", "enum", "const", "properties", "required", "items",
                                            "additionalProperties", "$ref", "anyOf", "minimum", "minItems",
                                            "maxItems"}
    if unknown:
        raise SchemaError(f"schema at {at} uses keywords this validator does not check: {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        _check(value, root["$defs"][ref.removeprefix("#/$defs/")], root, at)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            raise SchemaError(f"{at}: {value!r:.80} is not of type {types}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{at}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{at}: {value!r} != {schema['const']!r}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        raise SchemaError(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, list) and not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
        raise SchemaError(f"{at}: {len(value)} items, not {schema.get('minItems', 0)} … {schema.get('maxItems')}")
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                _check(value, sub, root, at)
                break
            except SchemaError as exc:
                errors.append(str(exc))
        else:
            raise SchemaError(f"{at}: matches none of anyOf: {errors}")
    if isinstance(value, dict):
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise SchemaError(f"{at}: missing required {missing}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                _check(v, props[k], root, f"{at}.{k}")
            elif extra is False:
                raise SchemaError(f"{at}: undocumented property {k!r}")
            elif isinstance(extra, dict):
                _check(v, extra, root, f"{at}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _check(v, schema["items"], root, f"{at}[{i}]")


def validate(doc, schema: dict) -> None:
    """Raise if ``doc`` does not follow ``schema`` (jsonschema too, when it is installed)."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    _check(doc, schema, schema, "$")


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _minimal_report() -> dict:
    summary = {"session_id": 3, "name": "n", "status": "completed", "duration_s": 1.0, "sources": [],
               "energy_j": None, "energy_wh": None, "energy_method": None, "target": None, "steps": None,
               "notes": []}
    return {"schema": "wattlens-report", "schema_version": 1, "generated_at": 1.0,
            "session": {"id": 3, "name": "n", "kind": "attach", "status": "completed", "end_reason": None,
                        "target_pid": None, "target_cmdline": None, "host": "h", "hardware": {},
                        "started_at": 1.0, "ended_at": 2.0, "duration_s": 1.0, "interval_s": 0.1},
            "sources": [], "series": [], "summary": summary, "steps": [], "layers": [], "events": [],
            "recommendations": [], "actions": [], "comparison": None}


# ---- the schema ---------------------------------------------------------------------------------
def test_schema_is_draft_2020_12_and_documents_every_field(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, at):
        if isinstance(node, dict):
            for k, v in (node.get("properties") or {}).items():
                assert "description" in v, f"{at}.{k} has no description"
            for k, v in node.items():
                walk(v, f"{at}.{k}")
        elif isinstance(node, list):
            for v in node:
                walk(v, at)

    walk(schema, "$")
    validate(_minimal_report(), schema)


@pytest.mark.parametrize("breakage", [
    lambda r: r.pop("summary"),
    lambda r: r["summary"].update(energy_j=0.0, energy_wh="0"),  # a string where a number belongs
    lambda r: r["session"].update(status="exploded"),
    lambda r: r["summary"].update(surprise=1),  # undocumented field
    lambda r: r.update(comparison={"other_session": {"id": 1, "name": "x"}, "energy_j": {"this": 1.0}}),
])
def test_schema_rejects_broken_reports(schema, breakage):
    report = _minimal_report()
    breakage(report)
    with pytest.raises(Exception):  # noqa: B017 - SchemaError or jsonschema's ValidationError
        validate(report, schema)


# ---- formatting ---------------------------------------------------------------------------------
def test_savings_say_which_way_energy_went():
    from wattlens.advisor.recommend import PredictedSaving, rule_of_thumb
    from wattlens.app import present

    assert present.saving_text(0.548) == "−54.8 % energy per sample (saving)"
    assert present.saving_text(-0.1) == "+10.0 % energy per sample (costs more)"
    assert present.saving_text(None) == "n/a"  # never 0
    assert present.interval_text(0.17, 0.45) == "−45.0 % … −17.0 %"
    ps = rule_of_thumb(0.18, 0.42, "published results", central=0.3)
    assert present.predicted_text(ps, with_method=False) == \
        "−30.0 % energy per sample (saving), interval −42.0 % … −18.0 %"
    assert present.not_worth_it_reason(ps) is None
    maybe = PredictedSaving(0.0, -0.02, 0.02, "regression", "")
    assert present.not_worth_it_reason(maybe).startswith("not worth it yet: the predicted interval −2.0 % … +2.0 %")


def test_value_text_units_from_key_names_and_na():
    assert rich.value_text(None, "energy_j") == "n/a"
    assert rich.value_text(2.5, "energy_j") == fmt(2.5, "J") == "2.5 J"
    assert rich.value_text(0.25, "saving_fraction") == "25.0 %"
    assert rich.value_text(3.0, "latency_s") == "3 s"
    assert rich.value_text(True) == "yes"
    assert rich.value_text({"a_w": 1.0, "b": None}) == "a_w: 1 W, b: n/a"
    assert rich.value_text(list(range(12))).endswith("… (2 more)")


def test_unreadable_recommendations_are_said_not_guessed():
    report = {"recommendations": [{}, {"title": "t", "measured_saving": {"fraction": 0.1}}],
              "actions": [{"kind": "bf16"}]}
    views = rich.recommendation_views(report)
    assert [v.title for v in views] == ["(unreadable recommendation)"] * 2
    assert all(v.predicted == "n/a" and v.risk == "n/a" and "wattlens advise" in v.rationale for v in views)
    (act,) = rich.action_views(report)
    assert (act.status, act.predicted, act.measured, act.params) == ("n/a", "n/a", "n/a", "none")


def test_estimate_flags_follow_the_methods():
    est = {"summary": {"energy_method": "counter+estimated", "target": {"method": "attributed ... of estimated energy"}}}
    assert rich.estimate_flags(est) == {"total": True, "target": True, "derived": True}
    measured = {"summary": {"energy_method": "counter", "target": {"method": "attributed: sm share of counter energy"}}}
    assert rich.estimate_flags(measured) == {"total": False, "target": False, "derived": False}


# ---- time axis and plot data --------------------------------------------------------------------
def test_time_origin_prefers_session_start_then_first_sample():
    data = {"a/power_w": (np.array([5_000_000_000, 6_000_000_000]), np.array([1.0, 2.0])),
            "b/power_w": (np.array([4_500_000_000]), np.array([1.0]))}
    assert rich.time_origin_ns({"session": {"start_ns": 4_000_000_000}}, data) == (4_000_000_000, "time since session start (s)")
    assert rich.time_origin_ns({"session": {}}, data) == (4_500_000_000, "time since first sample (s)")
    assert rich.time_origin_ns({"session": {}}, {})[0] is None


def test_thin_keeps_peaks_and_order():
    t = np.arange(100_000, dtype=np.int64)
    v = np.zeros(100_000)
    v[54_321] = 99.0
    v[7] = -5.0
    tt, vv = rich.thin(t, v, max_points=1000)
    assert len(tt) <= 1000 and np.all(np.diff(tt) > 0)
    assert vv.max() == 99.0 and vv.min() == -5.0
    short = np.arange(10)
    assert rich.thin(short, short.astype(float))[0] is short


def test_timelines_pick_power_energy_and_util_series():
    ns = np.array([1_000_000_000, 2_000_000_000], dtype=np.int64)
    keys = {"cpu-model/power_w": "estimated", "cpu-model/energy_j": "estimated", "cpu-model/util_pct": "polled",
            "target/cpu-model/power_w": "attributed: cpu-time share × estimated",
            "target/power_w": "attributed (estimated)", "target/energy_j": "attributed (estimated)"}
    report = {"session": {"start_ns": 0}, "sources": [{"id": "cpu-model"}],
              "series": [{"key": k, "unit": "W", "method": m, "label": k} for k, m in keys.items()]}
    data = {k: (ns, np.array([1.0, 2.0])) for k in keys}
    lines, xlabel = rich.timelines(report, data)
    assert xlabel == "time since session start (s)"
    # one source: the target's total equals its one share, so it is not drawn twice
    assert [ln.key for ln in lines["power"]] == ["cpu-model/power_w", "target/cpu-model/power_w"]
    assert [ln.key for ln in lines["energy"]] == ["cpu-model/energy_j", "target/energy_j"]
    assert [ln.key for ln in lines["util"]] == ["cpu-model/util_pct"]
    assert list(lines["power"][0].t_s) == [1.0, 2.0] and all(ln.estimated for ln in lines["power"])


def test_fit_heights_shrinks_plots_to_the_room():
    specs = [rich.PlotSpec("a", 3.0, 0.7, 1.0, print), rich.PlotSpec("b", 3.0, 0.7, 1.0, print)]
    assert rich.fit_heights(specs, 100.0) == specs
    fitted = rich.fit_heights(specs, 8.0)
    assert sum(s.height + 0.1 for s in fitted) == pytest.approx(8.0)
    floor = rich.fit_heights(specs, 1.0)
    assert all(s.axes_h == 1.0 for s in floor)  # never below the minimum: the PDF flows on instead


def test_wrap_keeps_words_whole_and_cuts_only_overlong_ones():
    assert rich._wrap("14.3 W (estimated)", 10) == ["14.3 W", "(estimated", ")"]  # only when it must
    assert rich._wrap("14.3 W (estimated)", 11) == ["14.3 W", "(estimated)"]
    assert rich._wrap("GPT2LMHeadModel/GPT2Model", 10) == ["GPT2LMHead", "Model/GPT2", "Model"]
    assert rich._wrap("", 10) == [""]
    assert rich._wrap("a\nb", 10) == ["a", "b"]


def test_pdf_of_an_empty_session_is_still_readable(tmp_path):
    path = tmp_path / "empty.pdf"
    pages = rich.write_pdf(_minimal_report(), {}, path)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and len(pages) == rich.pdf_page_count(data) == 4
    html = rich.render_html(_minimal_report(), {})
    assert "no samples were recorded" in html and "n/a" in html


def test_compare_normalises_and_warns_when_the_runs_differ():
    from wattlens.app.report.data import compare_summaries

    a = {"duration_s": 60.0, "energy_j": 600.0, "steps": {"count": 10, "samples": 160, "energy_per_sample_j": 3.0}}
    b = {"duration_s": 30.0, "energy_j": 600.0, "steps": {"count": 10, "samples": 40, "energy_per_sample_j": 12.0}}
    sa = {"target_cmdline": ["python", "train.py", "--batch", "16"]}
    sb = {"id": 2, "name": "b", "target_cmdline": ["python", "train.py", "--batch", "4"]}
    c = compare_summaries(a, b, sb, this_session=sa)
    assert c["basis"] == "energy per sample"
    assert c["mean_power_w"]["this"] == 10.0 and c["mean_power_w"]["other"] == 20.0  # per second, not totals
    assert c["energy_per_sample_j"]["delta_pct"] == -75.0
    warnings = " | ".join(c["warnings"])
    assert "command lines differ" in warnings and "batch sizes differ: 16 vs 4" in warnings
    assert "durations differ (60 s vs 30 s)" in warnings
    same = compare_summaries({"duration_s": 30.0, "energy_j": 1.0}, {"duration_s": 29.0, "energy_j": 2.0},
                             {"id": 3, "name": "c"}, this_session={})
    assert same["warnings"] == [] and same["basis"].startswith("energy per second")
    assert same["basis"].endswith("neither session reported samples or tokens")
    # a training run beside an optimize sweep that stopped early: both said; and the basis says whose
    # samples are missing (it said "neither" where this session had them)
    mixed = compare_summaries(a, {"duration_s": 61.0, "energy_j": 1.0}, {"id": 4, "name": "opt", "kind": "optimize",
                                                                          "status": "interrupted"},
                              this_session={"kind": "run", "status": "completed"})
    assert mixed["basis"] == "energy per second (mean power): only this session reported samples or tokens"
    assert any(w.startswith("the sessions were recorded differently (run vs optimize): an optimize session "
                            "measures the optimizer's own process") for w in mixed["warnings"]), mixed["warnings"]
    assert any(w.startswith("the other session ended as interrupted") for w in mixed["warnings"])
    text = fmt_md({"comparison": c})
    assert "Energy per second (mean power), all sources" in text and "Warning:** the durations differ" in text
    assert "| energy_j |" not in text  # labels with units, not raw keys


def fmt_md(report):
    from wattlens.app.report.formats import _markdown_comparison

    return "\n".join(_markdown_comparison(report))


def test_latency_row_uses_the_stored_text_with_its_interval():
    """Reports say the A/B latency change as optimize's CLI did: its interval and, when that
    includes 0, that this run does not show a difference (not a bare change, read as a fact)."""
    stored = ("+16.4 % time per sample (costs more), 95 % CI −57.4 % … +218.1 %; "
              "the interval includes no change, so this run does not show a difference")
    res = {"verification": {"latency_saving_fraction": -0.164}, "latency_text": stored}
    assert dict(rich_view.verification_rows(res))["Latency"] == stored
    old = {"verification": {"latency_saving_fraction": -0.164}}  # stored before latency_text existed
    assert dict(rich_view.verification_rows(old))["Latency"] == "+16.4 % time per sample (costs more)"
