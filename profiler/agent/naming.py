"""Per-instance names and sizes of modules, and the per-module accumulators the hooks fill.

A module is named by its path from the root module it was first seen under
(``transformer.h.3.mlp.c_fc``), exactly as ``named_modules()`` names it. The main model's root has
the empty path; any other root-level module (a loss function, a second model) gets the prefix
``@ClassName`` (``@CrossEntropyLoss``) so its rows never collide with the main model's.

For people (:func:`display_name`) a path gets its module's class, ``fc1 (Linear)``; a child of an
index-addressed main model (an ``nn.Sequential``, whose children ``named_modules()`` names ``0``,
``1`` …) takes the model's class as its container, as a second root's children take ``@Class``:
``Sequential.0 (Linear)``, never a bare ``0``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

UNKNOWN_DEVICE = object()  # ModInfo.dev before the first CUDA-timed call


class ModInfo:
    """One module instance: its name, sizes, and this window's accumulators.

    Accumulators are reset lazily: ``win`` holds the window generation they belong to, and the
    first hook that touches the module in a new window zeroes them (see ``Tracker._touch``).
    """

    __slots__ = (
        "path", "cls", "ref", "parent", "root", "params", "bytes", "win",
        "fw_incl", "fw_self", "fw_calls", "bw_self", "bw_calls", "flops_pc", "is_root", "dev",
    )

    def __init__(self, path: str, cls: str, module: Any, parent: ModInfo | None,
                 root: ModInfo | None, params: int | None, nbytes: int | None) -> None:
        self.path = path
        self.cls = cls
        self.ref = weakref.ref(module) if module is not None else _dead
        self.parent = parent
        self.root = root if root is not None else self
        self.is_root = root is None
        self.params = params
        self.bytes = nbytes
        self.win = -1
        self.fw_incl = 0
        self.fw_self = 0
        self.fw_calls = 0
        self.bw_self = 0
        self.bw_calls = 0
        self.flops_pc: int | None = None  # forward FLOPs per call, inclusive
        self.dev: Any = UNKNOWN_DEVICE  # the CUDA device its events are recorded on (agent/tracker.py)


def _dead() -> None:
    return None


def _track(infos: dict[int, ModInfo], module: Any, info: ModInfo) -> None:
    """Index ``info`` by the module's id; the entry goes away when the module is collected,
    so the hooks can trust an id they find (ids are reused after an object dies)."""
    key = id(module)

    def forget(_ref: Any, infos: dict[int, ModInfo] = infos, key: int = key) -> None:
        if infos.get(key) is info:
            del infos[key]

    info.ref = weakref.ref(module, forget)
    infos[key] = info


def join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name:
        return prefix
    return prefix + "." + name


def display_name(path: str, classes: Mapping[str, str]) -> str:
    """A module instance's name for people (see the module doc). ``classes``: path → class name
    of the model's modules, the root's under ``""`` (the agent's model table); a path it does not
    hold keeps its bare name. The root itself (``""``) is returned as is: views name it."""
    if not path:
        return path
    head = path.split(".", 1)[0]
    name = path
    if head.isdigit() and classes.get(""):
        name = f"{classes['']}.{path}"  # the main model is the container of its indexed children
    cls = classes.get(path)
    return f"{name} ({cls})" if cls else name


def sizes(module: Any) -> tuple[int, int]:
    """(parameter count, bytes of parameters + buffers), inclusive of children, shared counted once."""
    params = 0
    nbytes = 0
    for p in module.parameters():
        n = p.numel()
        params += n
        nbytes += n * p.element_size()
    for b in module.buffers():
        nbytes += b.numel() * b.element_size()
    return params, nbytes


def register_tree(root_module: Any, prefix: str, infos: dict[int, ModInfo], *,
                  root_info: ModInfo | None = None,
                  overwrite: bool = False) -> tuple[ModInfo, list[dict[str, Any]]]:
    """Name the submodules of ``root_module``; return (root info, rows for the newly named ones).

    Modules already named under another root keep their first name unless ``overwrite`` (used
    when the user names the main model explicitly with ``agent.watch``). Passing ``root_info``
    re-scans a known root for submodules added since (lazy layers, swapped modules).
    """
    by_path: dict[str, ModInfo] = {}
    table: list[dict[str, Any]] = []
    for name, mod in root_module.named_modules():
        path = join(prefix, name)
        if not name:
            if root_info is None:
                params, nbytes = sizes(mod)
                root_info = ModInfo(path, type(mod).__name__, mod, None, None, params, nbytes)
                table.append({"path": path, "class": root_info.cls, "params": params,
                              "bytes": nbytes})
            _track(infos, mod, root_info)
            by_path[path] = root_info
            continue
        known = infos.get(id(mod))
        if known is not None and known.ref() is mod:
            if known.root is root_info:
                by_path[path] = known
                continue
            if not overwrite:
                continue  # first name wins
        parent = by_path.get(join(prefix, name.rpartition(".")[0]), root_info)
        params, nbytes = sizes(mod)
        info = ModInfo(path, type(mod).__name__, mod, parent, root_info, params, nbytes)
        _track(infos, mod, info)
        by_path[path] = info
        table.append({"path": path, "class": info.cls, "params": params, "bytes": nbytes})
    assert root_info is not None
    return root_info, table


def purge_dead(infos: dict[int, ModInfo]) -> None:
    """Forget modules that were garbage collected (their ids may be reused)."""
    for key in [k for k, v in infos.items() if v.ref() is None]:
        del infos[key]
