"""`wattlens optimize`: apply actions to a copy and verify them by measurement, or sweep batch
sizes — recorded as a session (power over time, the action with predicted and measured saving,
the measurements the regression learns from) that the app and the reports can open.

Heavy imports (torch, transformers, the advisor) happen inside the functions: the CLI stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from wattlens.profiler.errors import ActionError, BadInputError
from wattlens.profiler.session import STOP_SIGNALS, StopSignals, stopped_by  # run/attach's words


def one_round_only(v) -> bool:
    """Whether the A/B gave a figure but no interval (one counted round): a measured number with
    no sound figure behind it, stored ``unverified`` and never a point for the regression."""
    return v.saving_fraction is not None and v.saving_interval is None


def measured_text(v) -> str:
    from wattlens.app.present import measured_text as words

    # a figure without an interval (one round) is shown with why it is unverified (present)
    return words(v.saving_fraction, v.saving_interval, v.baseline.energy_method, v.saving_reason)


def latency_text(v) -> str:
    """The change of time per sample worded as the energy figure is: its interval (the same
    log-ratio estimator, verify.ratio_saving) and, when that includes 0, that it shows no difference."""
    from wattlens.app.present import interval_text, saving_text
    from wattlens.profiler.figures import UNPROVEN, includes_no_change

    interval = v.latency_saving_interval
    text = saving_text(v.latency_saving_fraction, "time per sample")
    if v.latency_saving_fraction is None:
        return text
    if not interval:
        return f"{text} (one round: no interval)"
    text += f", {v.confidence * 100:.0f} % CI {interval_text(interval[0], interval[1])}"
    return text + (f"; {UNPROVEN}" if includes_no_change(interval) else "")


def sizes_line(s: dict) -> str:
    """Elements and in-memory bytes of the original and the copy, and the weight files as written
    (a module file's quantization is replayed on load: its file holds float weights)."""
    from wattlens.app.present import mib_text as mib  # the reports' figures, to the same digits

    line = (f"tensor elements: {s['base_params']:,} → {s['candidate_params']:,}; tensor bytes in memory "
            f"{mib(s['base_tensor_bytes'])} → {mib(s['candidate_tensor_bytes'])}")
    if s.get("saved_weights_bytes") is not None:
        line += (f"; weights on disk {mib(s.get('base_weights_bytes'))} → {mib(s['saved_weights_bytes'])}"
                 + (" (float weights, quantized when loaded)" if s.get("weights_quantized_on_load") else ""))
    return line


class OptimizeStopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP during optimize: raised in the main thread so that every temp
    folder (the staged copy, the fresh-interpreter load check's) is removed on the way out, as
    Ctrl-C always did. A KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _RaiseOnStop(StopSignals):
    """The run/attach stop signals (SIGTERM, SIGHUP, Ctrl-C), turned into :class:`OptimizeStopped`:
    optimize has no polling loop to notice a recorded signal, its work is one long call. After
    the first, a SIGTERM/SIGHUP is ignored so that the cleanup runs to its end; a second Ctrl-C
    still forces (KeyboardInterrupt) here, where the work is one long call that may not stop."""

    holding = False

    def hold(self) -> None:
        """From now on (the work is done, its session being stored) a signal is not raised."""
        self.holding = True

    def _handler(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum
            if not self.holding:
                raise OptimizeStopped(signum)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


def _source_recommendation(store, session_id: int | None, action: str) -> tuple[int | None, dict | None]:
    """(index, stored recommendation) of ``session_id``'s advice whose action is ``action``; raises
    BadInputError when that session does not exist (checked before anything is recorded)."""
    if session_id is None:
        return None, None
    store.session(session_id)  # raises the store's one-line "no session" error
    docs = store.recommendations(session_id)
    return next(((i, d) for i, d in enumerate(docs) if d.get("action") == action), (None, None))


def _parse_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInputError(f"--batch-sizes must be integers separated by commas, got '{text}'",
                            hint="for example --batch-sizes 1,2,4,8,16,32") from None
    if not sizes or min(sizes) < 1:
        raise BadInputError("--batch-sizes must be positive", hint="for example --batch-sizes 1,2,4,8")
    return sizes


def _check_arguments(args) -> None:
    """Every argument that can be checked without loading the model (raises BadInputError)."""
    from wattlens.advisor.modelio import check_model_file

    check_model_file(args.model)  # a script given as MODEL: said before any session is recorded
    if args.action:
        from wattlens.advisor.actions import parse_actions
        from wattlens.advisor.modelio import check_out_dir

        parse_actions(args.action)
        check_out_dir(args.out, args.model)
    if args.eval_text is not None and not Path(args.eval_text).is_file():
        raise BadInputError(f"--eval-text {args.eval_text}: no such file", hint="give a UTF-8 text file")


def stage_printer(say):
    """progress(stage, fraction) that says each stage once ("wattlens: save…"): a stage reported
    again later (save: the rename at the end) is the same stage, not a new one."""
    seen: set[str] = set()

    def progress(stage: str, fraction: float) -> None:
        if stage not in seen:
            seen.add(stage)
            say(f"wattlens: {stage}…")

    return progress


def _what_was_written(args) -> str:
    out = getattr(args, "out", None)
    if not out:
        return "nothing was written"
    if (Path(out) / "wattlens-optimization.json").is_file():
        return f"the copy in {out} was complete before the stop"
    left = sorted(Path(out).parent.glob(f".{Path(out).name}.partial-*"))
    if left:  # a second Ctrl-C cut the removal short: said, not claimed removed
        return f"nothing was written to {out}; its unfinished temp folder {left[0]} is left: remove it"
    return f"nothing was written to {out} (its temp folder is removed)"


def _model_key(path: str, params: int | None) -> str:
    return f"{Path(path).resolve().name}:{params or '?'}"


def optimize_command(args) -> int:
    from wattlens.profiler.process import Target
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.store import Store

    # transformers' progress bars and torch's notice that its int8 tensor API will move to torchao
    # are noise on a command line whose output is the measurement (the advisor documents both)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
    sizes = _parse_sizes(args.batch_sizes)
    if not args.action and not sizes:
        raise BadInputError("nothing to do: give --action ACTION[,ACTION] (with --out DIR) or --batch-sizes",
                            hint="e.g. wattlens optimize ./model --action quantize-int8 --out ./model-int8")
    if args.action and not args.out:
        raise BadInputError("--action needs --out DIR (the optimized copy goes there; the input is never changed)")
    if not Path(args.model).exists():
        raise BadInputError(f"no such file or folder: {args.model}",
                            hint="give a Hugging Face model folder (config.json + weights) or a saved torch module")
    _check_arguments(args)  # before a session is recorded: bad input records no "failed" session
    from wattlens.advisor.modelio import OutputTakenError
    if getattr(args, "from_session", None) is not None and not args.action:
        raise BadInputError("--from-session links an applied --action to its recommendation",
                            hint="give --action ACTION --out DIR too")
    store = Store(args.db)
    args.source_rec = _source_recommendation(store, getattr(args, "from_session", None), args.action)

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    progress = stage_printer(say)

    name = f"optimize {Path(args.model).name}: " + (args.action or f"batch sizes {args.batch_sizes}")
    session = ProfilingSession(store, target=Target(os.getpid()), kind="optimize", name=name,
                               interval_s=0.1, settings={"model": str(Path(args.model).resolve())})
    # entered before the session starts (as run/attach do), left after it is stored
    with _RaiseOnStop((*STOP_SIGNALS, signal.SIGINT)) as signals:
        try:
            sid = session.start()
        except KeyboardInterrupt as exc:  # a stop while the session starts: nothing measured yet
            signals.hold()
            signum = getattr(exc, "signum", signal.SIGINT)
            if session.session_id is not None:
                session.stop("stopped", f"stopped by {stopped_by(signum)}")
            print(f"wattlens: stopped by {stopped_by(signum)} before anything was measured; nothing was written",
                  file=sys.stderr, flush=True)
            return 128 + signum
        doc = {"session_id": sid}
        try:
            # the session's number is announced once it is kept: an input found unusable only once
            # opened removes it again (issue 9), and a number announced must then exist
            say(f"wattlens: recording this run in {store.display_name}")
            if args.action:
                code = _run_actions(args, store, session, sizes, progress, doc, say)
            else:
                code = _run_sweep(args, store, session, sizes, progress, doc, say)
        except OutputTakenError as exc:
            signals.hold()
            # another run took --out meanwhile: the session's samples are kept, as failed (its A/B
            # figure was not stored: the copy it measured was not written)
            session.stop("failed", str(exc))
            say(f"wattlens: recorded this run as session {sid} (failed) in {store.display_name}")
            raise
        except BadInputError:
            signals.hold()
            # the input turned out unusable once opened (not a model, a pickle refused...): nothing
            # was measured worth keeping, so no "failed" session stays behind (issue 9)
            session.stop("failed", "bad input")
            store.delete_session(sid)
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: a user stop, as run/attach store it
            signum = getattr(exc, "signum", signal.SIGINT)
            how = stopped_by(signum)
            session.stop("stopped", f"stopped by {how}")
            print(f"wattlens: stopped by {how} — {_what_was_written(args)}; session {sid} is stored as "
                  f"stopped in {store.display_name}", file=sys.stderr, flush=True)
            return 128 + signum
        except BaseException as exc:
            signals.hold()
            session.stop("failed", f"optimize failed: {exc}")
            say(f"wattlens: recorded this run as session {sid} (failed) in {store.display_name}")
            raise
        signals.hold()
        session.stop("completed" if code == 0 else "failed", doc.get("outcome"))
    say(f"wattlens: recorded this run as session {sid}{'' if code == 0 else ' (failed)'} in {store.display_name}")
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    if code != 0 and doc.get("error"):  # the work failed and said so: its one line, last
        # a refusal is the answer to the user's own limit, worded as such; any other failure an error
        said = doc["error"] if doc.get("status") == "refused" else f"error: {doc['error']}"
        print(f"wattlens: {said}", file=sys.stderr, flush=True)
    return code


def _run_actions(args, store, session, sizes, progress, doc, say) -> int:
    from wattlens.advisor.features import ab_points
    from wattlens.advisor.optimize import QualityLossError, optimize
    from wattlens.advisor.regression import predict_action_saving

    history = ab_points(store.measurements("ab"))  # before this run: a prediction, not hindsight
    error = None
    try:
        result = optimize(args.model, args.action, args.out, max_quality_loss=args.max_quality_loss,
                          eval_text=args.eval_text, batch_sizes=sizes,
                          trust_pickle=getattr(args, "trust_pickle", False),
                          calibration=getattr(args, "calibration", None),
                          tokenizer=getattr(args, "tokenizer", None),
                          heal_steps=getattr(args, "heal_steps", 0) or 0, heal_text=getattr(args, "heal_text", None),
                          n_rounds=args.rounds, progress=progress)
    except QualityLossError as exc:  # refused: measured, stored, nothing written
        return _refused(args, store, session, exc, doc, history)
    status = "verified"
    v = result.verification
    if v.saving_fraction is None:
        # no sound energy figure (energy unavailable, or every round too short for the meter):
        # stored, with why, but not as verified — and not as a point for the regression
        status = "unverified"
        error = ActionError(
            f"the A/B run gave no sound energy figure ({v.saving_reason}); the copy in {result.out_dir} "
            "is unverified",
            hint="run the same command again, with more --rounds, when the machine is quieter")
    elif one_round_only(v):
        # a figure from one counted round has no interval: measured and shown, not verified (a
        # one-round "+176 %" once became a regression point that --rounds 2 put at −1.1 %)
        status = "unverified"
    params = v.baseline.model_params
    pred = predict_action_saving(history, args.action, params=params)
    predicted = pred.to_predicted_saving()
    rec_index, rec_doc = getattr(args, "source_rec", (None, None))
    if rec_doc is not None and (rec_doc.get("predicted_saving") or {}).get("fraction") is not None:
        # applied from a recommendation: its card's prediction is the one to hold the result against
        from wattlens.advisor.recommend import PredictedSaving

        predicted = PredictedSaving.from_dict(rec_doc["predicted_saving"])
    v = v.with_prediction(predicted.fraction, None if predicted.fraction is None else (predicted.low, predicted.high),
                          predicted.method)
    from wattlens.app.present import action_status_text

    shown = action_status_text(status, v.saving_interval)  # the word every view shows for it
    action_result = {
        "verification": v.to_dict(), "side_by_side": v.side_by_side(), "status_text": shown,
        "remeasured_rounds": v.n_remeasured,
        "measured_text": measured_text(v), "predicted_text": predicted.text,
        "latency_text": latency_text(v),
        "fidelity": v.fidelity.to_dict() if v.fidelity else None, "sizes": result.sizes,
        "out_dir": result.out_dir, "quality_ok": result.quality_ok, "healing": result.healing,
        "predicted": predicted.to_dict(), "regression_predicted": pred.to_predicted_saving().to_dict(),
    }
    link = {"recommendation_index": rec_index, "recommendation": rec_doc} if rec_doc is not None else {}
    action_id = store.add_action(session_id=session.session_id, kind=args.action, status=status,
                                 params={"model": str(Path(args.model).resolve()), "actions": args.action,
                                         "out": args.out, "max_quality_loss": args.max_quality_loss, **link},
                                 result=action_result, source_session_id=getattr(args, "from_session", None))
    if v.saving_fraction is not None and v.saving_interval is not None:  # a sound figure only
        store.add_measurements([{
            "session_id": session.session_id, "kind": "ab", "model_key": _model_key(args.model, params),
            "action": args.action, "saving_fraction": v.saving_fraction, "params": params,
            "energy_per_sample_j": v.candidate.energy_per_sample_j,
            "payload": {"interval": v.saving_interval, "method": v.baseline.energy_method, "action_id": action_id}}])
    if result.batch_sweep:
        _store_sweep(store, session.session_id, args.model, params, result.batch_sweep)
    doc.update({"status": status, "status_text": shown, "remeasured_rounds": v.n_remeasured,
                "action_id": action_id, "result": result.to_dict(),
                "predicted": predicted.to_dict() if hasattr(predicted, "to_dict") else str(predicted),
                "measured_text": action_result["measured_text"], "predicted_text": predicted.text,
                "latency_text": action_result["latency_text"]})
    if not args.json:
        from wattlens.app import present

        fid = v.fidelity
        print(f"actions: {args.action}  →  {result.out_dir or 'nothing written'} — {shown}")
        print(f"  measured:  {action_result['measured_text']}")
        print(f"  predicted: {predicted.text if predicted.is_measure_first else present.predicted_text(predicted)}")
        print(f"  latency:   {action_result['latency_text']}")
        print(f"  rounds:    {present.rounds_text(v.to_dict())}")
        if status == "unverified":
            print("  stored as unverified: this figure is not used to predict other runs")
        if fid:
            print(f"  fidelity:  {present.fidelity_text(fid.to_dict())}")
        for a in result.actions:
            if "calibration" in a.details:
                print(f"  {a.spec} calibrated on {a.details['calibration']} "
                      f"({a.details['calibration_samples']} samples)")
            if "block_scores" in a.details:
                scores = ", ".join(f"{i}:{x:.3f}" for i, x in enumerate(a.details["block_scores"]))
                print(f"  block redundancy (cosine in/out): {scores}; removed {a.details['removed_blocks']}")
        h = result.healing
        if h:
            energy = f"{h['energy_j']:.3g} J ({h['energy_method']})" if h["energy_j"] is not None else f"n/a ({h['energy_reason']})"
            payback = (f"{h['payback_samples']:.3g} samples" if h["payback_samples"] is not None
                       else f"n/a ({h['payback_reason']})")
            print(f"  healing: {h['steps']} steps on {h['source']}; held-out KL {h['held_out_kl_before']:.4g} → "
                  f"{h['held_out_kl_after']:.4g} nats; cost {energy}; pays back after {payback}")
        for note in v.notes:
            if note.startswith(("round ", "counted round")):  # a round measured again, refused or disturbed
                print(f"  note: {note}")
        print(f"  {sizes_line(result.sizes)}")
    if error is not None:  # stored, said in one line last, and --json still prints its one document
        doc.update({"outcome": str(error), "error": str(error)})
        return error.exit_code
    doc["outcome"] = f"{args.action}: {action_result['measured_text']}"
    return 0


def _refused(args, store, session, exc, doc, history) -> int:
    """The quality check refused the copy (``--max-quality-loss``). Its A/B was run all the same
    (what it would save is what a healing run can keep: the heal rule reads it) and is stored with
    the action, ``refused``, and as a point for the regression when sound; nothing is written to
    --out; exit 1 with one line that says what was refused, by how much and what to do (printed
    last by :func:`optimize_command`)."""
    from wattlens.advisor.regression import predict_action_saving
    from wattlens.app import present

    result = exc.result
    refusal = result.refusal
    v = result.verification
    shown = present.action_status_text("refused")
    fidelity = result.fidelity.to_dict() if result.fidelity else None
    measured = measured_text(v) if v is not None else present.measured_text(None, None, "n/a", refusal["text"])
    params = v.baseline.model_params if v is not None else None
    predicted = predict_action_saving(history, args.action, params=params).to_predicted_saving()
    action_result = {"verification": v.to_dict() if v is not None else None, "refusal": refusal,
                     "status_text": shown, "measured_text": measured, "predicted_text": predicted.text,
                     "latency_text": latency_text(v) if v is not None else None,
                     "side_by_side": v.side_by_side() if v is not None else None,
                     "fidelity": fidelity, "sizes": result.sizes, "out_dir": None,
                     "quality_ok": False, "healing": result.healing, "predicted": predicted.to_dict()}
    rec_index, rec_doc = getattr(args, "source_rec", (None, None))
    link = {"recommendation_index": rec_index, "recommendation": rec_doc} if rec_doc is not None else {}
    action_id = store.add_action(session_id=session.session_id, kind=args.action, status="refused",
                                 params={"model": str(Path(args.model).resolve()), "actions": args.action,
                                         "out": args.out, "max_quality_loss": args.max_quality_loss, **link},
                                 result=action_result, source_session_id=getattr(args, "from_session", None))
    if v is not None and v.saving_fraction is not None and v.saving_interval is not None:  # a sound figure
        store.add_measurements([{
            "session_id": session.session_id, "kind": "ab", "model_key": _model_key(args.model, params),
            "action": args.action, "saving_fraction": v.saving_fraction, "params": params,
            "energy_per_sample_j": v.candidate.energy_per_sample_j,
            "payload": {"interval": v.saving_interval, "method": v.baseline.energy_method, "action_id": action_id}}])
    line = f"{args.action} {exc}"
    doc.update({"status": "refused", "status_text": shown, "action_id": action_id, "result": result.to_dict(),
                "refusal": refusal, "measured_text": measured, "error": line, "outcome": str(exc)})
    if not args.json:
        print(f"actions: {args.action}  →  nothing written — {shown}")
        print(f"  measured:  {measured}")
        print(f"  fidelity:  {present.fidelity_text(fidelity)}")
        print(f"  {sizes_line(result.sizes)}")
    return 1


def _store_sweep(store, session_id, model_path, params, rows) -> None:
    store.add_measurements([{
        "session_id": session_id, "kind": "batch-sweep", "model_key": _model_key(model_path, params),
        "batch_size": r.batch_size, "energy_per_sample_j": r.energy_per_sample_j,
        "throughput_per_s": r.throughput_samples_per_s, "params": params,
        "payload": {"status": r.status, "reason": r.reason, "method": r.energy_method,
                    "peak_mem_bytes": r.peak_mem_bytes, "interval": r.energy_per_sample_interval_j}}
        for r in rows])


def _run_sweep(args, store, session, sizes, progress, doc, say) -> int:
    from wattlens.advisor.modelio import load_model, tensor_footprint
    from wattlens.advisor.optimize import sweep_batch_sizes
    from wattlens.advisor.regression import SweepPoint, fit_energy_vs_batch

    progress("load", 0.0)
    loaded = load_model(args.model, trust_pickle=getattr(args, "trust_pickle", False))
    params, _ = tensor_footprint(loaded.model)
    rows = sweep_batch_sizes(loaded.model, sizes, progress=progress)
    _store_sweep(store, session.session_id, args.model, params, rows)
    advice = fit_energy_vs_batch([SweepPoint(r.batch_size, r.energy_per_sample_j, r.throughput_samples_per_s,
                                             r.status) for r in rows])
    doc.update({"rows": [r.to_dict() for r in rows], "advice": advice.to_dict()})
    if not args.json:
        print(f"{'batch':>6} {'J/sample':>12} {'samples/s':>10}  status")
        for r in rows:
            e = f"{r.energy_per_sample_j:.4g}" if r.energy_per_sample_j is not None else "n/a"
            t = f"{r.throughput_samples_per_s:.1f}" if r.throughput_samples_per_s is not None else "n/a"
            print(f"{r.batch_size:>6} {e:>12} {t:>10}  {r.status}{' — ' + r.reason if r.reason else ''}")
        method = next((r.energy_method for r in rows if r.energy_method), "n/a")
        print(f"  energy method: {method}")
        if advice.ok:
            print(f"  recommended batch size: {advice.best_batch_size} "
                  f"(fit {advice.fit.model}, leave-one-out error ±{(advice.fit.loo_mape or 0) * 100:.1f} %)")
        else:
            print(f"  no recommendation yet: {advice.reason}")
    doc["outcome"] = (f"recommended batch size {advice.best_batch_size}" if advice.ok else advice.reason)
    return 0
