"""Run a callback right after a module (``torch``) finishes importing, without importing it ourselves.

A finder on ``sys.meta_path`` answers only for the one name it watches (``torch``; the runtime
also watches ``multiprocessing.process``): it asks the other finders for the real spec and wraps
its loader so that, once the real ``exec_module`` returns (the module fully initialised), the
callback runs. The wrapper then puts the real loader back on the module's
``__spec__``/``__loader__`` and the finder removes itself, so nothing of it stays in the user's
process. A script that never imports the module never pays for it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any


class _LoaderProxy:
    def __init__(self, loader: Any, on_loaded: Callable[[Any], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        # torch is now complete: hand the real loader back before anyone else looks.
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._on_loaded(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class ImportWatcher:
    """A meta-path finder that fires ``on_loaded(module)`` once, after ``import <name>``.
    ``ready``: an attribute the module has once initialised (when it was imported before)."""

    def __init__(self, on_loaded: Callable[[Any], None], name: str = "torch", ready: str = "nn") -> None:
        self._on_loaded = on_loaded
        self.name, self.ready = name, ready
        self._lock = threading.RLock()
        self._busy = False
        self._fired = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._busy or self._fired:
            return None
        with self._lock:
            self._busy = True
            try:
                spec = None
                for finder in list(sys.meta_path):
                    if finder is self:
                        continue
                    find = getattr(finder, "find_spec", None)
                    if find is None:
                        continue
                    spec = find(fullname, path, target)
                    if spec is not None:
                        break
            finally:
                self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _LoaderProxy(spec.loader, self._fire)
        return spec

    def _fire(self, module: Any) -> None:
        if self._fired:
            return
        self._fired = True
        self.remove()
        try:
            self._on_loaded(module)
        except Exception as exc:  # never let the agent break the user's `import torch`
            sys.stderr.write(f"wattlens agent: could not hook into {self.name} ({exc}); profiling "
                             "is off\n")

    def install(self) -> None:
        module = sys.modules.get(self.name)
        if module is not None and (not self.ready or hasattr(module, self.ready)):
            self._fire(module)
            return
        sys.meta_path.insert(0, self)

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


TorchImportWatcher = ImportWatcher  # its default name is ``torch``
