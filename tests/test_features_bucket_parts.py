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
