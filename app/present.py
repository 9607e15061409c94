"""The one place that puts advice and its outcome into words: saving, interval, method, risk,
evidence, and "recommended → applied → measured".

Every surface renders from here — the CLI (`wattlens advise`, `wattlens optimize`), the app's
advisor cards, Markdown, HTML and PDF — so a saving reads the same everywhere. A saving is a
*fraction of energy saved* (``1 − E_after / E_before``) and is always printed as the change of
energy with its direction in words: a saving of 0.548 reads "−54.8 % energy per sample (saving)",
a negative saving "+10.0 % energy per sample (costs more)". Stored documents are read back as
:class:`~wattlens.advisor.recommend.Recommendation` objects first (no key guessing here).

Plain Python: no Qt, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wattlens.advisor.recommend import Evidence, PredictedSaving, Recommendation, Risk

# one wording, also for live applies
from wattlens.profiler.figures import UNPROVEN, change_pct, direction, includes_no_change

NOT_WORTH_IT = "not worth it yet"


def no_steps_text(kind: str | None) -> str:
    """Why a session has no steps (so no energy per step/sample/token), by how it was recorded:
    the app's card and the reports say the same, and what would give them."""
    if kind == "optimize":
        return ("an optimize run measures A/B rounds, not the model's steps: its energy per sample "
                "is in its A/B result")
    if kind == "run":
        return ("the in-process agent reported no step (it saw no optimizer step or model forward); "
                "a script can mark them with `agent.step(samples=…)`")
    return ("attach mode measures the whole process, not its steps: `wattlens run -- COMMAND` "
            "reports them from its in-process agent")


def saving_text(saving: float | None, basis: str = "energy per sample") -> str:
    """"−54.8 % energy per sample (saving)"; None → "n/a"."""
    if saving is None:
        return "n/a"
    return f"{change_pct(saving)} {basis} ({direction(saving)})"


def interval_text(low: float | None, high: float | None) -> str:
    """A saving interval as a change of energy, the larger saving first: "−45.0 % … −17.0 %"."""
    if low is None or high is None:
        return "n/a"
    return f"{change_pct(max(low, high))} … {change_pct(min(low, high))}"


def predicted_text(ps: PredictedSaving, *, with_method: bool = True) -> str:
    """The prediction in one line: change, interval, method — or "measure first: <command>"."""
    if ps.is_measure_first:
        return "measure first" + (f": {ps.measure_command}" if ps.measure_command else "")
    text = f"{saving_text(ps.fraction, ps.basis)}, interval {interval_text(ps.low, ps.high)}"
    return text + (f"; method: {ps.method}" if with_method else "")


def not_worth_it_reason(ps: PredictedSaving) -> str | None:
    """Why a prediction is not advice yet (its interval includes no change), else None."""
    if not ps.includes_zero:
        return None
    return (f"{NOT_WORTH_IT}: the predicted interval {interval_text(ps.low, ps.high)} includes no change, "
            "so applying it may cost energy — measure more before acting")


def risk_text(risk: Risk) -> str:
    return f"{risk.level} — {risk.text}" if risk.text else risk.level


def value_text(value, unit: str) -> str:
    """An evidence value with its unit: fractions (unit "fraction", or "fraction of ...") as percent, floats to 4 significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if unit == "fraction" or unit.startswith("fraction "):  # "fraction of sampled time"
            return f"{value * 100:.1f} % {unit[len('fraction '):]}".rstrip()
        number = f"{value:.4g}" if isinstance(value, float) else f"{value:,}"
        return f"{number} {unit}".rstrip()
    return f"{value} {unit}".rstrip()


def evidence_text(e: Evidence) -> str:
    return f"{e.what}: {value_text(e.value, e.unit)}" + (f"  [{e.source}]" if e.source else "")


def read_recommendations(docs: Sequence[Mapping]) -> tuple[list[Recommendation], list[str]]:
    """Stored documents as Recommendation objects, and a line for each that is not one."""
    recs, bad = [], []
    for d in docs:
        try:
            recs.append(Recommendation.from_dict(dict(d)))
        except (KeyError, TypeError, ValueError) as exc:
            bad.append(f"a stored recommendation could not be read ({exc}); run `wattlens advise` again")
    return recs, bad


def split_advice(recs: Sequence[Recommendation]) -> tuple[list[Recommendation], list[tuple[Recommendation, str]]]:
    """(advice, not worth it yet with the reason): a prediction whose interval includes 0 is no advice."""
    advice, held = [], []
    for r in recs:
        reason = not_worth_it_reason(r.predicted_saving)
        if reason is None:
            advice.append(r)
        else:
            held.append((r, reason))
    return advice, held


# ==== recommended → applied → measured ============================================================
@dataclass(frozen=True)
class Outcome:
    """One applied action next to the recommendation it came from: predicted and measured side by
    side. ``flagged`` is True when the measured saving falls outside the predicted interval."""

    action_id: int
    action: str
    status: str  # as stored (verified, unverified, refused …); every view shows ``status_text``
    recommended: str  # the recommendation's title (or "no recommendation linked")
    predicted: str
    measured: str
    flagged: bool
    flag_text: str
    fidelity: str
    optimize_session_id: int | None
    measured_fraction: float | None = None  # the A/B saving as a number (None: not measured)
    measured_interval: tuple[float, float] | None = None  # its 95 % interval (None: none)
    risk: str = "n/a"  # the recommendation's risk to quality

    @property
    def chain(self) -> str:
        return (f"recommended: {self.recommended} → applied: {self.action} ({self.status_text}, "
                f"action #{self.action_id}"
                + (f", session {self.optimize_session_id}" if self.optimize_session_id is not None else "")
                + f") → measured: {self.measured}")

    @property
    def status_text(self) -> str:
        """The status as the views show it (:func:`action_status_text`), never the bare stored word."""
        return action_status_text(self.status, self.measured_interval)

    def to_dict(self) -> dict:
        return {"action_id": self.action_id, "action": self.action, "status": self.status,
                "status_text": self.status_text,
                "recommended": self.recommended, "predicted": self.predicted, "measured": self.measured,
                "flagged": self.flagged, "flag_text": self.flag_text, "fidelity": self.fidelity,
                "optimize_session_id": self.optimize_session_id, "chain": self.chain,
                "measured_fraction": self.measured_fraction, "measured_interval": self.measured_interval,
                "risk": self.risk}


def steps_count_text(st: Mapping) -> str:
    """How many steps, as every view says it: a job of several ranks counts job steps and says
    how many rank steps they are (energy per step is then per job step)."""
    count = st.get("count")
    text = "n/a" if count is None else f"{count:,}"
    if st.get("ranks"):
        text += f" job steps ({st['rank_steps']:,} steps of {st['ranks']} ranks)"
    return text


def fidelity_text(fid: Mapping | None) -> str:
    """The fidelity figures of one result, one wording for optimize's output, show, the app and
    every report."""
    if not fid:
        return "n/a (not measured)"
    parts = []
    if fid.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {fid['top1_agreement'] * 100:.1f} %")
    if fid.get("kl_base_candidate") is not None:
        parts.append(f"KL {fid['kl_base_candidate']:.3g} nats")
    if fid.get("cosine_similarity") is not None:
        low = fid.get("cosine_similarity_min")
        parts.append(f"cosine {fid['cosine_similarity']:.4f}" + (f" (lowest {low:.4f})" if low is not None else ""))
    if fid.get("perplexity_base") is not None and fid.get("perplexity_candidate") is not None:
        parts.append(f"perplexity {fid['perplexity_base']:.4g} → {fid['perplexity_candidate']:.4g}")
    if fid.get("quality_loss") is not None:
        parts.append(f"quality loss ({fid.get('quality_metric') or 'n/a'}) {fid['quality_loss']:.4g}")
    return ", ".join(parts) or "n/a (not measured)"


def mib_text(b: float | None) -> str:
    """A size in MiB, as optimize's output and every report print it."""
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


def sizes_text(sizes: Mapping) -> str:
    """Original → optimized copy, in elements and bytes, with why the two can move apart."""
    mib = mib_text

    def n(x):
        return "n/a" if x is None else f"{int(x):,}"

    text = (f"tensor elements {n(sizes.get('base_params'))} → {n(sizes.get('candidate_params'))}; "
            f"tensor bytes {mib(sizes.get('base_tensor_bytes'))} → {mib(sizes.get('candidate_tensor_bytes'))} "
            "(elements count every stored number, bytes what memory holds: a quantized copy stores int8 "
            "weights plus their scales and zero points, so it can count more elements in fewer bytes)")
    if sizes.get("saved_weights_bytes") is None:  # stored before the files were recorded
        return text
    # what the disk holds may differ from memory: a module file's quantization is replayed on load
    on_load = ("; the file holds float weights, quantized when loaded"
               if sizes.get("weights_quantized_on_load") else "")
    return (f"{text}; weights on disk {mib(sizes.get('base_weights_bytes'))} → "
            f"{mib(sizes.get('saved_weights_bytes'))}{on_load}")


def measured_fraction(result: Mapping) -> tuple[float | None, tuple[float, float] | None, str]:
    """(saving, 95 % interval, method) from an action's stored result (its A/B verification)."""
    v = result.get("verification") or {}
    interval = v.get("saving_interval")
    method = ((v.get("baseline") or {}).get("energy_method")) or "n/a"
    return v.get("saving_fraction"), tuple(interval) if interval else None, method


def measured_text(saving: float | None, interval, method: str, reason: str | None = None) -> str:
    if saving is None:
        return f"n/a ({reason or 'no A/B result'})"
    if not interval:  # one counted round: a measured number, stored unverified (optimize_cmd)
        return f"{saving_text(saving)} ({method}); unverified: {reason or 'no interval'}"
    unproven = f"; {UNPROVEN}" if includes_no_change(interval) else ""
    return f"{saving_text(saving)}, 95 % CI {interval_text(interval[0], interval[1])} ({method}){unproven}"


def rounds_text(v: Mapping) -> str:
    """How many A/B rounds a figure rests on (a stored ``Verification`` dict), how many were
    refused and how many measured again after a disturbance: the CLI and the reports say it alike."""
    text = f"{v.get('n_rounds', 'n/a')} counted"
    refused = v.get("refused_rounds") or ()
    if refused:
        text += f", {len(refused)} refused (too short or no energy)"
    again = v.get("remeasured") or ()
    if again:
        kept = sum(1 for r in again if isinstance(r, Mapping) and r.get("counted") == "remeasurement")
        text += (f"; {len(again)} re-measured after a disturbance ({kept} counted from the re-measurement, "
                 "the disturbed measurement kept in the record and left out of the interval)")
    return text


#: a saving interval that includes no change yet reaches a change of this size either way cannot
#: tell a worthwhile effect from none: it reads "interval too wide", not "no difference shown"
WIDE_INTERVAL = 0.10


def action_status_text(status: str | None, interval: Sequence[float] | None = None) -> str:
    """The word every view shows for an applied action: its stored ``status`` as the interval of its
    A/B saving reads. The stored ``verified`` only says the A/B had enough rounds for an interval;
    shown bare beside "does not show a difference" it read as "the saving is proven", so it is
    never shown bare:

    * verified, the interval above no change: "measured: saving confirmed";
    * verified, the interval below no change: "measured: costs more, confirmed";
    * verified, the interval includes no change and stays within ±``WIDE_INTERVAL``:
      "measured: no difference shown"; reaching past it: "measured: interval too wide";
    * unverified: "unverified: no interval"; refused (``--max-quality-loss``): "refused: quality
      loss above the limit, not written";
    * any other status (a live apply's "applied", "reverted" …) as stored.
    """
    if status == "verified":
        if not interval:
            return "measured: no interval"
        low, high = min(interval), max(interval)
        if low > 0.0:
            return "measured: saving confirmed"
        if high < 0.0:
            return "measured: costs more, confirmed"
        return ("measured: interval too wide" if max(-low, high) >= WIDE_INTERVAL
                else "measured: no difference shown")
    if status == "unverified":
        return "unverified: no interval"
    if status == "refused":
        return "refused: quality loss above the limit, not written"
    return str(status or "n/a")


def _predicted_before(ps: PredictedSaving | None) -> str:
    """What was predicted before an applied action was measured. A "measure first" answer names
    the command that measures it — the very run that measured it — so it is said as what it is."""
    if ps is None:
        return "n/a (no prediction stored)"
    if ps.is_measure_first:
        return "no prediction before this run" + (f" ({ps.text})" if ps.text else "")
    return predicted_text(ps)


def outcome(action: Mapping, rec: Recommendation | None) -> Outcome:
    """The outcome view of one stored action row (``Store.actions``) and its recommendation."""
    result = action.get("result") or {}
    saving, interval, method = measured_fraction(result)
    # a refusal (--max-quality-loss) stops before the A/B: no figure, and the refusal says why
    reason = ((result.get("verification") or {}).get("saving_reason")
              or (result.get("refusal") or {}).get("text"))
    ps = rec.predicted_saving if rec is not None else None
    if ps is None and isinstance(result.get("predicted"), Mapping):
        ps = PredictedSaving.from_dict(result["predicted"])
    flagged, flag = False, ""
    if ps is not None and not ps.is_measure_first and saving is not None:
        if ps.low <= saving <= ps.high:
            # the point is inside; only a measured interval inside it as well confirms the prediction
            flag = ("within the predicted interval"
                    if not interval or (ps.low <= min(interval) and max(interval) <= ps.high) else
                    f"point estimate inside the predicted interval {interval_text(ps.low, ps.high)}; the "
                    f"measurement's own 95 % CI {interval_text(*interval)} is too wide to confirm it")
        elif interval and min(interval) <= ps.high and max(interval) >= ps.low:
            # a noisy run: its own interval overlaps the prediction, so it does not contradict it
            # (a point outside was FLAGGED however wide the measurement's interval)
            flag = (f"measured {change_pct(saving)} lies outside the predicted interval "
                    f"{interval_text(ps.low, ps.high)}, but its own 95 % CI {interval_text(*interval)} "
                    "overlaps it: this run cannot tell them apart")
        else:
            flagged = True
            flag = (f"FLAGGED: measured {change_pct(saving)} lies outside the predicted interval "
                    f"{interval_text(ps.low, ps.high)}"
                    + (f" (its own 95 % CI {interval_text(*interval)} does not reach it)" if interval else ""))
    return Outcome(
        action_id=int(action.get("id") or 0), action=str(action.get("kind") or ""),
        status=str(action.get("status") or "n/a"),
        recommended=rec.title if rec is not None else "no recommendation linked",
        predicted=_predicted_before(ps),
        measured=measured_text(saving, interval, method, reason), flagged=flagged, flag_text=flag,
        fidelity=fidelity_text(result.get("fidelity")), optimize_session_id=action.get("session_id"),
        measured_fraction=saving, measured_interval=interval, risk=risk_text(rec.risk) if rec is not None else "n/a")


def outcomes(recs: Sequence[Recommendation], actions: Sequence[Mapping], session_id: int) -> list[Outcome]:
    """The outcomes of the actions applied *from* session ``session_id`` (linked by
    ``source_session_id``), each with the recommendation it applied (by stored index, else by action)."""
    out = []
    for a in actions:
        if a.get("source_session_id") != session_id:
            continue
        rec = None
        idx = (a.get("params") or {}).get("recommendation_index")
        if isinstance(idx, int) and 0 <= idx < len(recs) and recs[idx].action == a.get("kind"):
            rec = recs[idx]
        rec = rec or next((r for r in recs if r.action == a.get("kind")), None)
        if rec is None and isinstance((a.get("params") or {}).get("recommendation"), Mapping):
            try:
                rec = Recommendation.from_dict(dict(a["params"]["recommendation"]))
            except (KeyError, TypeError, ValueError):
                rec = None
        out.append(outcome(a, rec))
    return out
