"""Entry script of the PyInstaller bundle: the same function as the `wattlens` console script
(``wattlens.app.cli:main``), so the bundle and a pip install behave alike."""

import multiprocessing
import sys

from wattlens.app.cli import main

if __name__ == "__main__":
    # A frozen program is its own interpreter: if anything starts a multiprocessing child,
    # the child must run the worker, not the CLI again.
    multiprocessing.freeze_support()
    sys.exit(main())
