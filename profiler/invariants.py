"""What a tick may not contain: physically impossible values. Pure checks, one place.

The sampler runs them on every tick; a value that fails is not stored (it would be a number no
machine can produce) — it is logged and recorded as an ``invariant`` event instead, so the fault
is visible and can be found. Each check returns None when the value is possible, else a one-line
message saying what was impossible.
"""

from __future__ import annotations

# Floating-point slack for sums of products (share × energy): far below any measured resolution.
_REL_EPS = 1e-9
# A CPU rate is CPU seconds over a span read from a nanosecond clock: relative rounding of order
# 1e-8 at 0.1 s spans. 1e-6 of the limit (0.0002 % on 2 CPUs) is far below anything displayed.
_RATE_REL_EPS = 1e-6


def cpu_pct_limit(n_logical_cpus: int) -> float:
    """The highest CPU percentage (of one core) a process tree can reach on this machine."""
    return 100.0 * max(int(n_logical_cpus), 1)


def check_cpu_pct(cpu_pct: float, n_logical_cpus: int) -> str | None:
    limit = cpu_pct_limit(n_logical_cpus)
    if cpu_pct < 0.0:
        return f"target CPU {cpu_pct:.1f} % is negative"
    if cpu_pct > limit * (1.0 + _RATE_REL_EPS):
        return f"target CPU {cpu_pct:.1f} % exceeds {limit:.0f} % ({n_logical_cpus} logical CPUs)"
    return None


def check_target_within(source_id: str, target_j: float, machine_j: float) -> str | None:
    """The target's energy is at most the source's over the same time. The sampler checks the
    totals since the session's first tick: attribution may carry energy from one tick to the next
    (a GPU's per-process samples arrive at the driver's own cadence), never create it."""
    if target_j < 0.0:
        return f"target energy {target_j:.6g} J from {source_id} is negative"
    if target_j > machine_j + _REL_EPS * max(abs(machine_j), 1.0):
        return (f"target energy {target_j:.6g} J from {source_id} exceeds the source's "
                f"{machine_j:.6g} J over the same time")
    return None


def check_power_within(key: str, target_w: float, machine_w: float) -> str | None:
    """At one timestamp, the target's power is at most the machine power it was attributed from
    (the sum over those sources' stored readings at that timestamp)."""
    if target_w < 0.0:
        return f"{key} {target_w:.6g} W is negative"
    if target_w > machine_w + _REL_EPS * max(abs(machine_w), 1.0):
        return f"{key} {target_w:.6g} W exceeds the {machine_w:.6g} W it was attributed from"
    return None


def check_monotonic(key: str, previous: float | None, value: float) -> str | None:
    """A cumulative energy counter never goes down."""
    if previous is not None and value < previous - _REL_EPS * max(abs(previous), 1.0):
        return f"{key} went down from {previous:.6g} to {value:.6g}"
    return None
