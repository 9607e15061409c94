"""Backward by module class (profiler/stacks/backward_map.py): autograd ops mapped to the module
classes that issued their forward ops, on synthetic native stacks and on the recorded
``py-spy record --native`` window of a Llama-style training loop."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from wattlens.profiler.stacks import backward_map as bm
from wattlens.profiler.stacks.native import (
    BLAS_UNWOUND,
    ENGINE_OTHER,
    GRAD_ACCUMULATION,
    backward_ops,
)
from wattlens.profiler.stacks.parse import BUCKET_BACKWARD, aggregate, window_counts

RAW = (Path(__file__).parent / "fixtures" / "pyspy" / "llama_train_native_py311.txt").read_text()

MODEL = ("<module> (/x/train.py:11);Module._call_impl (/s/torch/nn/modules/module.py:1789);"
         "LlamaForCausalLM.forward (/s/modeling_llama.py:459);"
         "Module._call_impl (/s/torch/nn/modules/module.py:1789);"
         "LlamaDecoderLayer.forward (/s/modeling_llama.py:313)")
ATTN = f"{MODEL};Module._call_impl (/s/torch/nn/modules/module.py:1789);LlamaAttention.forward (/s/modeling_llama.py:250)"
MLP = f"{MODEL};Module._call_impl (/s/torch/nn/modules/module.py:1789);LlamaMLP.forward (/s/modeling_llama.py:164)"
LINEAR = "Module._call_impl (/s/torch/nn/modules/module.py:1789);Linear.forward (/s/torch/nn/modules/linear.py:134)"
ATTN_LINEAR = "LlamaForCausalLM/LlamaDecoderLayer/LlamaAttention/Linear"
MLP_LINEAR = "LlamaForCausalLM/LlamaDecoderLayer/LlamaMLP/Linear"
MLP_PATH = "LlamaForCausalLM/LlamaDecoderLayer/LlamaMLP"
BACKWARD = ("<module> (/x/train.py:12);Tensor.backward (/s/torch/_tensor.py:623);"
            "torch::autograd::Engine::evaluate_function (libtorch_cpu.so)")


def line(stack: str, n: int) -> str:
    return f"thread (1): MainThread;{stack} {n}"


def vt(op: str) -> str:
    """A native frame of op ``op``'s autograd kernel, as py-spy prints it."""
    return f"torch::autograd::VariableType::(anonymous namespace)::{op} (libtorch_cpu.so)"


SYNTHETIC = "\n".join([
    # forward: the attention's Linears read 3 times in a BLAS kernel (unwinder stopped there),
    # the MLP's once with the op unwound; the MLP's own multiply; the attention's bmm
    line(f"{ATTN};{LINEAR};mkl_blas_def_sgemm_kernel_0_zen (libtorch_cpu.so)", 3),
    line(f"{MLP};{LINEAR};at::_ops::linear::call (libtorch_cpu.so);{vt('mm')};"
         "at::native::mm (libtorch_cpu.so)", 1),
    line(f"{MLP};THPVariable_mul (libtorch_python.so);{vt('mul_Tensor')}", 2),
    line(f"{ATTN};at::_ops::matmul::call (libtorch_cpu.so);{vt('bmm')}", 2),
    # a loss in the training script: outside any module
    line("<module> (/x/train.py:11);at::_ops::nll_loss_forward::call (libtorch_cpu.so)", 1),
    # backward
    line(f"{BACKWARD};torch::autograd::generated::MmBackward0::apply (libtorch_cpu.so)", 8),
    line(f"{BACKWARD};torch::autograd::generated::MulBackward0::apply (libtorch_cpu.so)", 4),
    line(f"{BACKWARD};torch::autograd::generated::NllLossBackward0::apply (libtorch_cpu.so)", 2),
    line(f"{BACKWARD};torch::autograd::generated::RsqrtBackward0::apply (libtorch_cpu.so)", 3),
    line(f"{BACKWARD};torch::autograd::Engine::thread_main (libtorch_cpu.so)", 1),
])


def test_forward_op_names_the_op_that_records_the_node():
    assert bm.forward_op(["at::_ops::linear::call (x)", vt("mm"), "at::_ops::empty::call (x)"]) == "mm"
    assert bm.forward_op(["at::_ops::_softmax::call (x)"]) == "softmax"  # no autograd frame
    assert bm.forward_op(["THPVariable_silu (libtorch_python.so)"]) == "silu"
    assert bm.forward_op(["Linear.forward (/s/linear.py:134)",
                          "mkl_blas_def_sgemm_kernel_0_zen (libtorch_cpu.so)"]) == bm.MATMUL
    assert bm.forward_op(["at::_ops::matmul::call (x)"]) == bm.MATMUL  # composite: kind unknown
    assert bm.forward_op(["Linear.forward (/s/linear.py:134)"]) is None


def test_node_op_and_matching_overloads_and_the_matmul_family():
    assert bm.node_op("MmBackward0") == "mm"
    assert bm.node_op("ScaledDotProductFlashAttentionForCpuBackward0") == (
        "scaled_dot_product_flash_attention_for_cpu")
    assert bm.node_op(BLAS_UNWOUND) == bm.MATMUL
    for op in (ENGINE_OTHER, GRAD_ACCUMULATION, "autograd.Function (Python)"):
        assert bm.node_op(op) is None
    assert bm.matches("mean", "mean_dim") and bm.matches("nll_loss", "nll_loss_forward")
    assert bm.matches("mul", "mul_Tensor") and not bm.matches("mul", "multinomial")
    assert not bm.matches("add", "addmm")
    assert bm.matches("mm", bm.MATMUL) and bm.matches(bm.MATMUL, "bmm")
    assert not bm.matches("mm", "bmm")  # a known other product is no evidence for mm


def test_forward_ops_pairs_class_paths_with_ops_and_skips_the_backward():
    fwd = bm.forward_ops(SYNTHETIC)
    assert fwd == Counter({
        (ATTN_LINEAR, bm.MATMUL): 3, (MLP_LINEAR, "mm"): 1, (MLP_PATH, "mul_Tensor"): 2,
        ("LlamaForCausalLM/LlamaDecoderLayer/LlamaAttention", "bmm"): 2,
        (bm.OUTSIDE_MODULES, "nll_loss_forward"): 1,
    })


def test_an_op_shared_by_two_classes_is_split_in_their_forward_proportions():
    parts = {p.name: p for p in bm.backward_by_class(backward_ops(SYNTHETIC), bm.forward_ops(SYNTHETIC))}
    # MmBackward0 (8 reads): evidence 3 (attention Linears, product of unknown kind) and 1 (mm),
    # the attention's bmm read is not evidence for mm
    assert parts[ATTN_LINEAR].reads == pytest.approx(6.0) and parts[ATTN_LINEAR].kind == "class"
    assert parts[MLP_LINEAR].reads == pytest.approx(2.0)
    assert parts[MLP_PATH].reads == pytest.approx(4.0) and parts[MLP_PATH].ops == ("MulBackward0",)
    # no forward evidence, or evidence outside modules: kept as op rows
    assert parts["RsqrtBackward0"].kind == "op" and parts["RsqrtBackward0"].reads == 3
    assert parts["NllLossBackward0"].kind == "op" and parts["NllLossBackward0"].reads == 2
    assert parts[ENGINE_OTHER].kind == "op"
    assert sum(p.reads for p in parts.values()) == pytest.approx(18)  # every read, once
    assert sum(p.share for p in parts.values()) == pytest.approx(1.0)
    assert all(p.se > 0 for p in parts.values() if p.kind == "class")


def test_standard_error_of_a_mapped_share():
    """One op (n of N reads) whose forward evidence is k of E reads in class A:
    Var = (p q^2 - (p q)^2)/N + p^2 q'(1-q')/E, q = k/E, q' = (k+1/2)/(E+1)."""
    ops = Counter({"SiluBackward0": 6, ENGINE_OTHER: 4})
    fwd = Counter({("A", "silu"): 3, ("B", "silu"): 1})
    a = next(p for p in bm.backward_by_class(ops, fwd) if p.name == "A")
    p, q, q2 = 0.6, 0.75, 3.5 / 5
    assert a.share == pytest.approx(p * q)
    assert a.se == pytest.approx(math.sqrt((p * q * q - (p * q) ** 2) / 10 + p * p * q2 * (1 - q2) / 4))
    assert bm.backward_by_class(Counter(), fwd) == []


def test_split_rows_keep_the_energy_label_the_method_and_never_exceed_the_bucket():
    rows = aggregate(window_counts(SYNTHETIC), window_start_ns=0, window_end_ns=10**9,
                     rate_hz=10.0, window_energy_j=30.0)
    bucket = next(r for r in rows if r.path == BUCKET_BACKWARD)
    out = bm.split_backward(rows, backward_ops(SYNTHETIC), bm.forward_ops(SYNTHETIC))
    assert sum(r.self_energy_j for r in out) == pytest.approx(30.0)
    kids = [r for r in out if r.path.startswith(BUCKET_BACKWARD + "/")]
    assert sum(r.energy_j for r in kids) == pytest.approx(bucket.energy_j)
    assert all(r.energy_j <= bucket.energy_j and r.time_s <= bucket.time_s for r in kids)
    by_path = {r.path: r for r in kids}
    mlp = by_path[f"{BUCKET_BACKWARD}/{MLP_LINEAR}"]
    assert mlp.method == bm.METHOD and mlp.phase == "backward" and mlp.granularity == "bucket"
    assert mlp.energy_j == pytest.approx(bucket.energy_j * 2 / 18) and mlp.n_samples == 2
    assert by_path[f"{BUCKET_BACKWARD}/RsqrtBackward0"].method == bucket.method  # a plain op row
    assert len(bm.METHOD) <= 30  # the store's method column
    assert bm.split_backward(rows, Counter(), Counter()) == rows  # no native reads: unchanged


def test_without_forward_evidence_the_split_is_the_op_split():
    rows = aggregate(window_counts(RAW), window_start_ns=0, window_end_ns=10**9, rate_hz=20.0,
                     window_energy_j=12.0)
    ops = backward_ops(RAW)
    only_ops = {r.path for r in bm.split_backward(rows, ops, Counter())}
    assert only_ops == {r.path for r in rows} | {f"{BUCKET_BACKWARD}/{op}" for op in ops}


def test_recorded_training_window_maps_the_mlp_gradients_to_its_classes():
    ops, fwd = backward_ops(RAW), bm.forward_ops(RAW)
    parts = {p.name: p for p in bm.backward_by_class(ops, fwd)}
    mlp = "LlamaForCausalLM/LlamaModel/LlamaDecoderLayer/LlamaMLP"
    assert parts[f"{mlp}/Linear"].ops == ("MmBackward0",)
    assert parts[f"{mlp}/SiLUActivation"].reads == ops["SiluBackward0"]
    message = bm.class_message(ops, fwd)
    assert message is not None and bm.METHOD in message and "LlamaMLP/Linear" in message


def test_ops_resting_on_the_same_forward_reads_are_not_counted_as_independent():
    """MmBackward0 and the unwound BLAS kernel both rest on the same two forward products: their
    fractions move together, so the standard error is the correlated one (q' = 2.5/5), not
    sqrt(1/2) of it as for two independent groups."""
    ops = Counter({"MmBackward0": 5, BLAS_UNWOUND: 5})
    fwd = Counter({("A", bm.MATMUL): 2, ("B", bm.MATMUL): 2})
    a = next(p for p in bm.backward_by_class(ops, fwd) if p.name == "A")
    assert a.share == pytest.approx(0.5) and a.ops == ("MmBackward0", BLAS_UNWOUND)
    assert a.se == pytest.approx(math.sqrt(0.5 * 0.5 / 4))


def test_sampled_forward_time_weighs_the_classes_and_native_reads_give_their_op_mix():
    """A and B each had one native forward read of a product, but the 50 Hz sampler saw B's
    forward three times as long: B gets three quarters of the products' backward. C spent half
    its native reads outside any op (Python), so only half its time counts as evidence."""
    ops = Counter({"MmBackward0": 8})
    fwd = Counter({("A", bm.MATMUL): 1, ("B", bm.MATMUL): 1, ("C", "mm"): 1, ("C", bm.NO_OP): 1})
    parts = {p.name: p for p in bm.backward_by_class(ops, fwd, Counter({"A": 100, "B": 300, "C": 200}))}
    assert parts["A"].reads == pytest.approx(8 * 100 / 500)
    assert parts["B"].reads == pytest.approx(8 * 300 / 500)
    assert parts["C"].reads == pytest.approx(8 * 100 / 500)
    unweighted = {p.name: p for p in bm.backward_by_class(ops, fwd)}
    assert unweighted["A"].reads == pytest.approx(8 / 3)  # reads alone: one each


def test_time_weighted_standard_error_is_the_op_mix_uncertainty():
    """Two classes seen in the op: Var(q_A) = sum_c (T_c/E)^2 (d_Ac - q_A)^2 Var(m_c), the op
    mixes m_c binomial with (k+1/2)/(n+1); the times are taken as exact."""
    ops = Counter({"SiluBackward0": 10})
    fwd = Counter({("A", "silu"): 2, ("A", bm.NO_OP): 2, ("B", "silu"): 1, ("B", bm.MATMUL): 3})
    time = Counter({"A": 40, "B": 40})
    a = next(p for p in bm.backward_by_class(ops, fwd, time) if p.name == "A")
    e_a, e_b = 40 * 2 / 4, 40 * 1 / 4
    q = e_a / (e_a + e_b)
    var_m = lambda k, n: ((k + 0.5) / (n + 1)) * (1 - (k + 0.5) / (n + 1)) / n  # noqa: E731
    var_q = ((40 / 30) ** 2 * (1 - q) ** 2 * var_m(2, 4) + (40 / 30) ** 2 * q**2 * var_m(1, 4))
    assert a.share == pytest.approx(q)
    assert a.se == pytest.approx(math.sqrt(var_q))  # one op: its reads' own spread is zero


def test_forward_time_keys_match_the_native_owners():
    from wattlens.profiler.stacks.parse import BUCKET_OTHER, Attribution

    counts = Counter({Attribution(("M", "Linear")): 5.5, Attribution((), BUCKET_OTHER): 2,
                      Attribution((), BUCKET_BACKWARD): 9})
    assert bm.forward_time(counts) == Counter({"M/Linear": 5.5, bm.OUTSIDE_MODULES: 2})


def test_a_path_with_time_but_no_native_read_gets_its_class_op_mix():
    """The LM head (M/Linear) was sampled at 50 Hz but no 1 Hz native read landed in it; it runs
    Linear's code, so the op mix the other Linear paths showed holds for it too."""
    ops = Counter({BLAS_UNWOUND: 10})
    fwd = Counter({("M/Attn/Linear", bm.MATMUL): 3, ("M/Attn/Linear", bm.NO_OP): 1,
                   ("M/Attn", "bmm"): 2})
    time = Counter({"M/Attn/Linear": 200, "M/Linear": 100, "M/Attn": 100})
    parts = {p.name: p for p in bm.backward_by_class(ops, fwd, time)}
    # Linear's mix: 3 of 4 reads in a product; Attn's: all in bmm
    e_head, e_attn_lin, e_attn = 100 * 0.75, 200 * 0.75, 100 * 1.0
    assert parts["M/Linear"].reads == pytest.approx(10 * e_head / (e_head + e_attn_lin + e_attn))
    assert parts["M/Attn"].reads == pytest.approx(10 * e_attn / (e_head + e_attn_lin + e_attn))
    assert "M/Linear" not in {p.name for p in bm.backward_by_class(ops, fwd)}  # reads alone
