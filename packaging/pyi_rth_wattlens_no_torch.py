"""PyInstaller runtime hook: the standalone bundle leaves out PyTorch and transformers.

The GUI, `attach`, `run`, `sessions`, `show`, `report`, `advise` and `doctor` never need them;
`optimize` and the demo's workload do (the `advisor` extra of a pip install). Without this hook,
importing torch in the bundle raises a bare ModuleNotFoundError. Here the import fails with an
error that is both a ModuleNotFoundError (so code that probes for torch with
``try: import torch / except ImportError`` behaves exactly as if torch were absent) and a
MissingExtraError (so the CLI prints one line that says what to install and exits 2, as for a
pip install without the extra).

The finder is appended last to ``sys.meta_path``: it is asked only after every real finder has
failed to find the module, so it can never hide a module that is present.
"""

import sys

from wattlens.profiler.errors import MissingExtraError

# Only the two modules whose absence is the user's reason to install with pip; everything that
# needs other left-out modules (torchao, safetensors, ...) imports torch first.
_LEFT_OUT = ("torch", "transformers")


class NotInBundleError(MissingExtraError, ModuleNotFoundError):
    """A module the standalone bundle deliberately does not contain."""


class _LeftOutFinder:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in _LEFT_OUT:
            return None
        err = NotInBundleError(
            f"this needs {top}, which the standalone wattlens bundle leaves out to stay small",
            hint="install wattlens with pip and its advisor extra to optimize models or run the "
                 "demo workload: pip install 'wattlens[advisor]'")
        err.name = fullname
        raise err

    @staticmethod
    def invalidate_caches():
        pass


sys.meta_path.append(_LeftOutFinder())
