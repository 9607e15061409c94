"""Plain records that flow from the measuring side (sampler, stacks, agent) to the store.

Units are in the names. ``None`` means "not available"; the reason travels beside it.
Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on the host) plus one
wall-clock anchor per session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["gpu", "cpu", "dram"]
Method = Literal["counter", "polled", "estimated"]


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One time series of a session, e.g. ``nvml:0/power_w``.

    ``method`` says how the value is obtained: counter | polled | estimated | attributed-* | derived.
    """

    key: str
    unit: str
    method: str
    source_id: str | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class SamplePoint:
    key: str  # SeriesSpec.key
    t_ns: int
    value: float


@dataclass(frozen=True, slots=True)
class LayerCost:
    """Cost of one node of the model over one time window.

    granularity: "class" (module-class path from stack sampling), "instance" (module path from the
    agent) or "bucket" (time outside any forward: data loading, optimizer, idle, gpu-wait ...).
    method: "stack-sampling" (CPU-side time by module class) or "agent-timing".

    ``time_s``/``share``/``energy_j`` are inclusive (the node and everything under it);
    ``self_time_s``/``self_energy_j`` exclude the children, so summing ``self_energy_j`` over all
    rows of a window (buckets included) gives the window's energy: that is the conservation law.
    ``share`` is inclusive time / window duration.
    """

    window_start_ns: int
    window_end_ns: int
    path: str
    granularity: Literal["class", "instance", "bucket"]
    method: str
    time_s: float
    share: float
    energy_j: float | None = None
    self_time_s: float | None = None
    self_energy_j: float | None = None
    n_samples: int | None = None
    phase: str = "forward"  # forward | backward | ""
    flops: int | None = None
    params: int | None = None
    rank: int | None = None  # the torch.distributed rank of the process it came from (None: not a job)
    # a part of a row split by pooled native reads (``backward/<op or class path>``,
    # ``optimizer/<part>/<op>``): the standard error of the time it got from that split, in
    # seconds (the split row's time × the standard error of the part's fraction)
    split_se_s: float | None = None


@dataclass(frozen=True, slots=True)
class StepRecord:
    step: int
    t_start_ns: int
    t_end_ns: int
    samples: int | None = None
    tokens: int | None = None
    energy_j: float | None = None
    # the torch.distributed rank that ran the step (None outside a multi-process job)
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Something a user should see in the session's timeline (a warning, an applied action...)."""

    t_ns: int
    kind: str
    message: str
    data: dict = field(default_factory=dict)
