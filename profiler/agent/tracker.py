"""The torch side of the agent: global module hooks, step boundaries, windows of layer costs.

Forward: one global forward pre-hook and one forward hook (``always_call`` so a forward that
raises still pops its frame) keep a per-thread stack of module calls. On CPU a call costs two
``perf_counter_ns`` reads; inclusive time goes to the module, and to its caller's "children" sum
so self time = inclusive - children. On CUDA each call records a pair of ``torch.cuda.Event`` s
that are read when the window is a few steps old: never a synchronize per layer.

Backward (training only): global full backward hooks would wrap every module's inputs and outputs
and break modules whose outputs are later modified in place, so they are not used. Instead, while
the main model's forward runs, the hooks note the autograd sequence number at every module
entry/exit; each autograd node created in between belongs to the innermost module at its
creation. After the forward, the nodes of that graph get a pre/post hook that times them (CPU
clock, or CUDA events) and credits the owning module's backward self time. Backward inclusive
time is the sum over the module's subtree. This starts from the second training forward: the
first one only checks (with a single probe hook) that backward is used at all.

Steps, in order of precedence: ``agent.step()`` calls (once one is seen); else
``optimizer.step()`` of the first optimizer seen (training); else one step per forward of the
main model (inference), a step running from one forward's start to the next one's. Samples and
tokens come from the main forward's first tensor input (its batch dimension; tokens = batch x
sequence for integer token ids). Layer costs are grouped in windows of whole steps at least
``window_ns`` long and sent as one message per window.

Everything here runs inside the user's program: any exception is handed to ``fail`` (which logs
once and switches the agent off) and never propagates into the user's code.
"""

from __future__ import annotations

import bisect
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

from . import flops as _flops
from .naming import UNKNOWN_DEVICE, ModInfo, join, purge_dead, register_tree

TRAIN_FORWARDS_BEFORE_FALLBACK = 16  # training forwards with no optimizer step before we give up
MAX_PENDING_CUDA_WINDOWS = 8  # beyond this, wait for the oldest window's events (rare)
MAX_ANNOUNCED_ROOTS = 32

_monotonic_ns = time.monotonic_ns
_perf_ns = time.perf_counter_ns


class Tracker:
    def __init__(
        self,
        torch: Any,
        emit: Callable[[dict[str, Any]], None],
        fail: Callable[[BaseException], None],
        *,
        window_ns: int = 100_000_000,
        count_flops: str = "auto",
        on_boundary: Callable[[], None] | None = None,
        event_factory: Callable[[Any], Any] | None = None,
        stream_of: Callable[[Any], Any] | None = None,
        device_of: Callable[[Any], Any] | None = None,
        t_origin_ns: int | None = None,
        call_path: str = "wrap",
    ) -> None:
        if call_path not in ("wrap", "hooks"):
            raise ValueError(f"call_path must be 'wrap' or 'hooks', got {call_path!r}")
        self._call_path = call_path
        self.torch = torch
        self._emit = emit
        self._fail_cb = fail
        self._on_boundary = on_boundary
        self._window_ns = window_ns
        # "auto": count once torch._dynamo is loaded anyway (a dispatch mode's first op imports
        # it: ~1 s, not cheap); "force": count on the first forward regardless; "off".
        self._flops_policy = count_flops
        self._flops_pending = count_flops in ("auto", "force")
        self._flops_note_sent = False
        # CUDA timing: events are made per device (``event_factory(device)``), recorded on that
        # device's current stream (``stream_of(device)``; a model on cuda:1 without set_device is
        # timed on cuda:1, not on the current device) and pooled per device (torch refuses an
        # event recorded on another device's stream). ``device_of(module)``: the CUDA device of a
        # module's parameters, or None.
        self._event_factory = event_factory
        self._stream_of = stream_of if stream_of is not None else (lambda device: None)
        self._device_of = device_of if device_of is not None else _module_device
        self._t_origin = t_origin_ns if t_origin_ns is not None else _monotonic_ns()
        self._on = False
        self._handles: list[Any] = []
        self._tls = threading.local()
        self._is_compiling = _compiling_probe(torch)
        self._tracing = getattr(getattr(torch, "_C", None), "_get_tracing_state", None) or (
            lambda: None)
        self._dynamo_loaded = "torch._dynamo" in sys.modules
        self._seq = getattr(getattr(torch._C, "_autograd", None), "_get_sequence_nr", None)

        # naming
        self._infos: dict[int, ModInfo] = {}
        self._dynamic: dict[str, ModInfo] = {}
        self._rebuilt: dict[int, int] = {}
        self._prefixes: dict[str, int] = {}
        self._announced = 0
        self._main: ModInfo | None = None
        self._main_pinned = False

        # timing
        self._cuda = False
        self._timing = "perf-counter"
        self._pools: dict[Any, list[Any]] = {}  # device -> recorded-and-read events to reuse
        self._calls: list[Any] = []  # CUDA forward calls of the current window
        self._bw_events: list[Any] = []  # CUDA backward nodes of the current window
        self._pending_cuda: list[dict[str, Any]] = []
        self._unreadable_note_sent = False

        # the main forward in progress
        self._main_active = False
        self._need_shape = False
        self._fwd_training = False
        self._fwd_samples: int | None = None
        self._fwd_tokens: int | None = None
        self._fwd_shape: tuple[Any, ...] | None = None  # (torch.Size, torch.dtype) of the input
        self._id_dtypes: dict[Any, bool] = {}  # dtype -> its integers are token ids
        self._seg_on = False
        self._segs: list[tuple[int, ModInfo | None]] = []
        self._seg_lo = 0
        self._bw_seen = False
        self._bw_note_sent = False
        self._last_main_end: int | None = None
        self._raising = False  # a module's forward is unwinding an exception (its post-call runs)
        self._main_raised = False  # the main model's last forward ended by an exception
        self._first_main: int | None = None

        # optimizer steps, timed on CPU: the window's sums (its "optimizer" bucket). The step in
        # progress is per thread: self._tls.opt = (optimizer id, start or None when untimed).
        self._opt_ns = 0
        self._opt_calls = 0
        self._opt_handles: list[Any] = []  # the step hooks, apart: see uninstall
        self._in_opt_hook = 0  # > 0 while torch runs one of them

        # steps
        self._mode = "auto"  # auto | optimizer | explicit
        self._opt_ref: Any = None
        self._last_opt: int | None = None
        self._train_fwds_no_opt = 0
        self._train_fallback = False
        self._step_idx = 0
        self._step_open: int | None = None
        self._reset_step_totals()

        # windows
        self._win = 0
        self._win_start: int | None = None
        self._win_steps: list[dict[str, Any]] = []
        self._win_shapes: set = set()
        self._win_tainted: str | None = None
        self._touched: list[ModInfo] = []

        # FLOPs
        self._flop_mode: Any = None
        self._flop_self: dict[ModInfo, int] = {}
        self._flop_unsized = 0
        self._flop_shape: tuple[Any, ...] | None = None
        self._flops_blocker: str | None = None

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> None:
        mm = self.torch.nn.modules.module
        self._on = True
        # Frames left by calls that never came back through us (an uninstall during a forward)
        # would hide a thread's outermost call, where a torch.jit.trace is looked for.
        self._tls = threading.local()
        if self._call_path == "wrap":
            self._handles.append(_CallWrapper(mm.Module, self))
        else:
            self._handles.append(mm.register_module_forward_pre_hook(self._pre))
            try:
                self._handles.append(mm.register_module_forward_hook(self._post, always_call=True))
            except TypeError:  # an older torch without always_call
                self._handles.append(mm.register_module_forward_hook(self._post))
        try:
            optimizer_module = importlib.import_module("torch.optim.optimizer")
        except ImportError:
            optimizer_module = None
        for handle in self._opt_handles:  # left by an uninstall inside one of them
            handle.remove()
        self._opt_handles = []
        register_opt = getattr(optimizer_module, "register_optimizer_step_post_hook", None)
        if register_opt is not None:
            self._opt_handles.append(register_opt(self._opt_post))
            register_pre = getattr(optimizer_module, "register_optimizer_step_pre_hook", None)
            if register_pre is not None:
                self._opt_handles.append(register_pre(self._opt_pre))

    def uninstall(self) -> None:
        """Remove the agent's hooks. Called inside one of its optimizer hooks (a failure there),
        those stay, switched off: torch is iterating over their dicts, and removing one would
        raise in the user's ``step()``; the next install removes them."""
        self._on = False
        self._seg_on = False
        handles = self._handles if self._in_opt_hook else self._handles + self._opt_handles
        for handle in handles:
            try:
                handle.remove()
            except Exception:
                pass
        self._handles = []
        if not self._in_opt_hook:
            self._opt_handles = []
        self._exit_flop_mode()

    def _fail(self, exc: BaseException) -> None:
        self.uninstall()
        self._fail_cb(exc)

    # ------------------------------------------------------------------ the two hot hooks
    def _pre(self, module: Any, args: Any) -> None:
        if not self._on:
            return None
        if self._dynamo_loaded and self._is_compiling():
            return None  # being traced by torch.compile: stay out of its graph
        if not getattr(self._tls, "stack", None) and self._tracing() is not None:
            return None  # a torch.jit.trace from outside any module call: untimed, as the wrapper
        self._enter(module, args)
        return None

    def _enter(self, module: Any, args: Any) -> None:
        """The pre-hook's work, once the on/compiling checks passed (the wrapper makes them)."""
        try:
            try:
                stack = self._tls.stack
            except AttributeError:
                stack = self._tls.stack = []
            # Entries leave _infos when their module is collected (weakref callback), so an
            # id found here is this module.
            info = self._infos.get(id(module))
            if info is None:
                if not stack:
                    self._dynamo_loaded = "torch._dynamo" in sys.modules
                info = self._resolve(module, stack)
            if info is self._main and not self._main_active:
                self._main_start(module, args)
            elif self._need_shape:
                self._shape_from(args)
            if info.win != self._win:
                self._touch(info)
            if self._seg_on:
                self._segs.append((self._seq(), info))
            if self._cuda:
                calls = self._calls
                top = stack[-1] if stack else None
                parent_idx = top[4] if top is not None and top[5] is calls else -1
                dev = info.dev
                if dev is UNKNOWN_DEVICE:
                    dev = info.dev = self._device_of(module)
                    if dev is None and top is not None and len(top) > 6:
                        dev = info.dev = top[6]  # no parameters of its own: its parent's device
                ev = self._take_event(dev)
                stack.append([info, ev, parent_idx, module, len(calls), calls, dev])
                calls.append(None)
                ev.record(self._stream_of(dev))
            else:
                frame = [info, 0, 0, module]
                stack.append(frame)
                frame[1] = _perf_ns()
        except Exception as exc:
            self._fail(exc)
        return None

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self._exit(_perf_ns(), module, args, output)

    def _exit(self, t1: int, module: Any, args: Any, output: Any) -> None:
        """The post-hook's work with the call's end time ``t1`` already read."""
        if not self._on:
            return None
        try:
            try:
                stack = self._tls.stack
            except AttributeError:
                return None
            if not stack:
                return None
            frame = stack.pop()
            if frame[3] is not module:
                stack.append(frame)
                if not _unwind(stack, module):
                    return None  # a call whose pre-hook we skipped (compiling, switched on late)
                frame = stack.pop()
            info = frame[0]
            if info.win != self._win:
                self._touch(info)
            info.fw_calls += 1
            if self._cuda:
                dev = frame[6]
                ev1 = self._take_event(dev)
                ev1.record(self._stream_of(dev))
                frame[5][frame[4]] = (info, frame[1], ev1, frame[2], dev)
            else:
                incl = t1 - frame[1]
                info.fw_incl += incl
                info.fw_self += incl - frame[2]
                if stack:
                    stack[-1][2] += incl
            if self._seg_on:
                self._segs.append((self._seq(), stack[-1][0] if stack else None))
            if info is self._main and self._main_active:
                self._main_end(output)
        except Exception as exc:
            self._fail(exc)
        return None

    def _touch(self, info: ModInfo) -> None:
        info.win = self._win
        info.fw_incl = info.fw_self = info.fw_calls = info.bw_self = info.bw_calls = 0
        self._touched.append(info)

    # ------------------------------------------------------------------ naming
    def _resolve(self, module: Any, stack: list[Any]) -> ModInfo:
        """Name a module seen for the first time (or whose id was reused)."""
        if not stack:
            return self._add_root(module)
        parent: ModInfo = stack[-1][0]
        root = parent.root
        root_module = root.ref()
        if root_module is not None and self._rebuilt.get(id(root)) != self._step_idx:
            self._rebuilt[id(root)] = self._step_idx  # at most one re-scan per root and step
            purge_dead(self._infos)
            _, table = register_tree(root_module, root.path, self._infos, root_info=root)
            if table and (root is self._main or root.params):
                self._emit_modules(root, table)
            info = self._infos.get(id(module))
            if info is not None and info.ref() is module:
                return info
        # Not a registered submodule (made on the fly inside forward): name it by its caller.
        return self._dynamic_info(join(parent.path, "<" + type(module).__name__ + ">"),
                                  type(module).__name__, parent, root)

    def _dynamic_info(self, path: str, cls: str, parent: ModInfo | None,
                      root: ModInfo | None) -> ModInfo:
        info = self._dynamic.get(path)
        if info is None:
            info = ModInfo(path, cls, None, parent, root, None, None)
            self._dynamic[path] = info
        return info

    def _add_root(self, module: Any) -> ModInfo:
        has_params = next(iter(module.parameters()), None) is not None
        if self._main is None and has_params and not self._main_pinned:
            return self._set_main(module)
        cls = type(module).__name__
        if not has_params or self._announced >= MAX_ANNOUNCED_ROOTS:
            # parameter-free helpers (losses, activations) called at top level: one row per class
            return self._dynamic_info("@" + cls, cls, None, None)
        n = self._prefixes.get(cls, 0) + 1
        self._prefixes[cls] = n
        prefix = "@" + cls if n == 1 else f"@{cls}#{n}"
        root, table = register_tree(module, prefix, self._infos)
        self._announce(root, module, table, main=False)
        return root

    def _set_main(self, module: Any) -> ModInfo:
        root, table = register_tree(module, "", self._infos, overwrite=True)
        self._main = root
        self._choose_timing(module)
        self._announce(root, module, table, main=True)
        self._flops_blocker = _compiled_reason(module)
        return root

    def watch(self, model: Any) -> None:
        """Make ``model`` the main model (explicit API), even if another one was picked."""
        if self._main is not None and self._main.ref() is model:
            self._main_pinned = True
            return
        old = self._main.ref() if self._main is not None else None
        self._main = None
        self._main_pinned = True
        self._main_active = False
        if old is not None:
            cls = type(old).__name__
            n = self._prefixes.get(cls, 0) + 1
            self._prefixes[cls] = n
            prefix = "@" + cls if n == 1 else f"@{cls}#{n}"
            root, table = register_tree(old, prefix, self._infos, overwrite=True)
            self._announce(root, old, table, main=False)
        self._set_main(model)

    def _announce(self, root: ModInfo, module: Any, table: list[dict[str, Any]], main: bool) -> None:
        self._announced += 1
        device, dtype = _device_dtype(module)
        self._emit({
            "type": "model", "t_ns": _monotonic_ns(), "prefix": root.path, "class": root.cls,
            "main": main, "params": root.params or 0, "bytes": root.bytes or 0,
            "device": device, "dtype": dtype, "timing": self._timing if main else "perf-counter",
            "torch": str(self.torch.__version__), "source": _source_folder(module), "modules": table,
        })

    def _emit_modules(self, root: ModInfo, table: list[dict[str, Any]]) -> None:
        module = root.ref()
        if module is not None:
            self._announce(root, module, table, main=root is self._main)

    # ------------------------------------------------------------------ timing backends
    def _choose_timing(self, module: Any) -> None:
        device, _ = _device_dtype(module)
        use_cuda = self._event_factory is not None or (
            device is not None and device.startswith("cuda") and self.torch.cuda.is_available())
        if use_cuda and not self._cuda:
            if self._event_factory is None:
                cuda = self.torch.cuda
                self._event_factory = lambda device: cuda.Event(enable_timing=True)
                self._stream_of = lambda device: cuda.current_stream(device) if device is not None else None
            self._cuda = True
            self._timing = "cuda-events"
            self._calls = []

    def _take_event(self, device: Any) -> Any:
        pool = self._pools.get(device)
        if pool:
            return pool.pop()
        assert self._event_factory is not None
        return self._event_factory(device)

    # ------------------------------------------------------------------ the main forward
    def _main_start(self, module: Any, args: Any) -> None:
        t = _monotonic_ns()
        torch = self.torch
        training = bool(module.training) and torch.is_grad_enabled()
        self._main_active = True
        self._fwd_training = training
        self._fwd_samples = self._fwd_tokens = None
        self._fwd_shape = None
        self._need_shape = True
        self._shape_from(args)
        self._steps_on_forward(t, training)
        if self._first_main is None:
            self._first_main = t
        if training and self._bw_seen:
            if self._seq is None:
                if not self._bw_note_sent:
                    self._bw_note_sent = True
                    self._event("backward-unattributed",
                                "this torch has no autograd sequence numbers; backward time is "
                                "reported under 'outside modules'")
            else:
                self._segs = []
                self._seg_lo = self._seq()
                self._seg_on = True
        self._dynamo_loaded = "torch._dynamo" in sys.modules
        if self._flops_pending:
            if self._flops_policy == "force" or self._dynamo_loaded:
                self._start_flops(module)
            elif not self._flops_note_sent:
                self._flops_note_sent = True
                self._event("flops-deferred", "FLOPs not counted yet: counting needs "
                            "torch._dynamo, which this program has not loaded (loading it costs "
                            "about a second); they are counted if the program loads it, or set "
                            "WATTLENS_AGENT_FLOPS=force", {"reason": "torch._dynamo not loaded"})

    def _main_end(self, output: Any) -> None:
        self._main_raised = self._raising  # then the step it is in did not do its work
        self._main_active = False
        self._need_shape = False
        self._last_main_end = _monotonic_ns()
        samples, tokens = self._fwd_samples, self._fwd_tokens
        if self._fwd_training:
            self._n_train += 1
            if samples is None:
                self._train_s_ok = False
            else:
                self._train_s += samples
            if tokens is None:
                self._train_t_ok = False
            else:
                self._train_t += tokens
        self._n_all += 1
        if samples is None:
            self._all_s_ok = False
        else:
            self._all_s += samples
        if tokens is None:
            self._all_t_ok = False
        else:
            self._all_t += tokens
        self._win_shapes.add(self._fwd_shape)
        if self._flop_mode is not None:
            self._finish_flops()
        if self._seg_on:
            self._seg_on = False
            self._hook_graph(output)
        elif self._fwd_training and not self._bw_seen:
            roots: list[Any] = []
            _grad_fns(output, roots, self.torch.Tensor, 0)
            if roots:
                roots[0].register_prehook(self._probe)

    def _probe(self, grad_outputs: Any) -> None:
        self._bw_seen = True
        return None

    def _shape_from(self, args: Any) -> None:
        tensor_type = self.torch.Tensor
        for a in args:
            if isinstance(a, tensor_type):
                self._need_shape = False
                shape = a.shape  # torch.Size: a tuple of ints, hashable
                dtype = a.dtype
                self._fwd_shape = (shape, dtype)
                if shape:  # int(): under torch.jit.trace the sizes are tensors
                    self._fwd_samples = int(shape[0])
                    if len(shape) >= 2:
                        ids = self._id_dtypes.get(dtype)
                        if ids is None:  # token ids: integers (not float, complex or bool)
                            ids = self._id_dtypes[dtype] = not (
                                dtype.is_floating_point or dtype.is_complex
                                or dtype == self.torch.bool)
                        if ids:
                            self._fwd_tokens = int(shape[0]) * int(shape[1])
                return

    # ------------------------------------------------------------------ backward attribution
    def _hook_graph(self, output: Any) -> None:
        segs = self._segs
        self._segs = []
        if not segs:
            return
        lo = self._seg_lo
        hi = self._seq()
        keys = [s for s, _ in segs]
        owners = [o for _, o in segs]
        todo: list[Any] = []
        _grad_fns(output, todo, self.torch.Tensor, 0)
        if self._cuda:
            pre, post = self._bw_pre_cuda, self._bw_post_cuda
        else:
            pre, post = self._bw_pre_cpu, self._bw_post_cpu
        seen = set()
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            try:
                seq = node._sequence_nr()
            except Exception:
                continue
            if seq < lo or seq >= hi:
                continue  # made before this forward, or an AccumulateGrad leaf
            owner = owners[bisect.bisect_right(keys, seq) - 1]
            if owner is not None:
                cell: list[Any] = [0, owner, None]  # start (time or event), owner, CUDA device
                node.register_prehook(partial(pre, cell))
                node.register_hook(partial(post, cell, owner))
            for nxt, _ in node.next_functions:
                if nxt is not None and nxt not in seen:
                    todo.append(nxt)

    def _bw_pre_cpu(self, cell: list[Any], grad_outputs: Any) -> None:
        cell[0] = _perf_ns()
        return None

    def _bw_post_cpu(self, cell: list[Any], info: ModInfo, grad_inputs: Any, grad_outputs: Any) -> None:
        dt = _perf_ns() - cell[0]
        if not self._on:
            return None
        try:
            if info.win != self._win:
                self._touch(info)
            info.bw_self += dt
            info.bw_calls += 1
        except Exception as exc:
            self._fail(exc)
        return None

    def _bw_pre_cuda(self, cell: list[Any], grad_outputs: Any) -> None:
        if not self._on:
            return None
        try:
            dev = cell[1].dev
            dev = None if dev is UNKNOWN_DEVICE else dev
            ev = self._take_event(dev)
            ev.record(self._stream_of(dev))
            cell[0] = ev
            cell[2] = dev
        except Exception as exc:
            self._fail(exc)
        return None

    def _bw_post_cuda(self, cell: list[Any], info: ModInfo, grad_inputs: Any, grad_outputs: Any) -> None:
        if not self._on or not cell[0]:
            return None
        try:
            dev = cell[2]
            ev = self._take_event(dev)
            ev.record(self._stream_of(dev))
            self._bw_events.append((info, cell[0], ev, dev))
        except Exception as exc:
            self._fail(exc)
        return None

    # ------------------------------------------------------------------ FLOPs
    def _start_flops(self, module: Any) -> None:
        self._flops_pending = False
        reason = self._flops_blocker
        mode = None
        if reason is None:
            mode, reason = _flops.make_mode(self._on_flops)
        if mode is None:
            self._event("flops-unavailable", f"FLOPs not counted: {reason}", {"reason": reason})
            return
        self._flop_self = {}
        self._flop_unsized = 0
        self._flop_shape = self._fwd_shape
        mode.__enter__()
        self._flop_mode = mode
        self._win_tainted = "its forward ran under FLOP counting, which slows it down"

    def _on_flops(self, n: int | None) -> None:
        stack = self._tls.__dict__.get("stack")
        info = stack[-1][0] if stack else self._main
        if n is None:
            self._flop_unsized += 1
        elif info is not None:
            self._flop_self[info] = self._flop_self.get(info, 0) + n

    def _exit_flop_mode(self) -> None:
        mode = self._flop_mode
        self._flop_mode = None
        if mode is not None:
            try:
                mode.__exit__(None, None, None)
            except Exception:
                pass

    def _finish_flops(self) -> None:
        self._exit_flop_mode()
        if self._flop_shape is None:
            self._flop_shape = self._fwd_shape
        incl: dict[ModInfo, int] = {}
        for info, n in self._flop_self.items():
            node: ModInfo | None = info
            while node is not None:
                incl[node] = incl.get(node, 0) + n
                node = node.parent
        main = self._main
        for info in self._touched:
            if info.root is main and info.fw_calls:
                info.flops_pc = incl.get(info, 0) // info.fw_calls
        total = incl.get(main, 0) if main is not None else 0
        msg = (f"forward FLOPs counted once (matmul/conv/attention ops known to "
               f"torch.utils.flop_counter): {total} per forward of the main model")
        if self._flop_unsized:
            msg += f"; {self._flop_unsized} ops could not be sized and are not included"
        self._event("flops", msg, {"flops_per_forward": total, "unsized_ops": self._flop_unsized,
                                   "input_shape": [int(d) for d in self._flop_shape[0]] if self._flop_shape else None})

    # ------------------------------------------------------------------ steps
    def _reset_step_totals(self) -> None:
        self._n_train = self._n_all = 0
        self._train_s = self._train_t = self._all_s = self._all_t = 0
        self._train_s_ok = self._train_t_ok = self._all_s_ok = self._all_t_ok = True

    def _steps_on_forward(self, t: int, training: bool) -> None:
        mode = self._mode
        if mode == "auto":
            if not training:
                self._boundary(t)
                return
            self._train_fwds_no_opt += 1
            if self._step_open is None:
                self._open(t)
            elif self._train_fallback:
                self._boundary(t)
            elif self._train_fwds_no_opt > TRAIN_FORWARDS_BEFORE_FALLBACK:
                self._train_fallback = True
                self._event("steps-by-forward",
                            f"{TRAIN_FORWARDS_BEFORE_FALLBACK} training forwards and no "
                            "optimizer.step(): counting one forward of the model per step "
                            "(call wattlens agent.step() to mark steps yourself)")
                self._boundary(t)
        elif self._step_open is None:
            self._open(t)

    def _opt_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Note the start of ``optimizer.step()`` (per thread), timed unless it cannot be told
        apart from the model's own time: a step given a closure (LBFGS) runs forwards and
        backwards inside it, and on CUDA the step's kernels run after it returns (those stay in
        "outside modules"). A step inside another step (a wrapper optimizer, or a subclass's
        step calling ``super().step()``: torch hooks both) is part of the outer one."""
        if not self._on:
            return None
        self._in_opt_hook += 1
        try:
            if _inner_step(sys._getframe(1)):
                return None
            # torch passes step()'s own arguments: (optimizer, closure?) and its keywords
            closure = args[1] if len(args) > 1 else kwargs.get("closure")
            timed = closure is None and not self._cuda
            # replaces what a step that raised left (its post-hook never came)
            self._tls.opt = (id(optimizer), _perf_ns() if timed else None)
        except Exception as exc:
            self._fail(exc)
        finally:
            self._in_opt_hook -= 1
        return None

    def _opt_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._on:
            return None
        self._in_opt_hook += 1
        try:
            if _inner_step(sys._getframe(1)):
                return None  # a step inside another: neither timed nor a step of its own
            running = self._tls.__dict__.pop("opt", None)
            if running is not None and running[0] == id(optimizer) and running[1] is not None:
                self._opt_ns += _perf_ns() - running[1]  # before the boundary: this window's
                self._opt_calls += 1
            t = _monotonic_ns()
            self._last_opt = t
            if self._mode == "explicit":
                return None
            current = self._opt_ref() if self._opt_ref is not None else None
            if current is None:
                import weakref

                self._opt_ref = weakref.ref(optimizer)
            elif current is not optimizer:
                return None  # a second optimizer (GAN, param groups): the first one marks steps
            self._mode = "optimizer"
            self._boundary(t)
        except Exception as exc:
            self._fail(exc)
        finally:
            self._in_opt_hook -= 1
        return None

    def explicit_step(self, samples: int | None, tokens: int | None) -> None:
        t = _monotonic_ns()
        self._mode = "explicit"
        if self._step_open is None:
            self._open(self._first_main if self._first_main is not None else self._t_origin)
        self._boundary(t, samples, tokens)

    def _open(self, t: int) -> None:
        self._step_open = t
        self._reset_step_totals()
        if self._win_start is None:
            self._win_start = t
            self._win += 1  # lazily resets every module's accumulators
            self._touched = []
            self._opt_ns = self._opt_calls = 0
            self._win_steps = []
            self._win_shapes = set()
            if self._cuda:
                self._calls = []
                self._bw_events = []

    def _boundary(self, t: int, samples: int | None = None, tokens: int | None = None) -> None:
        if self._step_open is not None:
            self._close_step(t, samples, tokens)
        self._open(t)
        if self._on_boundary is not None:
            self._on_boundary()

    def _close_step(self, t_end: int, samples: int | None, tokens: int | None,
                    force_window: bool = False) -> None:
        assert self._step_open is not None
        if self._n_train:
            s = self._train_s if self._train_s_ok else None
            tk = self._train_t if self._train_t_ok else None
        elif self._n_all:
            s = self._all_s if self._all_s_ok else None
            tk = self._all_t if self._all_t_ok else None
        else:
            s = tk = None
        self._win_steps.append({
            "step": self._step_idx, "t_start_ns": self._step_open, "t_end_ns": max(t_end, self._step_open),
            "samples": samples if samples is not None else s,
            "tokens": tokens if tokens is not None else tk,
        })
        self._step_idx += 1
        self._step_open = None
        if self._cuda:
            self._poll_cuda()
        assert self._win_start is not None
        if force_window or self._win_tainted or t_end - self._win_start >= self._window_ns:
            self._close_window(t_end)

    # ------------------------------------------------------------------ windows
    def _close_window(self, t_end: int) -> None:
        steps = self._win_steps
        t_start = self._win_start
        self._win_start = None
        self._win_steps = []
        tainted = self._win_tainted
        self._win_tainted = None
        if not steps or t_start is None:
            return
        self._emit({"type": "steps", "steps": steps})
        flops_ok = self._flop_shape is not None and self._win_shapes == {self._flop_shape}
        window = {"t_start_ns": t_start, "t_end_ns": max(t_end, t_start),
                  "first_step": steps[0]["step"], "last_step": steps[-1]["step"]}
        if tainted:
            self._event("layers-skipped",
                        f"layer times of steps {window['first_step']}-{window['last_step']} are "
                        f"not reported: {tainted}", dict(window))
            if self._cuda:
                self._recycle(self._calls, self._bw_events)
            return
        if self._cuda:
            self._pending_cuda.append(dict(window, calls=self._calls, bw=self._bw_events,
                                           flops_ok=flops_ok))
            self._calls = []
            self._bw_events = []
            self._poll_cuda()
            return
        if self._opt_calls:
            window["optimizer_ns"] = self._opt_ns
            window["optimizer_calls"] = self._opt_calls
        fw: dict[ModInfo, list[int]] = {}
        bw: dict[ModInfo, list[int]] = {}
        for info in self._touched:
            if info.win != self._win:
                continue
            if info.fw_calls:
                fw[info] = [info.fw_incl, max(0, info.fw_self), info.fw_calls]
            if info.bw_calls:
                bw[info] = [info.bw_self, info.bw_calls]
        self._emit_layers(window, fw, bw, flops_ok)

    def _emit_layers(self, window: dict[str, Any], fw: dict[ModInfo, list[int]],
                     bw: dict[ModInfo, list[int]], flops_ok: bool) -> None:
        rows: list[dict[str, Any]] = []
        for info, (incl, self_ns, calls) in fw.items():
            fpc = info.flops_pc if flops_ok else None
            rows.append({"path": info.path, "phase": "forward", "time_ns": incl,
                         "self_time_ns": min(self_ns, incl), "calls": calls,
                         "flops": fpc * calls if fpc is not None else None,
                         "params": info.params})
        bw_incl: dict[ModInfo, int] = {}
        for info, (self_ns, _) in bw.items():
            node: ModInfo | None = info
            while node is not None:
                bw_incl[node] = bw_incl.get(node, 0) + self_ns
                node = node.parent
        for info, incl in bw_incl.items():
            self_ns, calls = bw.get(info, (0, 0))
            rows.append({"path": info.path, "phase": "backward", "time_ns": incl,
                         "self_time_ns": self_ns, "calls": calls, "flops": None,
                         "params": info.params})
        if rows:
            self._emit(dict(window, type="layers", timing=self._timing, rows=rows))

    def _poll_cuda(self, wait: bool = False) -> None:
        """Emit CUDA windows whose events have completed, oldest first."""
        pending = self._pending_cuda
        while pending:
            w = pending[0]
            last = _last_event(w)
            if last is not None and not last.query():
                if wait or len(pending) > MAX_PENDING_CUDA_WINDOWS:
                    last.synchronize()  # one wait per window, never per layer
                else:
                    return
            if not all(e.query() for e in _all_events(w)):
                if wait:
                    for e in _all_events(w):
                        e.synchronize()
                else:
                    return
            pending.pop(0)
            self._emit_cuda_window(w)

    def _emit_cuda_window(self, w: dict[str, Any]) -> None:
        calls = w["calls"]
        incl = [0] * len(calls)
        child = [0] * len(calls)
        unreadable = 0
        for i, c in enumerate(calls):
            if c is not None:
                ns = _elapsed_ns(c[1], c[2])
                if ns is None:  # e.g. a call that started on one GPU and ended on another
                    unreadable += 1
                    calls[i] = c = None
                else:
                    incl[i] = ns
        for i, c in enumerate(calls):
            if c is not None and c[3] >= 0 and calls[c[3]] is not None:
                child[c[3]] += incl[i]
        fw: dict[ModInfo, list[int]] = {}
        for i, c in enumerate(calls):
            if c is None:
                continue
            acc = fw.setdefault(c[0], [0, 0, 0])
            acc[0] += incl[i]
            acc[1] += max(0, incl[i] - child[i])
            acc[2] += 1
        bw: dict[ModInfo, list[int]] = {}
        for info, e0, e1, _dev in w["bw"]:
            ns = _elapsed_ns(e0, e1)
            if ns is None:
                unreadable += 1
                continue
            acc = bw.setdefault(info, [0, 0])
            acc[0] += ns
            acc[1] += 1
        if unreadable and not self._unreadable_note_sent:
            self._unreadable_note_sent = True
            self._event("cuda-timing-partial", f"{unreadable} module calls or autograd nodes could "
                        "not be timed with CUDA events (started and ended on different devices?) "
                        "and are left out", {"count": unreadable})
        window = {k: w[k] for k in ("t_start_ns", "t_end_ns", "first_step", "last_step")}
        self._emit_layers(window, fw, bw, w["flops_ok"])
        self._recycle([c for c in w["calls"] if c is not None], w["bw"])

    def _recycle(self, calls: list[Any], bw: list[Any]) -> None:
        pools = self._pools
        for c in calls:
            if c is not None:
                pools.setdefault(c[4], []).extend((c[1], c[2]))
        for _, e0, e1, dev in bw:
            pools.setdefault(dev, []).extend((e0, e1))

    # ------------------------------------------------------------------ end of run
    def finish(self, drop_open: bool = False) -> bool:
        """Close the last step and window and flush everything (at exit). ``drop_open``: the
        program is ending by an exception, so a step still open that had not done its work was cut
        short and is not counted. Returns whether a step was dropped so."""
        dropped = False
        self._exit_flop_mode()
        self._seg_on = False
        if self._flops_pending and self._flops_note_sent:
            self._event("flops-unavailable", "FLOPs not counted: the program never loaded "
                        "torch._dynamo (set WATTLENS_AGENT_FLOPS=force to count them anyway)",
                        {"reason": "torch._dynamo not loaded"})
        if self._step_open is not None and drop_open and self._n_all and not self._open_step_finished():
            self._step_open, dropped = None, True
        if self._step_open is not None:
            if self._n_all:
                end = max(x for x in (self._last_main_end, self._last_opt, self._step_open)
                          if x is not None)
                self._close_step(end, None, None, force_window=True)
            else:
                self._step_open = None
        if self._win_start is not None and self._win_steps:
            self._close_window(self._win_steps[-1]["t_end_ns"])
        self._win_start = None
        if self._cuda:
            self._poll_cuda(wait=True)
        return dropped

    def _post_raised(self, module: Any, args: Any) -> None:
        """A module's forward raised: its post-call still runs (stack, times), marked as such."""
        self._raising = True
        try:
            self._post(module, args, None)
        finally:
            self._raising = False

    def _open_step_finished(self) -> bool:
        """Whether the open step did its work before the program ended. Steps marked by
        optimizer.step() or agent.step(): never (that mark would have closed it). Steps marked by
        the model's forward: when that forward returned (not raised) and was no training forward
        (whose backward and optimizer step may not have run)."""
        if self._mode != "auto" or self._main_raised:
            return False
        if self._n_train:  # a training forward: its backward and optimizer step may not have run
            return False
        return self._last_main_end is not None and self._last_main_end >= self._step_open

    @property
    def steps_done(self) -> int:
        return self._step_idx

    def _event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._emit({"type": "event", "t_ns": _monotonic_ns(), "kind": kind, "message": message,
                    "data": data or {}})


# ---------------------------------------------------------------------- helpers
def _unwind(stack: list[Any], module: Any) -> bool:
    """Drop frames above ``module``'s frame (calls whose post-hook never ran)."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][3] is module:
            del stack[i + 1:]
            return True
    return False


def _inner_step(wrapper: Any) -> bool:
    """Is this optimizer step (``wrapper``: the frame of torch's step wrapper calling our hook)
    running inside another one on this thread? torch wraps every optimizer class's ``step`` with
    the same function, so an outer step is a caller frame with the same code."""
    code = wrapper.f_code
    f = wrapper.f_back
    while f is not None:
        if f.f_code is code:
            return True
        f = f.f_back
    return False


def _grad_fns(obj: Any, out: list[Any], tensor_type: Any, depth: int) -> None:
    """Collect the autograd nodes of the tensors in a forward's output (tuples, dicts, HF outputs)."""
    if depth > 3:
        return
    if isinstance(obj, tensor_type):
        fn = obj.grad_fn
        if fn is not None:
            out.append(fn)
    elif isinstance(obj, (list, tuple)):
        for x in obj[:64]:
            _grad_fns(x, out, tensor_type, depth + 1)
    elif isinstance(obj, dict):
        for x in list(obj.values())[:64]:
            _grad_fns(x, out, tensor_type, depth + 1)


def _module_device(module: Any) -> Any:
    """The CUDA device (torch.device) of the module's first parameter or buffer, else None."""
    for t in module.parameters():
        return t.device if t.device.type == "cuda" else None
    for t in module.buffers():
        return t.device if t.device.type == "cuda" else None
    return None


def _device_dtype(module: Any) -> tuple[str | None, str | None]:
    for p in module.parameters():
        return str(p.device), str(p.dtype)
    return None, None


def _source_folder(module: Any) -> str | None:
    """The local folder a Hugging Face model was loaded from (``from_pretrained(folder)`` keeps it
    as ``config._name_or_path``), absolute; None for a hub name, a config-built model or no
    transformers model. What the advisor's ``wattlens optimize`` command then names."""
    for _ in range(4):  # a wrapper's model: DistributedDataParallel / DataParallel .module, compile's ._orig_mod
        if hasattr(module, "config"):
            break
        module = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
    path = getattr(getattr(module, "config", None), "_name_or_path", None)
    if not isinstance(path, str) or not path:
        return None
    try:
        return os.path.abspath(path) if os.path.isdir(path) else None
    except (OSError, ValueError):
        return None


def _compiled_reason(module: Any) -> str | None:
    for m in module.modules():
        if type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None:
            return ("the model is compiled with torch.compile; FLOPs are not counted so its "
                    "compiled code runs exactly as it would without wattlens")
    return None


class _CallWrapper:
    """Times module calls by wrapping ``nn.Module.__call__`` instead of global hooks.

    Why: any global forward hook sends *every* module call through torch's slow ``_call_impl``
    path (hook dicts gathered, always-called bookkeeping): ~9 us per call on the benchmark
    machine, more than the agent's own work, and the floor that made a tiny model 20 % slower.
    With the wrapper, torch keeps its no-hook fast path and the agent adds one Python frame around
    it. The hook contract is kept: ``_pre(module, args)`` before, ``_post(module, args, output)``
    after, also when the forward raises (``output`` None). Removing it restores the original
    ``__call__`` (only if nobody replaced ours since, so we never undo someone else's patch).
    While torch.compile traces, the wrapper calls straight through (as the hooks do).

    Nearly every call (CPU timing, a module already named, not the main model) takes an inline
    fast path that does _enter/_exit's work without calling them, a module's first call in a
    window included (its accumulators are reset inline, as _touch does): the method calls and
    their per-call lookups were most of what is left of the floor on a tiny model. The same two clock reads per call, so per-instance times are exactly the hook path's.

    On that fast path, a module without hooks of its own or global ones, not compiled, outside a
    ``torch.jit.trace``, whose class keeps torch's call machinery, has its ``forward`` called by
    the wrapper itself: the checks torch's ``_call_impl`` makes, without its two frames
    (``_direct_forward_probes``). That made the wrapper cheaper than the machinery it skips on a
    compute-free chain (about 0.8 vs 1.3-1.4 us added per call) and cut the tiny GPT-2's floor by
    1.4 to 3.1 pp (benchmarks/results/agent_floor.md). Anything else goes through the original
    ``__call__``, so hooks, ``Module.compile()`` and tracing behave exactly as without wattlens.

    Two of those checks are cheaper than torch's own, with the same answers. The module's hook
    dicts and ``_compiled_call_impl`` are read from its ``__dict__`` (on Python 3.11 every
    ``module.<name>`` takes the slow attribute path, as nn.Module defines ``__getattr__``). And
    ``torch._C._get_tracing_state()`` (a pybind11 call, ~0.5 us) is asked only at a thread's
    outermost module call: a ``torch.jit.trace`` (or ONNX export) started there runs wholly on
    torch's path, untimed. Together about 20-30 us per forward of the tiny GPT-2 (its 31 calls).
    A trace started *inside* a module's forward is told per call, cheaply, by
    ``torch.jit._trace._trace_module_map`` (a module attribute): it is set while a module is
    traced, and only then does torch's ``_slow_forward`` differ from ``forward`` (it records the
    module's scope). That map is global, so another thread's trace sends this thread's calls
    through torch's path meanwhile: slower, the same result.
    """

    def __init__(self, module_cls: Any, tracker: Tracker) -> None:
        self._cls = module_cls
        self._orig = orig = module_cls.__call__
        pre, post, exit_ = tracker._enter, tracker._post, tracker._exit
        post_raised = tracker._post_raised
        infos_get = tracker._infos.get
        tls = tracker._tls
        perf_ns = _perf_ns
        tracing = tracker._tracing
        call_impl, wrapped, trace_mod, (g_fpre, g_fpost, g_bpre, g_bpost) = (
            _direct_forward_probes(tracker.torch, module_cls, orig))

        # The first parameter must be named ``self``: torch.profiler's stack recorder
        # (with_stack=True) takes any frame of nn.Module.__call__ for torch's own and reads its
        # local ``self``; under another name it crashed the profiled program (a segfault).
        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not tracker._on or (tracker._dynamo_loaded and tracker._is_compiling()):
                return orig(self, *args, **kwargs)  # off, or torch.compile is tracing
            stack = getattr(tls, "stack", None)
            if not stack and tracing() is not None:
                # a torch.jit.trace (or ONNX export) starts outside any module call: torch's own
                # path, untimed, and every call inside it comes here too (nothing was pushed)
                return orig(self, *args, **kwargs)
            # The fast path, nearly every call: CPU timing, a module already named (its first
            # call in a window resets its accumulators here), not the main model, no forward
            # segments or input shape to note. It does exactly what _enter/_exit do in that case,
            # inline: no method calls, no per-call lookups beyond the module's info. Anything
            # else, at entry or at exit, takes the general path.
            if stack is not None and not (tracker._cuda or tracker._seg_on or tracker._need_shape):
                info = infos_get(id(self))
                if info is not None and info is not tracker._main:
                    if info.win != tracker._win:
                        # its first call in this window: what _touch does, inline (the general
                        # path for it cost every module a round trip per window)
                        info.win = tracker._win
                        info.fw_incl = info.fw_self = info.fw_calls = 0
                        info.bw_self = info.bw_calls = 0
                        tracker._touched.append(info)
                    frame = [info, 0, 0, self]
                    stack.append(frame)
                    frame[1] = t0 = perf_ns()
                    try:
                        # torch's own no-hook path, without its two frames (and their re-packing
                        # of the keyword arguments): the same checks, then forward. The module's
                        # attributes are read from its __dict__: nn.Module defines __getattr__,
                        # so each ``self.<name>`` takes Python's slowest attribute path.
                        d = self.__dict__
                        cls = type(self)  # per call, as torch looks _call_impl up per call
                        try:
                            hooked = (d["_forward_pre_hooks"] or d["_forward_hooks"]
                                      or d["_backward_pre_hooks"] or d["_backward_hooks"])
                        except KeyError:  # not a Module torch set up: torch's path says why
                            hooked = True
                        if (not hooked and not (g_fpre or g_fpost or g_bpre or g_bpost)
                                and trace_mod._trace_module_map is None
                                and cls._call_impl is call_impl and cls._wrapped_call_impl is wrapped
                                and d.get("_compiled_call_impl", cls._compiled_call_impl) is None):
                            out = self.forward(*args, **kwargs)
                        else:
                            out = orig(self, *args, **kwargs)
                    except BaseException:
                        post_raised(self, args)
                        raise
                    t1 = perf_ns()
                    if (stack and stack[-1] is frame and info.win == tracker._win
                            and tracker._on and not tracker._seg_on):
                        stack.pop()
                        incl = t1 - t0
                        info.fw_calls += 1
                        info.fw_incl += incl
                        info.fw_self += incl - frame[2]
                        if stack:
                            stack[-1][2] += incl
                    else:
                        exit_(t1, self, args, out)
                    return out
            pre(self, args)
            try:
                out = orig(self, *args, **kwargs)
            except BaseException:
                post_raised(self, args)
                raise
            post(self, args, out)
            return out

        self._wrapper = __call__
        module_cls.__call__ = __call__

    def remove(self) -> None:
        if self._cls.__dict__.get("__call__") is self._wrapper:
            self._cls.__call__ = self._orig


def _direct_forward_probes(torch: Any, module_cls: Any, orig: Any
                           ) -> tuple[Any, Any, Any, tuple[dict, ...]]:
    """What the wrapper needs to take torch's no-hook path itself: ``module.forward(...)``.

    torch's ``Module.__call__`` (``_wrapped_call_impl``) calls ``_call_impl``, which calls
    ``forward`` directly when the module is not compiled (``_compiled_call_impl``), no hook of
    the module's own or global one is registered, and no ``torch.jit.trace`` is running. Doing the
    same checks and calling ``forward`` saves two Python frames and two re-packings of the call's
    keyword arguments per module call: more than the agent's own timing costs inside a model.

    Returns (torch's ``_call_impl`` and ``_wrapped_call_impl``: a module's class must still have
    both, looked up at each call as torch does, or the call goes through them;
    ``torch.jit._trace``, whose ``_trace_module_map`` is set while a module is being traced (the
    only case in which torch's ``_slow_forward`` does more than call ``forward``: it records the
    module's scope name); torch's four global forward/backward hook dicts, which torch changes in
    place and never rebinds). Whether a trace runs at all is the tracker's ``_tracing()``, asked
    at a thread's outermost call. Where any of this cannot be found (another torch), or the
    ``__call__`` being wrapped is not torch's own (somebody else's patch), the first two are
    sentinels no class has and every call goes through the original ``__call__``.
    """
    mm = sys.modules.get(module_cls.__module__)
    wrapped = getattr(module_cls, "_wrapped_call_impl", None)
    call_impl = getattr(module_cls, "_call_impl", None)
    dicts = [getattr(mm, name, None) for name in (
        "_global_forward_pre_hooks", "_global_forward_hooks",
        "_global_backward_pre_hooks", "_global_backward_hooks")]
    trace_mod = sys.modules.get("torch.jit._trace")
    if (wrapped is None or orig is not wrapped or call_impl is None
            or not hasattr(trace_mod, "_trace_module_map")
            or not all(isinstance(d, dict) for d in dicts)):
        # a stand-in trace module whose map is always set: torch's own path, as the sentinels
        return object(), object(), SimpleNamespace(_trace_module_map={}), ({}, {}, {}, {})
    return call_impl, wrapped, trace_mod, tuple(dicts)


def _compiling_probe(torch: Any) -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)
    probe = getattr(compiler, "is_compiling", None)
    return probe if probe is not None else (lambda: False)


def _elapsed_ns(start: Any, end: Any) -> int | None:
    try:
        return int(start.elapsed_time(end) * 1e6)  # CUDA reports milliseconds
    except Exception:
        return None


def _last_event(w: dict[str, Any]) -> Any:
    for c in reversed(w["calls"]):
        if c is not None:
            last = c[2]
            break
    else:
        last = None
    if w["bw"]:
        return w["bw"][-1][2]
    return last


def _all_events(w: dict[str, Any]) -> list[Any]:
    evs = []
    for c in w["calls"]:
        if c is not None:
            evs.append(c[1])
            evs.append(c[2])
    for _, e0, e1, _dev in w["bw"]:
        evs.append(e0)
        evs.append(e1)
    return evs
