"""Backward by autograd op (profiler/stacks/native.py) on a recorded `py-spy record --native` window
of a Llama-style training loop (forward, backward, AdamW; torch 2.13 CPU, Python 3.11)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from wattlens.profiler.stacks.native import (
    ENGINE_OTHER,
    PYTHON_FUNCTION,
    autograd_node,
    backward_ops,
    op_shares,
    split_backward,
)
from wattlens.profiler.stacks.parse import BUCKET_BACKWARD, aggregate, window_counts

RAW = (Path(__file__).parent / "fixtures" / "pyspy" / "llama_train_native_py311.txt").read_text()


def test_every_backward_sample_gets_an_autograd_op():
    ops = backward_ops(RAW)
    buckets = {att.key: n for att, n in window_counts(RAW).items()}
    assert sum(ops.values()) == buckets[BUCKET_BACKWARD]  # nothing in the backward is left out
    assert ops["MmBackward0"] > 0 and ops["SiluBackward0"] > 0
    assert ops["ScaledDotProductFlashAttentionForCpuBackward0"] > 0
    named = sum(n for op, n in ops.items() if op != ENGINE_OTHER)
    assert named >= 0.8 * sum(ops.values())


def test_innermost_node_wins_and_python_functions_are_named():
    parts = [
        "torch::autograd::generated::MulBackward0::apply (libtorch_cpu.so)",
        "torch::autograd::generated::MmBackward0::apply (libtorch_cpu.so)",
        "at::mm (libtorch_cpu.so)",
    ]
    assert autograd_node(parts) == "MmBackward0"
    assert autograd_node(["torch::autograd::PyNode::apply (libtorch_python.so)"]) == PYTHON_FUNCTION
    assert autograd_node(["<module> (x.py:1)"]) is None


def test_split_keeps_the_windows_energy_and_the_bucket_as_parent():
    rows = aggregate(
        window_counts(RAW), window_start_ns=0, window_end_ns=10**9, rate_hz=20.0,
        window_energy_j=12.0,
    )
    ops = backward_ops(RAW)
    split = split_backward(rows, ops)
    assert sum(r.self_energy_j for r in split) == pytest.approx(12.0)
    parent = next(r for r in split if r.path == BUCKET_BACKWARD)
    before = next(r for r in rows if r.path == BUCKET_BACKWARD)
    assert parent.energy_j == pytest.approx(before.energy_j) and parent.self_energy_j == 0.0
    mm = next(r for r in split if r.path == "backward/MmBackward0")
    assert mm.phase == "backward" and mm.n_samples == ops["MmBackward0"]
    assert mm.energy_j == pytest.approx(before.energy_j * ops["MmBackward0"] / sum(ops.values()))
    assert split_backward(rows, Counter()) == rows  # no native reads yet: unchanged


def test_op_shares_carry_a_binomial_standard_error():
    shares = op_shares(Counter({"MmBackward0": 30, "SiluBackward0": 10}))
    p, se = shares["MmBackward0"]
    assert p == pytest.approx(0.75) and se == pytest.approx(math.sqrt(0.75 * 0.25 / 40))
    assert op_shares(Counter()) == {}


def test_blas_leaf_in_the_backward_is_a_matmul_grad_and_forward_nodes_do_not_count():
    py = "<module> (/x/train.py:12);Tensor.backward (/s/torch/_tensor.py:623)"
    blas = f"thread (1): MainThread;{py};mkl_blas_def_sgemm_kernel_0_zen (/s/libmkl.so) 3"
    # a forward stack that names a node it is creating: not backward work
    fwd = (
        "thread (1): MainThread;<module> (/x/train.py:11);Linear.forward (/s/torch/nn/modules/"
        "linear.py:134);torch::autograd::generated::AddmmBackward0::AddmmBackward0 (/s/lib.so) 2"
    )
    # the engine's own thread on a GPU: no Python frames, a node on the native stack
    engine = "thread (2);torch::autograd::generated::MmBackward0::apply (/s/lib.so) 4"
    ops = backward_ops("\n".join([blas, fwd, engine]))
    assert ops == Counter({"matmul grad (BLAS kernel; node not unwound)": 3, "MmBackward0": 4})
