"""Torn stacks (profiler/stacks/tree.py, sampler._counts): a class path the module tree does not
have is dropped and counted, never stored; on a recorded py-spy window (GPT-2, Python 3.11)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from wattlens.profiler.stacks.parse import Attribution, SourceIndex, window_counts, window_reads
from wattlens.profiler.stacks.sampler import StackSampler
from wattlens.profiler.stacks.tree import TreeGuard

FIXTURES = Path(__file__).parent / "fixtures" / "pyspy"
MAIN_TID = 4242


def resolver(filename: str) -> str | None:
    if filename.startswith("{fixtures}/"):
        path = FIXTURES / filename.removeprefix("{fixtures}/")
        return str(path) if path.is_file() else None
    return None


def gpt2_raw() -> str:
    return (FIXTURES / "gpt2_py311.txt").read_text()


def stitched_line(raw: str) -> str:
    """A torn read built from two real lines: the frames down to a block's LayerNorm.forward, then
    the frames of an attention call below it (as if read while the norm returned and the attention
    began)."""
    lines = raw.splitlines()
    norm = next(ln for ln in lines if "LayerNorm.forward" in ln and "GPT2Attention" not in ln)
    attn = next(ln for ln in lines if "GPT2Attention.forward" in ln)
    norm_frames = norm.rpartition(" ")[0].split(";")
    cut = max(i for i, f in enumerate(norm_frames) if f.startswith("LayerNorm.forward"))
    attn_frames = attn.rpartition(" ")[0].split(";")
    start = max(i for i, f in enumerate(attn_frames) if f.startswith("GPT2Block.forward")) + 1
    return ";".join(norm_frames[: cut + 1] + attn_frames[start:]) + " 2"


def counts_of(raw: str) -> Counter[Attribution]:
    return window_counts(raw, target_pid=MAIN_TID, index=SourceIndex(resolver))


def test_stitched_path_is_dropped_and_counted():
    raw = gpt2_raw()
    torn_line = stitched_line(raw)
    clean = counts_of(raw)
    with_torn = counts_of(raw + "\n" + torn_line + "\n")
    torn_keys = set(with_torn) - set(clean)
    assert len(torn_keys) == 1
    (torn_att,) = torn_keys
    assert "LayerNorm/GPT2Attention" in torn_att.key

    guard = TreeGuard()
    kept, dropped = guard.filter(with_torn)
    assert dropped == 2 and guard.torn == 2
    assert torn_att not in kept
    assert kept == clean  # every real path of the recorded window survives
    assert guard.torn_paths[torn_att.key] == 2


def test_exact_reads_vouch_for_an_edge_the_counts_would_reject():
    odd = Attribution(("Model", "Norm", "Linear"))  # looks torn: a leaf parent, Linear elsewhere
    common = Attribution(("Model", "Block", "Linear"))
    norm = Attribution(("Model", "Norm"))
    counts = Counter({common: 500, norm: 100, odd: 1})
    guard = TreeGuard()
    kept, dropped = guard.filter(counts)
    assert dropped == 1 and odd not in kept
    guard.learn_exact(Counter({odd: 1}))  # a blocking read saw it: it exists
    kept, dropped = guard.filter(counts)
    assert dropped == 0 and kept[odd] == 1


def test_rare_under_its_parent_and_mostly_elsewhere_is_torn():
    real = Attribution(("M", "Layer", "Attention", "Linear"))
    torn = Attribution(("M", "Layer", "Norm", "Attention", "Linear"))
    norm = Attribution(("M", "Layer", "Norm"))
    guard = TreeGuard()
    for _ in range(20):  # a minute of windows: the torn path keeps coming at ~2 % of Norm
        kept, _ = guard.filter(Counter({real: 400, norm: 50, torn: 1}))
        assert torn not in kept and kept[real] == 400 and kept[norm] == 50
    assert guard.torn == 20


def test_a_rare_child_that_is_most_of_its_parent_is_kept():
    # BERT's prediction head: few samples, its Linear seen mostly in the encoder
    encoder = Attribution(("Bert", "Encoder", "Layer", "Linear"))
    head = Attribution(("Bert", "Head", "Transform", "Linear"))
    head_self = Attribution(("Bert", "Head", "Transform"))
    guard = TreeGuard()
    kept, dropped = guard.filter(Counter({encoder: 300, head: 5, head_self: 2}))
    assert dropped == 0 and kept[head] == 5


def test_sampler_drops_torn_reads_and_adds_them_to_the_lost_reads():
    raw = gpt2_raw()
    sampler = StackSampler(
        MAIN_TID,
        on_window=lambda rows: None,
        energy_between=lambda a, b: None,
        source_resolver=resolver,
    )
    window = raw + "\n" + stitched_line(raw) + "\n"
    observed = sum(counts_of(window).values())
    counts = sampler._counts(window, failed=6, calibration_raw=raw)
    assert not any("LayerNorm/GPT2Attention" in att.key for att in counts)
    assert sum(counts.values()) == observed + 6  # torn (2) + failed (6) added back, none lost
    assert sampler.loss.torn == 2 and sampler.loss.failed == 6
    message = sampler.loss_message()
    assert "8 of" in message and "2 torn" in message and "calibration" in message


def test_a_path_torn_below_the_root_is_dropped():
    real = Attribution(("Llama", "Layer", "MLP", "Linear"))
    rootless = Attribution(("Layer", "MLP", "Linear"))
    guard = TreeGuard()
    kept, dropped = guard.filter(Counter({real: 900, rootless: 1}))
    assert dropped == 1 and rootless not in kept and kept[real] == 900


def test_a_read_torn_below_the_root_in_the_first_short_window_is_dropped():
    # a training job's first window: 120 forward samples (the rest were backward and optimizer);
    # one read lost the model's outer frames. One sample in 120 is over the root share, but a
    # root seen once and never by an exact read is not the model's (a real second model would be
    # seen again, and the calibration reads would vouch for it)
    real = Attribution(("Bert", "Encoder", "Layer", "Linear"))
    rootless = Attribution(("LMHead", "Linear"))
    guard = TreeGuard()
    kept, dropped = guard.filter(Counter({real: 120, rootless: 1}))
    assert dropped == 1 and rootless not in kept
    second_model = Attribution(("Teacher", "Linear"))  # seen often: a real root
    kept, dropped = guard.filter(Counter({real: 120, second_model: 30}))
    assert dropped == 0 and kept[second_model] == 30


def test_a_child_under_a_class_the_exact_reads_saw_only_as_a_leaf_is_torn():
    """With few samples the share tests let a torn path through: the torn read itself makes the
    norm look like a parent. Once a blocking read has seen the norm, always as a leaf, the path
    is dropped."""
    real = Attribution(("M", "Layer", "Attention", "Linear"))
    norm = Attribution(("M", "Layer", "Norm"))
    torn = Attribution(("M", "Layer", "Norm", "Attention", "Linear"))
    first_window = Counter({real: 100, norm: 3, torn: 1})  # the norm: 3 samples and 1 torn "child"
    kept, dropped = TreeGuard().filter(first_window)
    assert torn in kept and dropped == 0  # the share tests alone let it through
    guard = TreeGuard()
    guard.learn_exact(Counter({norm: 1, real: 8}))  # one exact read in the norm, no child
    kept, dropped = guard.filter(first_window)
    assert torn not in kept and dropped == 1 and kept[real] == 100 and kept[norm] == 3


def test_the_backward_split_forgets_a_path_judged_torn_later():
    """The backward is split over the class paths' pooled forward time; a path let in by an
    earlier window and judged torn since leaves that pool at the next window."""
    sampler = StackSampler(
        MAIN_TID,
        on_window=lambda rows: None,
        energy_between=lambda a, b: None,
        source_resolver=resolver,
    )
    torn_key = "GPT2LMHeadModel/GPT2Model/GPT2Block/LayerNorm/GPT2Attention/Conv1D"
    sampler.forward_time[torn_key] = 3  # as if a first, thin window had let it through
    raw = gpt2_raw()
    sampler._emit(raw, 0, 5_000_000_000, calibration_raw=raw)
    assert torn_key not in sampler.forward_time
    real = [k for k in sampler.forward_time if k.endswith("GPT2Attention/Conv1D")]
    assert real and all(sampler.forward_time[k] > 0 for k in real)


def test_a_module_glued_under_its_sibling_is_torn():
    """The exact reads have the attention beside the output block; a path with the attention
    inside the output block (a stack read as one returned and the other began) is torn, even
    where its counts alone pass."""
    attn = Attribution(("M", "Att", "Self", "Linear"))
    out_self = Attribution(("M", "Att", "Out"))
    out_lin = Attribution(("M", "Att", "Out", "Linear"))
    torn = Attribution(("M", "Att", "Out", "Self", "Linear"))
    counts = Counter({attn: 200, out_self: 10, out_lin: 10, torn: 2})
    kept, dropped = TreeGuard().filter(counts)
    assert torn in kept  # the share tests alone keep it: 2 of the output block's 22 samples
    guard = TreeGuard()
    guard.learn_exact(Counter({attn: 20, out_lin: 2}))
    kept, dropped = guard.filter(counts)
    assert torn not in kept and dropped == 2 and kept[attn] == 200 and kept[out_lin] == 10


def test_a_leaf_class_beside_a_block_and_inside_its_mlp_is_kept():
    """Class paths repeat leaf classes: a Linear beside the block's MLP and one inside it are
    both real, so the sibling test leaves leaves alone."""
    side = Attribution(("M", "Block", "Linear"))
    mlp_act = Attribution(("M", "Block", "MLP", "Act"))
    mlp_lin = Attribution(("M", "Block", "MLP", "Linear"))  # rare so far, not yet read exactly
    guard = TreeGuard()
    guard.learn_exact(Counter({side: 20, mlp_act: 3}))
    kept, dropped = guard.filter(Counter({side: 300, mlp_act: 40, mlp_lin: 10}))
    assert dropped == 0 and kept[mlp_lin] == 10


def test_a_container_inside_its_own_class_is_kept():
    """torch's containers nest in themselves and beside each other: a Sequential in a
    Sequential is real, though a Sequential also sits beside its parent."""
    backbone = Attribution(("Net", "Sequential", "Linear"))
    head_self = Attribution(("Net", "Head", "Sequential"))
    nested = Attribution(("Net", "Head", "Sequential", "Sequential", "Linear"))
    guard = TreeGuard()
    guard.learn_exact(Counter({backbone: 30, head_self: 2, Attribution(("Net", "Sequential")): 1}))
    kept, dropped = guard.filter(Counter({backbone: 900, head_self: 20, nested: 30}))
    assert dropped == 0 and kept[nested] == 30


# The lines each module was at (py-spy's file:line): a BERT-like layer whose output block's
# dense call (m.py:61) is read while the intermediate block's GELU runs. Frames as py-spy 0.4
# writes them for Python 3.11, the call glue included.
_GLUE = "Module._call_impl (torch/nn/modules/module.py:1789)"


def _line(count: int, *frames: str) -> str:
    out = ["<module> (train.py:10)"]
    for f in frames:
        out += [f, _GLUE]
    return ";".join(out[:-1]) + f" {count}"


EXACT = "\n".join([
    _line(6, "Net.forward (m.py:5)", "Layer.forward (m.py:20)", "Intermediate.forward (m.py:40)",
          "Linear.forward (lin.py:9)"),
    _line(2, "Net.forward (m.py:5)", "Layer.forward (m.py:20)", "Intermediate.forward (m.py:41)",
          "GELU.forward (act.py:3)"),
    _line(5, "Net.forward (m.py:5)", "Layer.forward (m.py:21)", "Output.forward (m.py:61)",
          "Linear.forward (lin.py:9)"),
]) + "\n"
TORN_GELU = _line(2, "Net.forward (m.py:5)", "Layer.forward (m.py:21)", "Output.forward (m.py:61)",
                  "GELU.forward (act.py:3)")
TORN_UNDER_LINEAR = _line(1, "Net.forward (m.py:5)", "Layer.forward (m.py:21)", "Output.forward (m.py:61)",
                          "Linear.forward (lin.py:9)", "GELU.forward (act.py:3)")


def test_a_leaf_glued_under_its_parents_sibling_is_torn_by_the_line_it_was_read_at():
    """``Output/GELU`` passes every test on classes: the GELU is a leaf, and 2 of its 12 samples
    are not few. But the output block was at its dense call (m.py:61), where the exact reads saw
    it call a Linear 5 times and never anything else: a line of a forward calls one module."""
    window = EXACT * 8 + TORN_GELU + "\n"
    kept, dropped = TreeGuard().filter(window_counts(window))  # classes only
    assert dropped == 0 and any(att.path[-2:] == ("Output", "GELU") for att in kept)
    guard = TreeGuard()
    guard.learn_exact(window_reads(EXACT))
    kept, dropped = guard.filter(window_reads(window))
    assert dropped == 2 and guard.torn_paths["Net/Layer/Output/GELU"] == 2
    assert kept == window_counts(EXACT * 8)  # every real read kept


def test_a_child_under_the_line_where_the_exact_reads_saw_a_leaf_is_torn():
    """The innermost module's line counts too: Linear's lin.py:9 was the innermost frame in 11
    exact reads, so a GELU below it there is a stack read while it changed."""
    guard = TreeGuard()
    guard.learn_exact(window_reads(EXACT))
    kept, dropped = guard.filter(window_reads(EXACT * 8 + TORN_UNDER_LINEAR + "\n"))
    assert dropped == 1 and not any("GELU" in att.path[:-1] or att.path[-2:] == ("Linear", "GELU")
                                    for att in kept)


def test_a_line_with_few_exact_reads_or_a_trusted_path_is_not_judged_by_its_line():
    """Under MIN_SITE_READS exact reads at a line say nothing yet; and a path an exact read has
    seen is real whatever lines a read caught it at."""
    guard = TreeGuard()
    few = "\n".join(EXACT.splitlines()[:1] + [EXACT.splitlines()[2].replace(" 5", " 2")]) + "\n"
    guard.learn_exact(window_reads(few))  # the dense call read twice only
    kept, dropped = guard.filter(window_reads(EXACT * 8 + TORN_GELU + "\n"))
    assert dropped == 0
    guard = TreeGuard()
    guard.learn_exact(window_reads(EXACT))
    odd_line = _line(3, "Net.forward (m.py:5)", "Layer.forward (m.py:21)", "Output.forward (m.py:61)",
                     "Linear.forward (lin.py:9)").replace("m.py:21", "m.py:20")  # a real path, odd line
    kept, dropped = guard.filter(window_reads(EXACT * 8 + odd_line + "\n"))
    assert dropped == 0 and kept[Attribution(("Net", "Layer", "Output", "Linear"))] == 5 * 8 + 3


def test_a_torn_read_let_through_early_is_folded_away_at_the_end(tmp_path):
    """The first window's exact reads never saw the output block's dense line, so the torn GELU
    passed and became rows; the next window's did. At the end the whole session's evidence
    judges it again: its rows go, their time and energy to the output block (which held them
    inclusively already), the window's totals unchanged, the store swaps just those rows, and
    the backward's pool forgets the path."""
    import time

    from wattlens.profiler.store import Store

    delivered: list[list] = []
    sampler = StackSampler(MAIN_TID, on_window=delivered.append, energy_between=lambda a, b: 10.0,
                           source_resolver=resolver)
    torn_key = "Net/Layer/Output/GELU"
    sampler._emit(EXACT * 8 + TORN_GELU + "\n", 0, 5_000_000_000, calibration_raw=EXACT.splitlines()[0] + "\n")
    assert torn_key in {r.path for r in delivered[0]}  # let through: one exact read, elsewhere
    assert sampler.final_tree() == ([], [])  # the session's evidence so far agrees
    sampler._emit(EXACT * 8, 5_000_000_000, 10_000_000_000, calibration_raw=EXACT)
    assert torn_key not in {r.path for r in delivered[1]}
    old, new = sampler.final_tree()
    assert sorted(r.path for r in old) == ["Net/Layer/Output", torn_key]
    assert [r.path for r in new] == ["Net/Layer/Output"] and torn_key not in sampler.forward_time
    before = {r.path: r for r in delivered[0]}
    (output,) = new
    assert output.self_time_s == pytest.approx(before["Net/Layer/Output"].self_time_s + before[torn_key].self_time_s)
    assert output.self_energy_j == pytest.approx(before["Net/Layer/Output"].self_energy_j
                                                 + before[torn_key].self_energy_j)
    assert output.time_s == before["Net/Layer/Output"].time_s  # inclusive: it held them already
    assert "1 class path(s)" in sampler.final_tree_note and torn_key in sampler.final_tree_note

    store = Store(tmp_path / "s.db")
    sid, _ = store.create_session(name="t", kind="attach", started_at=time.time(), start_ns=0)
    store.write_batch(sid, [], layer_costs=[r for rows in delivered for r in rows])
    store.replace_rows(sid, old, new)
    after = store.layer_costs(sid)
    store.close()
    first = [r for r in after if r.window_start_ns == 0]
    assert torn_key not in {r.path for r in after}
    assert len(first) == len(delivered[0]) - 1 and len(after) == len(first) + len(delivered[1])
    assert sum(r.self_time_s for r in first) == pytest.approx(sum(r.self_time_s for r in delivered[0]))
    assert sum(r.self_energy_j for r in first) == pytest.approx(10.0)  # still the window's energy


def test_folding_a_path_torn_from_its_root_and_keeping_one_with_a_read_that_fits():
    """A path torn below the model's root gives its time to the window's largest root, whose
    inclusive figures grow by it; a path one of whose kept reads still fits is kept."""
    from wattlens.profiler.records import LayerCost
    from wattlens.profiler.stacks.sampler import fold_torn

    def lc(path, incl, self_s):
        return LayerCost(0, 5, path, "class", "stack-sampling", incl, incl / 10, incl, self_s, self_s, n_samples=int(incl * 10))

    rows = [lc("Net", 9.0, 1.0), lc("Net/Block", 8.0, 8.0), lc("Block", 0.5, 0.2), lc("Block/Linear", 0.3, 0.3),
            lc("Aux", 0.5, 0.5)]
    old, new = fold_torn(rows, {("Block",), ("Block", "Linear")})
    assert sorted(r.path for r in old) == ["Block", "Block/Linear", "Net"]
    (net,) = new
    assert net.self_time_s == pytest.approx(1.5) and net.time_s == pytest.approx(9.5)
    assert net.share == pytest.approx(0.95) and net.n_samples == 95 and net.energy_j == pytest.approx(9.5)
    assert sum(r.self_time_s for r in rows) == pytest.approx(
        sum(r.self_time_s for r in rows if r.path not in {o.path for o in old}) + net.self_time_s)
    assert fold_torn(rows, set()) == ([], [])
    assert fold_torn([lc("Block", 1.0, 1.0)], {("Block",)}) == ([], [])  # no root to fold into

    guard = TreeGuard()
    guard.learn_exact(window_reads(EXACT))
    guard.kept_reads.update(window_reads(EXACT * 8 + TORN_GELU + "\n"))
    assert guard.final_torn() == {("Net", "Layer", "Output", "GELU")}
    # the same path read once more at a line the exact reads never saw: that read fits
    guard.kept_reads.update(window_reads(TORN_GELU.replace("m.py:61", "m.py:62") + "\n"))
    assert guard.final_torn() == set()
