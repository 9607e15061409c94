"""The wattlens version: the one place it is written (pyproject.toml reads it from here).

Plain source, no importlib.metadata: it holds in an editable install, a wheel and the PyInstaller
bundle alike, and `wattlens --version` imports nothing else.
"""

__version__ = "0.1.0"
