"""Account for the stack reads that failed, without the bias towards long calls.

Why: py-spy's ``--nonblocking`` reads the target's stack while it runs. A read fails (or is torn,
see :mod:`.tree`) when the stack changes during the read, so reads fail more often inside short,
fast-changing Python calls than inside one long C call (a big matmul). Dropping the failed reads
over-represents the long calls: that is the bias. A failed read is still a look at *something*;
the question is what.

How: a second py-spy runs **blocking** at a low rate (:data:`CALIBRATION_RATE_HZ`): it pauses the
target for each read, so its stacks are exact and never fail, and its samples are an unbiased
sample of where the target is. It is too slow to give the shares by itself (5 reads a second), but
it is enough to say where the *lost* reads were. The model: the non-blocking reads of one session
saw ``n[c]`` samples in class ``c`` and lost ``E`` reads; the lost reads fell ``e[c] >= 0`` in
each class with ``sum(e) = E``, so the true share of ``c`` is ``(n[c] + e[c]) / (N + E)``. The
calibration counts ``m[c]`` are multinomial with those shares. The maximum-likelihood ``e`` under
the constraints is a water-filling: ``n[c] + e[c] = max(n[c], lam * m[c])`` with ``lam`` set so
the totals add up to ``N + E`` (:func:`allocate_lost`). It is consistent (no bias as the session
grows), it never takes a sample away from a class (a lost read only adds), and where the
calibration agrees with the non-blocking shares it spreads the loss in proportion. Without any
calibration sample yet it falls back to proportional spreading (which keeps the old bias) and
says so in :attr:`LossAccount.handling`.

Pure functions and one small accumulator; nothing here reads processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

CALIBRATION_RATE_HZ = 5
HANDLING_CALIBRATED = "allocated by blocking calibration reads"
HANDLING_PROPORTIONAL = "spread in proportion (no calibration read yet: leans to long calls)"
HANDLING_NONE = "no read was lost"


def allocate_lost(observed: Mapping[K, float], calibration: Mapping[K, float], lost: float) -> dict[K, float]:
    """Where the ``lost`` reads most likely fell: ``{key: e[key]}`` with ``e >= 0`` summing to
    ``lost`` (the maximum-likelihood water-filling described in the module docstring).

    Keys seen only by the calibration (a class so short that every non-blocking read of it failed)
    can receive lost reads; keys with no calibration sample receive none, unless there is no
    calibration at all, when the loss is spread in proportion to ``observed``.
    """
    if lost <= 0:
        return {}
    keys = set(observed) | set(calibration)
    cal = {k: float(calibration.get(k, 0.0)) for k in keys}
    obs = {k: float(observed.get(k, 0.0)) for k in keys}
    if sum(cal.values()) <= 0:
        total_obs = sum(obs.values())
        if total_obs <= 0:
            return {}
        return {k: lost * v / total_obs for k, v in obs.items() if v > 0}
    target = sum(obs.values()) + lost
    # f(lam) = sum_k max(obs_k, lam * cal_k) rises with lam; find f(lam) = target between the
    # breakpoints lam_k = obs_k / cal_k (keys with cal_k = 0 stay at obs_k).
    fixed = sum(v for k, v in obs.items() if cal[k] <= 0)
    calibrated = sorted(((obs[k] / cal[k], k) for k in keys if cal[k] > 0), key=lambda bk: bk[0])
    # Past the breakpoint of a key, that key sits at lam * cal_k; before it, at obs_k.
    below = fixed + sum(obs[k] for _, k in calibrated)  # the part of f not proportional to lam
    slope = 0.0  # sum of cal_k over the keys past their breakpoint
    for bp, k in calibrated:
        if below + bp * slope >= target:
            break
        below -= obs[k]
        slope += cal[k]
    lam = (target - below) / slope if slope > 0 else 0.0
    out: dict[K, float] = {}
    for k in keys:
        e = max(obs[k], lam * cal[k]) - obs[k] if cal[k] > 0 else 0.0
        if e > 0:
            out[k] = e
    scale = sum(out.values())
    if scale > 0:  # rounding: make the allocation add up to ``lost`` exactly
        out = {k: v * lost / scale for k, v in out.items()}
    return out


class LossAccount:
    """The session's lost-read accounting, window by window.

    :meth:`correct` takes one window's non-blocking counts, its lost reads (failed + torn) and its
    calibration counts, adds them to the session totals, and returns the window's counts with the
    window's lost reads spread as the *session's* allocation says (the calibration is pooled over
    the session: 5 reads a second are too few per window). Counts are floats afterwards.
    """

    def __init__(self) -> None:
        self.observed: Counter = Counter()
        self.calibration: Counter = Counter()
        self.reads = 0  # non-blocking reads attempted (kept + lost)
        self.failed = 0  # reads py-spy could not complete
        self.torn = 0  # reads dropped as torn (a class path the module tree does not have)
        self.calibration_reads = 0

    @property
    def lost(self) -> int:
        return self.failed + self.torn

    @property
    def handling(self) -> str:
        if self.lost == 0:
            return HANDLING_NONE
        return HANDLING_CALIBRATED if self.calibration_reads else HANDLING_PROPORTIONAL

    def correct(
        self, observed: Mapping[K, int], *, failed: int, torn: int, calibration: Mapping[K, int]
    ) -> dict[K, float]:
        self.observed.update(observed)
        self.calibration.update(calibration)
        self.failed += failed
        self.torn += torn
        self.calibration_reads += sum(calibration.values())
        window_lost = failed + torn
        self.reads += sum(observed.values()) + window_lost
        out = {k: float(v) for k, v in observed.items() if v > 0}
        if window_lost <= 0:
            return out
        alloc = allocate_lost(self.observed, self.calibration, self.lost)
        total = sum(alloc.values())
        if total <= 0:
            return out
        for k, e in alloc.items():
            out[k] = out.get(k, 0.0) + window_lost * e / total
        return out

    def summary(self) -> dict:
        """Numbers for the session's event: what was lost and how it was handled."""
        return {
            "reads": self.reads,
            "failed": self.failed,
            "torn": self.torn,
            "lost_share": self.lost / self.reads if self.reads else None,
            "calibration_reads": self.calibration_reads,
            "calibration_rate_hz": CALIBRATION_RATE_HZ,
            "handling": self.handling,
        }

    def message(self) -> str:
        s = self.summary()
        if not self.reads:
            return "stack sampling read no stacks"
        return (
            f"stack reads: {self.lost} of {self.reads} lost ({s['lost_share']:.1%}: "
            f"{self.failed} failed, {self.torn} torn) — {self.handling} "
            f"({self.calibration_reads} blocking reads at {CALIBRATION_RATE_HZ} Hz)"
        )
