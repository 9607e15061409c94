"""py-spy raw output -> module-class paths, buckets and LayerCost rows (no processes here)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_DATA,
    BUCKET_GPU_WAIT,
    BUCKET_IDLE,
    BUCKET_OPTIMIZER,
    BUCKET_OTHER,
    METHOD,
    OPTIMIZER_STEP_OTHER,
    OPTIMIZER_ZERO_GRAD,
    Attribution,
    Frame,
    SourceIndex,
    aggregate,
    attribute,
    classify,
    forward_path,
    optimizer_part,
    parse_frame,
    parse_raw,
    whole_samples,
    window_costs,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pyspy"
MAIN_TID = 4242  # the target pid the fixtures' main thread carries


def fixture_resolver(filename: str) -> str | None:
    """Maps the fixtures' placeholders to this checkout; {site} and {stdlib} stay unreadable."""
    if filename.startswith("{fixtures}/"):
        path = FIXTURES / filename.removeprefix("{fixtures}/")
        return str(path) if path.is_file() else None
    return None


@pytest.fixture
def index() -> SourceIndex:
    return SourceIndex(fixture_resolver)


def rows_by_path(rows):
    return {r.path: r for r in rows}


# --------------------------------------------------------------------------- parsing


def test_parse_frame_with_qualname_and_full_path():
    f = parse_frame("GPT2Block.forward (/opt/x/transformers/models/gpt2/modeling_gpt2.py:277)")
    assert f == Frame("GPT2Block.forward", "/opt/x/transformers/models/gpt2/modeling_gpt2.py", 277)
    assert f.function == "forward"


def test_parse_frame_with_frozen_filename_containing_spaces():
    f = parse_frame("Sequence.__iter__ (<frozen _collections_abc>:996)")
    assert f == Frame("Sequence.__iter__", "<frozen _collections_abc>", 996)


def test_parse_raw_reads_threads_counts_and_empty_stacks():
    text = (
        "thread (4242): MainThread;<module> (/x/a.py:3);f (/x/a.py:9) 12\n"
        "thread (0x7F00AB): worker;g (/x/b.py:1) 3\n"
        "thread (4242): MainThread 1\n"
        "<module> (/x/a.py:3) 2\n"
        "\n"
        "garbage without a count\n"
        "truncated (/x/a.py:3);f (/x/a.\n"
    )
    samples = parse_raw(text)
    assert [s.count for s in samples] == [12, 3, 1, 2]
    assert samples[0].thread_id == 4242 and samples[0].thread_name == "MainThread"
    assert [f.name for f in samples[0].frames] == ["<module>", "f"]
    assert samples[1].thread_id == 0x7F00AB and samples[1].thread_name == "worker"
    assert samples[2].frames == () and samples[2].thread_id == 4242
    assert samples[3].thread_id is None  # recorded without --threads


# --------------------------------------------------------------------------- forward paths


def _frames(*names_files_lines):
    return [Frame(n, f, ln) for n, f, ln in names_files_lines]


GLUE = [
    ("Module._wrapped_call_impl", "/s/torch/nn/modules/module.py", 1778),
    ("Module._call_impl", "/s/torch/nn/modules/module.py", 1789),
]


def test_qualnames_give_the_class_path_and_skip_glue_and_wrappers(index):
    frames = _frames(
        ("<module>", "/x/run.py", 9),
        *GLUE,
        ("can_return_tuple.<locals>.wrapper", "/s/transformers/utils/generic.py", 1036),
        ("GPT2LMHeadModel.forward", "/s/modeling_gpt2.py", 683),
        *GLUE,
        ("GPT2Model.forward", "/s/modeling_gpt2.py", 608),
        *GLUE,
        (
            "GradientCheckpointingLayer.__init_subclass__.<locals>.forward_with_checkpointing",
            "/s/transformers/modeling_layers.py",
            124,
        ),
        ("GPT2Block.forward", "/s/modeling_gpt2.py", 277),
        *GLUE,
        ("GPT2Attention.forward", "/s/modeling_gpt2.py", 190),
        *GLUE,
        ("Conv1D.forward", "/s/transformers/pytorch_utils.py", 119),
    )
    assert forward_path(frames, index) == (
        "GPT2LMHeadModel",
        "GPT2Model",
        "GPT2Block",
        "GPT2Attention",
        "Conv1D",
    )


def test_same_class_nested_through_call_impl_stays_two_levels(index):
    frames = _frames(
        *GLUE,
        ("Sequential.forward", "/s/torch/nn/modules/container.py", 250),
        *GLUE,
        ("Sequential.forward", "/s/torch/nn/modules/container.py", 250),
        *GLUE,
        ("Linear.forward", "/s/torch/nn/modules/linear.py", 134),
    )
    assert forward_path(frames, index) == ("Sequential", "Sequential", "Linear")


@pytest.mark.parametrize("tracker_file", [
    "/venv/lib/python3.11/site-packages/wattlens/profiler/agent/tracker.py",  # installed
    "/home/me/checkout/profiler/agent/tracker.py",  # editable: the checkout's own layout
])
def test_the_run_mode_agents_wrapper_marks_a_new_module_call(index, tracker_file):
    # the agent's nn.Module.__call__ wrapper calls forward itself: no _call_impl in between
    agent = ("_CallWrapper.__init__.<locals>.__call__", tracker_file, 990)
    frames = _frames(
        agent,
        ("Sequential.forward", "/s/torch/nn/modules/container.py", 250),
        agent,
        ("Sequential.forward", "/s/torch/nn/modules/container.py", 250),
        agent,
        ("Linear.forward", "/s/torch/nn/modules/linear.py", 134),
    )
    assert forward_path(frames, index) == ("Sequential", "Sequential", "Linear")


def test_forward_calling_its_own_forward_impl_is_one_level(index):
    frames = _frames(
        *GLUE,
        ("ResNet.forward", "/s/torchvision/models/resnet.py", 285),
        ("ResNet._forward_impl", "/s/torchvision/models/resnet.py", 270),
        *GLUE,
        ("Conv2d.forward", "/s/torch/nn/modules/conv.py", 554),
        ("Conv2d._conv_forward", "/s/torch/nn/modules/conv.py", 549),
    )
    assert forward_path(frames, index) == ("ResNet", "Conv2d")


def test_bare_names_are_resolved_with_ast_from_the_source(index):
    # Python < 3.11 style: py-spy prints "forward", the class comes from the file.
    tiny = "{fixtures}/tiny_model.py"
    frames = _frames(
        *GLUE,
        ("forward", tiny, 42),
        *GLUE,
        ("forward", tiny, 29),
        ("_forward_impl", tiny, 32),
        *GLUE,
        ("forward", tiny, 18),
    )
    assert forward_path(frames, index) == ("TinyNet", "Block", "Mlp")


def test_nested_function_named_forward_is_not_a_module(index):
    assert forward_path(_frames(("forward", "{fixtures}/tiny_model.py", 49)), index) == ()
    assert forward_path(_frames(("make_forward.<locals>.forward", "/x/m.py", 49)), index) == ()


def test_unreadable_source_keeps_a_named_place_in_the_path(index):
    frames = _frames(*GLUE, ("forward", "{site}/torch/nn/modules/linear.py", 134))
    assert forward_path(frames, index) == ("forward@linear.py",)


def test_source_index_reads_each_file_once():
    calls = Counter()

    def resolver(name):
        calls[name] += 1
        return fixture_resolver(name)

    idx = SourceIndex(resolver)
    for line in (18, 29, 32, 42, 44):
        idx.class_at("{fixtures}/tiny_model.py", line)
        idx.line_text("{fixtures}/tiny_model.py", line)
    assert calls["{fixtures}/tiny_model.py"] == 1
    assert idx.class_at("{fixtures}/tiny_model.py", 32) == "Block"
    assert idx.line_text("{fixtures}/tiny_model.py", 44).startswith("return loss.item()")


# --------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(
    ("frames", "bucket"),
    [
        (
            [("<module>", "/x/t.py", 5), ("_BaseDataLoaderIter.__next__",
              "/s/torch/utils/data/dataloader.py", 733), ("Ds.__getitem__", "/x/t.py", 20)],
            BUCKET_DATA,
        ),
        ([("<module>", "/x/t.py", 5), ("Adam.step", "/s/torch/optim/adam.py", 230)], BUCKET_OPTIMIZER),
        (
            [("<module>", "/x/t.py", 5), ("Tensor.backward", "/s/torch/_tensor.py", 625),
             ("backward", "/s/torch/autograd/__init__.py", 354)],
            BUCKET_BACKWARD,
        ),
        ([("<module>", "/x/t.py", 5), ("Condition.wait", "/usr/lib/python3.11/threading.py", 324)],
         BUCKET_IDLE),
        ([("<module>", "/x/t.py", 5)], BUCKET_OTHER),
        ([], BUCKET_OTHER),
    ],
)  # fmt: skip
def test_samples_outside_any_forward_go_to_named_buckets(index, frames, bucket):
    att = classify(_frames(*frames), index)
    assert (att.path, att.bucket) == ((), bucket)


def test_idle_is_read_from_the_leaf_source_line(index):
    frames = _frames(("wait_for_work", "{fixtures}/tiny_model.py", 61))
    assert classify(frames, index).bucket == BUCKET_IDLE
    busy = _frames(("busy_python", "{fixtures}/tiny_model.py", 65))
    assert classify(busy, index).bucket == BUCKET_OTHER


def test_gpu_wait_only_on_gpu_targets(index):
    in_forward = _frames(*GLUE, ("forward", "{fixtures}/tiny_model.py", 44))  # loss.item()
    outside = _frames(("train_step", "{fixtures}/tiny_model.py", 56))  # torch.cuda.synchronize()
    torch_sync = _frames(
        ("train_step", "/x/t.py", 3), ("synchronize", "/s/torch/cuda/__init__.py", 1083)
    )
    assert classify(in_forward, index, gpu=True) == Attribution((), BUCKET_GPU_WAIT)
    assert classify(outside, index, gpu=True) == Attribution((), BUCKET_GPU_WAIT)
    assert classify(torch_sync, index, gpu=True) == Attribution((), BUCKET_GPU_WAIT)
    # On a CPU target .item() is ordinary work of the module that calls it.
    assert classify(in_forward, index, gpu=False) == Attribution(("TinyNet",))
    assert classify(outside, index, gpu=False).bucket == BUCKET_OTHER


# --------------------------------------------------------------------------- the hand-checked fixture


def test_hand_checked_fixture_cpu_target(index):
    """tiny_model_py310.txt: bare names (Python 3.10 style), lines checked against tiny_model.py."""
    samples = parse_raw((FIXTURES / "tiny_model_py310.txt").read_text())
    counts = attribute(samples, index=index, target_pid=MAIN_TID)
    assert sum(counts.values()) == 29  # 25 samples of the worker thread: blocked or non-model
    rows = rows_by_path(
        aggregate(counts, window_start_ns=0, window_end_ns=10**9, rate_hz=100, window_energy_j=29.0)
    )
    expected_inclusive = {
        "TinyNet": 12,
        "TinyNet/forward@container.py": 10,
        "TinyNet/forward@container.py/Block": 10,
        "TinyNet/forward@container.py/Block/Mlp": 7,
        "TinyNet/forward@container.py/Block/Mlp/forward@linear.py": 7,
        "Mlp": 2,  # the worker thread's forward counts
        BUCKET_OTHER: 4,
        BUCKET_IDLE: 4,
        BUCKET_DATA: 3,
        BUCKET_OPTIMIZER: 2,
        BUCKET_OPTIMIZER + "/step (other)": 2,  # Adam.step's own line: not the update kernel
        BUCKET_BACKWARD: 2,
    }
    assert {p: r.n_samples for p, r in rows.items()} == expected_inclusive
    assert rows["TinyNet"].self_time_s == pytest.approx(0.02)  # the two loss.item() samples
    assert rows["TinyNet/forward@container.py/Block"].self_time_s == pytest.approx(0.03)
    assert rows["TinyNet"].energy_j == pytest.approx(12.0)
    assert rows[BUCKET_BACKWARD].phase == "backward"
    assert rows["TinyNet"].granularity == "class" and rows[BUCKET_IDLE].granularity == "bucket"
    assert all(r.method == METHOD for r in rows.values())
    assert sum(r.self_energy_j for r in rows.values()) == pytest.approx(29.0)


def test_hand_checked_fixture_gpu_target(index):
    samples = parse_raw((FIXTURES / "tiny_model_py310.txt").read_text())
    counts = attribute(samples, index=index, gpu=True, target_pid=MAIN_TID)
    by_key = {a.key: n for a, n in counts.items()}
    assert by_key[BUCKET_GPU_WAIT] == 3  # loss.item() in TinyNet.forward + torch.cuda.synchronize()
    assert by_key[BUCKET_OTHER] == 3
    assert "TinyNet" not in by_key  # TinyNet has no self samples left


# --------------------------------------------------------------------------- recorded real output


def test_recorded_gpt2_output_maps_to_the_transformers_classes(index):
    """Real py-spy 0.4.3 output (capture.py), paths made portable. Needs no transformers source:
    on Python 3.11 py-spy prints qualified names, so the fixture survives transformers updates."""
    samples = parse_raw((FIXTURES / "gpt2_py311.txt").read_text())
    counts = attribute(samples, index=index, target_pid=MAIN_TID)
    paths = {a.key for a in counts if a.bucket is None}
    block = "GPT2LMHeadModel/GPT2Model/GPT2Block"
    assert {f"{block}/GPT2Attention", f"{block}/GPT2MLP"} <= paths
    assert any(p.startswith(f"{block}/GPT2MLP/") for p in paths)
    for p in paths:
        assert "_call_impl" not in p and "wrapper" not in p and "checkpointing" not in p
    forward_share = sum(n for a, n in counts.items() if a.path[:1] == ("GPT2LMHeadModel",))
    assert forward_share / sum(counts.values()) > 0.8  # the child does nothing but forwards


def test_recorded_plain_module_output(index):
    samples = parse_raw((FIXTURES / "tiny_py311.txt").read_text())
    counts = attribute(samples, index=index, target_pid=MAIN_TID)
    paths = {a.key for a in counts if a.bucket is None}
    assert "TinyNet/Sequential/Block/Mlp/Linear" in paths
    assert "TinyNet/Sequential/Block/LayerNorm" in paths


# --------------------------------------------------------------------------- aggregation


def test_unknown_window_energy_gives_none_not_zero():
    counts = Counter({Attribution(("A",)): 3, Attribution((), BUCKET_IDLE): 1})
    rows = aggregate(counts, window_start_ns=5, window_end_ns=9, rate_hz=50, window_energy_j=None)
    assert all(r.energy_j is None and r.self_energy_j is None for r in rows)
    assert rows_by_path(rows)["A"].time_s == pytest.approx(3 / 50)
    assert all(r.window_start_ns == 5 and r.window_end_ns == 9 for r in rows)


def test_empty_window_has_no_rows():
    assert (
        aggregate(Counter(), window_start_ns=0, window_end_ns=1, rate_hz=50, window_energy_j=1.0)
        == []
    )
    assert (
        window_costs("", window_start_ns=0, window_end_ns=1, rate_hz=50, window_energy_j=1.0) == []
    )


_paths = st.lists(st.sampled_from(["M", "A", "B", "C"]), min_size=1, max_size=4).map(tuple)
_atts = st.one_of(
    _paths.map(Attribution),
    st.sampled_from([BUCKET_IDLE, BUCKET_DATA]).map(lambda b: Attribution((), b)),
)


@given(
    st.dictionaries(_atts, st.integers(min_value=1, max_value=500), min_size=1, max_size=12),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
)
def test_energy_is_conserved_and_shares_are_consistent(counts, energy_j):
    rows = aggregate(
        Counter(counts),
        window_start_ns=0,
        window_end_ns=10**9,
        rate_hz=97,
        window_energy_j=energy_j,
    )
    total = sum(counts.values())
    assert math.isclose(sum(r.self_energy_j for r in rows), energy_j, rel_tol=1e-9, abs_tol=1e-9)
    top = [r for r in rows if r.granularity == "bucket" or "/" not in r.path]
    assert math.isclose(sum(r.share for r in top), 1.0, rel_tol=1e-12)
    assert sum(r.n_samples for r in top) == total
    for r in rows:
        assert r.self_time_s <= r.time_s + 1e-12
        assert math.isclose(r.energy_j, energy_j * r.share, rel_tol=1e-9, abs_tol=1e-9)
        children = [
            c
            for c in rows
            if c.path.startswith(r.path + "/") and c.path.count("/") == r.path.count("/") + 1
        ]
        if r.granularity == "class":
            assert r.n_samples == round(r.self_time_s * 97) + sum(c.n_samples for c in children)


@given(st.dictionaries(_paths.map(Attribution),
                       st.floats(min_value=0.01, max_value=200, allow_nan=False), min_size=1, max_size=12))
def test_spread_lost_reads_never_give_a_node_fewer_samples_than_its_children(counts):
    """Fractional counts (lost reads spread in proportion) keep inclusive sample counts nested:
    a CI run on a loaded machine once stored a class with 36 samples over children with 37."""
    rows = aggregate(Counter(counts), window_start_ns=0, window_end_ns=1, rate_hz=100, window_energy_j=1.0)
    for r in rows:
        children = [c for c in rows
                    if c.path.startswith(r.path + "/") and c.path.count("/") == r.path.count("/") + 1]
        assert r.n_samples >= sum(c.n_samples for c in children), (r.path, r.n_samples)
        assert r.n_samples <= r.time_s * 100 + 1e-6  # whole samples: never more than were counted


def test_whole_samples_rounds_down_but_not_below_an_integer_summed_in_another_order():
    assert whole_samples(36.4) == 36 and whole_samples(18.6) + whole_samples(17.8) == 35
    assert whole_samples(0.1 + 0.2 + 0.7) == 1 and whole_samples(2.9999999999999996) == 3
    assert whole_samples(0) == 0


# --------------------------------------------------------------------------- optimizer parts

_STEP = [("<module>", "/x/t.py", 9), ("AdamW.step", "/s/torch/optim/adamw.py", 220),
         ("adamw", "/s/torch/optim/adamw.py", 700)]


@pytest.mark.parametrize(
    ("frames", "part"),
    [
        (_STEP + [("_single_tensor_adamw", "/s/torch/optim/adamw.py", 400)], "_single_tensor_adamw"),
        (_STEP + [("_multi_tensor_adamw", "/s/torch/optim/adamw.py", 500),
                  ("_group_tensors_by_device_and_dtype", "/s/torch/optim/optimizer.py", 90)],
         "_multi_tensor_adamw"),
        (_STEP + [("_fused_adamw", "/s/torch/optim/adamw.py", 600)], "_fused_adamw"),
        ([("<module>", "/x/t.py", 9), ("Optimizer.zero_grad", "/s/torch/optim/optimizer.py", 950)],
         OPTIMIZER_ZERO_GRAD),
        ([("<module>", "/x/t.py", 9), ("clip_grad_norm_", "/s/torch/nn/utils/clip_grad.py", 30),
          ("_get_total_norm", "/s/torch/nn/utils/clip_grad.py", 80)], "clip_grad_norm_"),
        (_STEP[:2], OPTIMIZER_STEP_OTHER),
        # a user's function that merely looks like an update kernel is not one of torch's
        ([("<module>", "/x/t.py", 9), ("Adam.step", "/s/torch/optim/adam.py", 230),
          ("_single_tensor_mine", "/x/t.py", 3)], OPTIMIZER_STEP_OTHER),
    ],
)
def test_optimizer_stacks_are_split_by_torch_function(frames, part):
    frames = [Frame(*f) for f in frames]
    att = classify(frames, SourceIndex())
    assert (att.bucket, att.detail) == (BUCKET_OPTIMIZER, part)
    assert optimizer_part(frames) == part
    assert att.key == f"{BUCKET_OPTIMIZER}/{part}"


def test_native_training_capture_names_every_optimizer_sample():
    """The recorded Llama training job (--native, py 3.11): its 6 optimizer samples are 5 in
    Adam's single-tensor update and 1 in the step's profiler hook; rows conserve the energy."""
    raw = (FIXTURES / "llama_train_native_py311.txt").read_text()
    counts = attribute(parse_raw(raw))
    parts = {att.detail: n for att, n in counts.items() if att.bucket == BUCKET_OPTIMIZER}
    assert parts == {"_single_tensor_adam": 5, OPTIMIZER_STEP_OTHER: 1}
    total = sum(counts.values())
    rows = rows_by_path(aggregate(counts, window_start_ns=0, window_end_ns=10**9, rate_hz=1,
                                  window_energy_j=100.0))
    opt = rows[BUCKET_OPTIMIZER]
    assert opt.n_samples == 6 and opt.self_time_s == 0.0 and opt.self_energy_j == 0.0
    child = rows[BUCKET_OPTIMIZER + "/_single_tensor_adam"]
    assert child.granularity == "bucket" and child.method == METHOD
    assert child.self_energy_j == pytest.approx(100.0 * 5 / total)
    assert child.energy_j == child.self_energy_j
    assert sum(r.self_energy_j for r in rows.values()) == pytest.approx(100.0)


def test_unclaimed_bucket_samples_stay_the_parents_self():
    counts = Counter({Attribution((), BUCKET_OPTIMIZER): 3,
                      Attribution((), BUCKET_OPTIMIZER, "_fused_adam"): 1,
                      Attribution(("Net",)): 4})
    rows = rows_by_path(aggregate(counts, window_start_ns=0, window_end_ns=1, rate_hz=10,
                                  window_energy_j=8.0))
    assert rows[BUCKET_OPTIMIZER].self_energy_j == pytest.approx(3.0)
    assert rows[BUCKET_OPTIMIZER].energy_j == pytest.approx(4.0)
    assert rows[BUCKET_OPTIMIZER + "/_fused_adam"].self_energy_j == pytest.approx(1.0)
    assert sum(r.self_energy_j for r in rows.values()) == pytest.approx(8.0)
