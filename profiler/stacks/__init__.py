"""Per-layer cost of a process we attach to, from its Python stacks (py-spy), without its help.

What the figures are: **CPU-side time share by module class** — the class whose ``forward`` is on
the sampled Python stack — and the window's energy split by those shares. On a GPU target this is
where the host thread spends its time (launching work, or waiting in the ``gpu-wait`` bucket), not
GPU kernel time; the in-process agent is the tool for per-instance device timing.

- :mod:`.parse`: pure functions, py-spy raw text -> :class:`~wattlens.profiler.records.LayerCost`.
- :mod:`.sampler`: :class:`StackSampler` (rolling py-spy windows in a thread) and
  :func:`check_pyspy` (a one-shot probe for ``wattlens doctor``).
- :mod:`.lost`: failed and torn reads added back where exact (blocking) reads say they fell.
- :mod:`.tree`: the module-class tree learned in attach mode; torn paths dropped and counted.
- :mod:`.native`: the backward split by autograd op from ``py-spy --native`` reads.
- :mod:`.follow`: :class:`~.follow.RankFollower`, one StackSampler per rank process of an
  attached tree (:mod:`.workers` finds them; :mod:`.cpu_split` gives each its energy share).
- :mod:`.backward_map`: those ops charged to module classes by the ops the forward reads saw.

No torch import here: the stack side reads another process and never needs it.
"""

from wattlens.profiler.stacks.sampler import (
    DEFAULT_RATE_HZ,
    DEFAULT_WINDOW_S,
    StackSampler,
    check_pyspy,
    find_pyspy,
)

__all__ = ["DEFAULT_RATE_HZ", "DEFAULT_WINDOW_S", "StackSampler", "check_pyspy", "find_pyspy"]
