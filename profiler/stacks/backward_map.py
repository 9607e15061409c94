"""Map the backward's autograd ops back to the module classes that issued them (attach mode).

The native reads of :mod:`.native` that land in the *forward* show, at once, the module-class
path on the Python stack (the innermost module whose ``forward`` runs) and the tensor op that
path is running (:func:`forward_op`: the op whose autograd kernel records the node —
``VariableType::mm``, ``VariableType::silu`` ... — else the innermost dispatched op, else a
BLAS kernel leaf, which is a matrix product). Pooled over the session they give each class
path's op mix; weighed by the class paths' forward time from the 50 Hz non-blocking samples
(:func:`forward_time`: thousands of samples where the 1 Hz native reads give tens), they give
P(class path | forward op) ∝ T_c × P(op | c). Each autograd node of the backward is named after
its forward op (``MmBackward0`` ← ``mm``, ``SiluBackward0`` ← ``silu``, ``NllLossBackward0`` ←
``nll_loss_forward``: :func:`node_op`), so the backward reads of one op are split over the
class paths in those proportions (:func:`backward_by_class`); the op mix is pooled per innermost
class (all ``Linear`` paths share one). Without the times, the native reads alone weigh the
classes (noisier: benchmarks/RESULTS.md compares both).

The assumption, which is what the label says: *within one op, a class path's share of the
backward equals its share of the forward* (e.g. each Linear's two gradient products cost about
twice its forward product, whichever Linear it is). It does not hold exactly where gradients
are not needed (a first layer's input gradient) or where the backward of one op is much more or
less costly for one op than another it is pooled with; the benchmark (benchmarks/bench_stacks.py
--suite) measures the error against an in-process timer of each module's autograd nodes: on a
Llama-style training loop the Linears were within 1 pp (4 Hz native reads) and 3.6 pp (1 Hz),
while the small classes read 2-8 pp low (the attention's SDPA backward, read as a bare BLAS
kernel, is shared with the Linears; the norms' and activations' elementwise ops are rarely
caught in a forward read, so their gradients stay op rows).

Matrix products are one family: the forward of a Linear is often read only as a BLAS kernel
straight under the Python frame (the unwinder cannot get through the hand-written kernel), and so
is much of the backward (``native.BLAS_UNWOUND``). A backward ``MmBackward0`` is matched with
forward reads that are ``mm`` or a product of unknown kind; a forward read that is known to be
another product (``bmm``) is not evidence for it.

What stays an op row: ops with no forward evidence (the engine's own work, gradient
accumulation, ``autograd.Function`` in Python), and the part of an op whose forward evidence lies
outside any module (a loss computed in the training script).

Uncertainty: the share of the backward of each row has a standard error by the delta method,
over the binomial counts it rests on (backward reads per op; each class's op mix in its native
forward reads, the sampled times taken as exact), :func:`backward_by_class`; ops whose forward
evidence overlaps (the matrix products) are taken as fully correlated, an upper bound. Classes
never seen running an op add no uncertainty to it (a Linear does not run ``silu``). Proportions
in the variance are taken as (k + ½)/(n + 1) so a group of one read does not claim zero
uncertainty. The standard error covers the counting, not the method's own error above.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks.native import BLAS_UNWOUND, is_blas_leaf, native_reads
from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_OTHER,
    Attribution,
    SourceIndex,
    classify,
)

# LayerCost.method of a backward row charged to a module class (store column: 30 characters)
METHOD = "estimate: forward-op mix"
METHOD_TEXT = ("backward by module class: each autograd op's native reads split over the module "
               "classes by their sampled forward time × the share of their native forward reads "
               "in that op (an estimate)")
OUTSIDE_MODULES = "(outside modules)"  # forward evidence from a stack with no module on it
NO_OP = ""  # a forward read with no tensor op on its stack: evidence for no backward op
MATMUL = "matmul"  # a matrix product of unknown kind (BLAS leaf, or the composite matmul/linear)
_MATMUL_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "dot", "addbmm"})
_COMPOSITE_MATMUL = frozenset({"matmul", "linear"})

_VARIABLE_TYPE_RE = re.compile(r"VariableType::\(anonymous namespace\)::([A-Za-z0-9_]+)(?: \(|$)")
_ATEN_OP_RE = re.compile(r"at::_ops::([A-Za-z0-9_]+)::(?:call|redispatch)")
_BINDING_RE = re.compile(r"THPVariable_([A-Za-z0-9_]+)")
_NODE_SUFFIX_RE = re.compile(r"Backward\d*$")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _norm_op(name: str) -> str:
    """``_scaled_dot_product_flash_attention_for_cpu`` -> without its leading underscores; the
    composite products (``matmul``, ``linear``) -> :data:`MATMUL`."""
    op = name.lstrip("_")
    return MATMUL if op in _COMPOSITE_MATMUL else op


def forward_op(parts: Iterable[str]) -> str | None:
    """The tensor op a native forward stack is in (frames as py-spy printed them, outermost first):
    the innermost autograd kernel (``VariableType::<op>``: the op that records the node), else the
    innermost dispatched op (``at::_ops::<op>::call``), else the innermost Python binding
    (``THPVariable_<op>``), else :data:`MATMUL` for a BLAS kernel leaf; None when no op is on the
    stack. Names keep their overload (``mul_Tensor``, ``mean_dim``): :func:`matches` handles it."""
    variable_type = aten = binding = None
    leaf = ""
    for part in parts:
        leaf = part
        if (m := _VARIABLE_TYPE_RE.search(part)) is not None:
            variable_type = m.group(1)
        elif (m := _ATEN_OP_RE.search(part)) is not None:
            aten = m.group(1)
        elif (m := _BINDING_RE.search(part)) is not None:
            binding = m.group(1)
    for found in (variable_type, aten, binding):
        if found is not None:
            return _norm_op(found)
    if is_blas_leaf(leaf):
        return MATMUL
    return None


def node_op(node: str) -> str | None:
    """The forward op an autograd node is the gradient of: ``MmBackward0`` -> ``mm``,
    ``ScaledDotProductFlashAttentionForCpuBackward0`` ->
    ``scaled_dot_product_flash_attention_for_cpu``; :data:`MATMUL` for a BLAS kernel read in the
    backward; None for what has no forward op (engine, accumulation, Python functions)."""
    if node == BLAS_UNWOUND:
        return MATMUL
    if _NODE_SUFFIX_RE.search(node) is None:
        return None
    stem = _NODE_SUFFIX_RE.sub("", node)
    return _CAMEL_RE.sub("_", stem).lower() or None


def matches(grad_of: str, fwd: str) -> bool:
    """Is a forward read of op ``fwd`` evidence for a backward node of op ``grad_of``?

    Same op, with or without an overload suffix (``mul`` ~ ``mul_Tensor``, ``mean`` ~
    ``mean_dim``, ``nll_loss`` ~ ``nll_loss_forward``); in the matrix-product family a product of
    unknown kind matches every product and a backward product of unknown kind matches every
    forward product."""
    if fwd == grad_of or fwd.startswith(grad_of + "_"):
        return True
    if grad_of == MATMUL:
        return fwd in _MATMUL_OPS
    return grad_of in _MATMUL_OPS and fwd == MATMUL


def forward_ops(raw_text: str, index: SourceIndex | None = None) -> Counter[tuple[str, str]]:
    """Native reads in the forward, per (class path, op) (``py-spy record --native`` raw text).

    The class path is the one the Python frames give (:func:`~.parse.classify`, joined by ``/``),
    or :data:`OUTSIDE_MODULES` for a stack outside any module and outside the backward, optimizer
    and data loading (a loss in the training script); a read with no op on the stack (the
    forward's own Python) counts under :data:`NO_OP`, so a class's reads give its op mix.
    """
    index = index if index is not None else SourceIndex()
    out: Counter[tuple[str, str]] = Counter()
    for parts, frames, count in native_reads(raw_text):
        if not frames:
            continue
        att = classify(frames, index)
        if att.bucket is None:
            owner = "/".join(att.path)
        elif att.bucket == BUCKET_OTHER:
            owner = OUTSIDE_MODULES
        else:
            continue  # backward, optimizer, data loading, idle: not a forward
        out[(owner, forward_op(parts) or NO_OP)] += count
    return out


def forward_time(counts: Mapping[Attribution, float]) -> Counter[str]:
    """One window's forward self samples per class path (the stack sampler's counts), and the
    samples outside modules (:data:`OUTSIDE_MODULES`): the ``forward_time`` of
    :func:`backward_by_class`, keyed like :func:`forward_ops`' owners."""
    out: Counter[str] = Counter()
    for att, n in counts.items():
        if att.bucket is None and att.path:
            out["/".join(att.path)] += n
        elif att.bucket == BUCKET_OTHER:
            out[OUTSIDE_MODULES] += n
    return out


@dataclass(frozen=True, slots=True)
class BackwardPart:
    """One row of the backward: a module-class path (``kind="class"``) or an op kept as an op
    (``kind="op"``); ``reads`` = native backward reads credited to it (fractional where split),
    ``share`` of the backward and its standard error ``se``, ``ops`` the autograd ops in it."""

    name: str
    kind: str
    reads: float
    share: float
    se: float
    ops: tuple[str, ...]


def _var_p(k: float, n: float) -> float:
    """Variance of a binomial proportion k/n, the proportion taken as (k + 1/2)/(n + 1)."""
    p = (k + 0.5) / (n + 1.0)
    return p * (1.0 - p) / n


def leaf_class(path: str) -> str:
    """The innermost class of a class path (``.../LlamaMLP/Linear`` -> ``Linear``)."""
    return path.rsplit("/", 1)[-1]


def backward_by_class(
    ops: Counter[str], forward: Counter[tuple[str, str]],
    forward_time: Counter[str] | None = None,
) -> list[BackwardPart]:
    """Split the backward's native reads per autograd op (``ops``, from :func:`.native.backward_ops`)
    over module-class paths by the forward evidence (``forward``, from :func:`forward_ops`).

    Evidence for op o in class path c: e_o(c) = k_o(c), its native forward reads of the op; or,
    given ``forward_time`` (the class paths' sampled forward self time, e.g. the session's
    non-blocking sample counts, :data:`OUTSIDE_MODULES` for the rest of the forward), the class
    path's time × the op mix of its innermost class, T_c·m_o(L), m_o(L) = k_o(L)/n_L over the
    native forward reads of every path ending in class L (a ``Linear`` runs the same code
    wherever it sits, so the LM head gets the Linears' mix even when no native read landed in
    it): the many time samples weigh the paths, the few native reads only say which op each
    class runs.
    For op o with n_o reads (E_o evidence in all, outside modules included): c gets
    n_o·e_o(c)/E_o reads; the outside part and ops with no evidence stay op rows.
    Share of a row s = Σ_o p_o·q_o with p_o = n_o/N, q_o its fraction of o;
    Var(s) ≈ (Σ_o p_o·q_o² − s²)/N + Σ_G (Σ_{o∈G} p_o·sd(q_o))², G the groups of ops that rest
    on shared forward reads (the matrix products): within a group the q_o are taken as fully
    correlated (an upper bound), across groups as independent. Var(q_o): binomial in E_o
    reads; time-weighted, the delta method over the op mixes m_L (binomial each, the times taken
    as exact): Σ_L ((T_c·[L(c)=L] − q_o(c)·T_L)/E_o)²·Var(m_L), T_L the time of the paths
    ending in L. Largest first; empty without reads.
    """
    total = sum(n for n in ops.values() if n > 0)
    if total <= 0:
        return []
    n_leaf: Counter[str] = Counter()  # native forward reads per innermost class
    for (owner, _), k in forward.items():
        n_leaf[leaf_class(owner)] += max(k, 0)
    times = {c: float(t) for c, t in (forward_time or {}).items()
             if t > 0 and n_leaf[leaf_class(c)] > 0}
    # per row: {op: q_o (fraction of the op's reads), Var(q_o)}
    fractions: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    group: dict[str, str] = {}  # op -> the first op that used one of its forward reads
    cell_user: dict[tuple[str, str], str] = {}
    for op, n in ops.items():
        if n <= 0:
            continue
        grad_of = node_op(op)
        hits: Counter[str] = Counter()  # native forward reads of the op, per class path
        group[op] = op
        if grad_of is not None:
            for cell, k in forward.items():
                if k > 0 and cell[1] != NO_OP and matches(grad_of, cell[1]):
                    hits[cell[0]] += k
                    first = cell_user.setdefault(cell, op)
                    if group[op] == op:
                        group[op] = group[first]
        if forward_time is None:
            evidence = {c: float(k) for c, k in hits.items()}
        else:  # time x the op mix of the class's code (pooled over its paths)
            k_leaf: Counter[str] = Counter()
            for c, k in hits.items():
                k_leaf[leaf_class(c)] += k
            evidence = {c: t * k_leaf[leaf_class(c)] / n_leaf[leaf_class(c)]
                        for c, t in times.items() if k_leaf[leaf_class(c)] > 0}
            t_leaf: Counter[str] = Counter()
            for c in evidence:
                t_leaf[leaf_class(c)] += times[c]
        e_total = sum(evidence.values())
        if e_total <= 0:
            fractions.setdefault((op, "op"), {})[op] = (1.0, 0.0)
            continue
        for owner, e in evidence.items():
            key = (op, "op") if owner == OUTSIDE_MODULES else (owner, "class")
            q = e / e_total
            if forward_time is None:
                var_q = _var_p(hits[owner], e_total)
            else:
                mine = leaf_class(owner)
                var_q = sum(((times[owner] if leaf == mine else 0.0) - q * t) ** 2 / e_total**2
                            * _var_p(k_leaf[leaf], n_leaf[leaf]) for leaf, t in t_leaf.items())
            fractions.setdefault(key, {})[op] = (q, var_q)
    parts: list[BackwardPart] = []
    for (name, kind), by_op in fractions.items():
        p_q = [(ops[o] / total, q, var_q) for o, (q, var_q) in by_op.items()]
        share = sum(p * q for p, q, _ in p_q)
        var = max(0.0, sum(p * q * q for p, q, _ in p_q) - share * share) / total
        sd_by_group: Counter[str] = Counter()
        for o, (_, var_q) in by_op.items():
            sd_by_group[group[o]] += ops[o] / total * math.sqrt(var_q)
        var += sum(sd * sd for sd in sd_by_group.values())
        parts.append(BackwardPart(name, kind, share * total, share, math.sqrt(var),
                                  tuple(sorted(by_op, key=lambda o: -ops[o]))))
    parts.sort(key=lambda part: (-part.reads, part.name))
    return parts


def split_backward(
    rows: list[LayerCost], ops: Counter[str], forward: Counter[tuple[str, str]],
    forward_time: Counter[str] | None = None,
) -> list[LayerCost]:
    """Replace the window's ``backward`` bucket by one child row per :class:`BackwardPart`:
    ``backward/<class path>`` (method :data:`METHOD`) or ``backward/<op>`` (the bucket's method).

    The bucket row stays as the parent (inclusive figures unchanged, self figures 0); each child
    gets its part's share of it, so summing ``self_energy_j`` still gives the window's energy and
    no child claims more than the bucket; ``n_samples`` of a child = the native reads behind it
    (rounded), ``split_se_s`` the standard error of its time (the bucket's time × its share's).
    Without native reads the rows are returned unchanged.
    """
    parts = backward_by_class(ops, forward, forward_time)
    if not parts:
        return rows
    total = sum(part.reads for part in parts)
    out: list[LayerCost] = []
    for row in rows:
        if row.granularity != "bucket" or row.path != BUCKET_BACKWARD:
            out.append(row)
            continue
        out.append(replace(row, self_time_s=0.0,
                           self_energy_j=None if row.energy_j is None else 0.0))
        for part in parts:
            frac = part.reads / total
            energy_j = None if row.energy_j is None else row.energy_j * frac
            out.append(replace(
                row, path=f"{BUCKET_BACKWARD}/{part.name}",
                method=METHOD if part.kind == "class" else row.method,
                time_s=row.time_s * frac, share=row.share * frac, energy_j=energy_j,
                self_time_s=row.time_s * frac, self_energy_j=energy_j,
                n_samples=round(part.reads), split_se_s=row.time_s * part.se))
    return out


def class_message(ops: Counter[str], forward: Counter[tuple[str, str]],
                  forward_time: Counter[str] | None = None, top: int = 6) -> str | None:
    """One line: the backward's module classes with share ± standard error, and the method."""
    parts = backward_by_class(ops, forward, forward_time)
    classes = [p for p in parts if p.kind == "class"]
    if not classes:
        return None
    mapped = sum(p.share for p in classes)
    detail = ", ".join(f"{'/'.join(p.name.split('/')[-2:])} {p.share:.0%} ± {p.se:.0%}"
                       for p in classes[:top])
    n_fwd = sum(forward.values())
    return (f"backward by module class ({METHOD}: {sum(ops.values())} backward and {n_fwd} "
            f"forward native reads; {mapped:.0%} of the backward mapped, the rest stays by op): "
            f"{detail}")
