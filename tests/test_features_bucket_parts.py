"""A bucket split into named parts (optimizer/<part>, backward/<op>) still counts as its bucket
in the advisor's outside-the-model shares (the parts hold the bucket's self time)."""

from __future__ import annotations

from collections import Counter

import pytest

from wattlens.advisor.features import _layer_features
from wattlens.profiler.stacks.parse import BUCKET_OPTIMIZER, Attribution, aggregate


def test_optimizer_parts_count_as_the_optimizer_bucket():
    counts = Counter({Attribution(("Net",)): 6,
                      Attribution((), BUCKET_OPTIMIZER, "_fused_adamw"): 3,
                      Attribution((), BUCKET_OPTIMIZER, "zero_grad"): 1})
    rows = aggregate(counts, window_start_ns=0, window_end_ns=10**9, rate_hz=10,
                     window_energy_j=10.0)
    f = _layer_features(rows, None, {})
    assert f["outside_shares"][BUCKET_OPTIMIZER] == pytest.approx(0.4)
    assert f["outside_model_share"] == pytest.approx(0.4)
    assert not any(k.startswith(BUCKET_OPTIMIZER + "/") for k in f["outside_shares"])


def test_backward_rows_by_module_class_count_as_the_backward_bucket():
    """The backward's rows charged to module classes carry their own method (an estimate); the
    advisor still reads the session as stack-sampled and counts them as the backward bucket."""
    from wattlens.profiler.stacks import backward_map
    from wattlens.profiler.stacks.parse import BUCKET_BACKWARD

    counts = Counter({Attribution(("Net", "Linear")): 6, Attribution((), BUCKET_BACKWARD): 4})
    rows = aggregate(counts, window_start_ns=0, window_end_ns=10**9, rate_hz=10,
                     window_energy_j=10.0)
    split = backward_map.split_backward(rows, Counter({"MmBackward0": 3, "SiluBackward0": 1}),
                                        Counter({("Net/Linear", "mm"): 2}))
    assert backward_map.METHOD in {r.method for r in split}
    f = _layer_features(split, None, {})
    assert f["layer_method"] == "stack-sampling"
    assert f["outside_shares"][BUCKET_BACKWARD] == pytest.approx(0.4)
