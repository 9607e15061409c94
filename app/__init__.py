"""wattlens.app: the CLI, the Qt GUI and reports. Importing this package imports nothing heavy."""

from wattlens.app._version import __version__

__all__ = ["__version__"]
