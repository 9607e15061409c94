"""wattlens agent bootstrap: ``wattlens run`` puts this folder first on the child's PYTHONPATH.

Python imports ``sitecustomize`` at start-up. This one:
1. starts the agent, but only when WATTLENS_AGENT_SOCKET and WATTLENS_AGENT_TOKEN are set (the
   agent package is loaded from the parent folder under the private name ``_wattlens_agent``, so
   wattlens itself need not be installed in this interpreter); torch is hooked when the script
   imports it, never imported here;
2. runs the ``sitecustomize`` that would have run without us (the next one on sys.path), so an
   environment's own start-up customisation still happens.
Nothing here may break the user's program: failures are one line on stderr.
"""

import os
import sys


def _start_agent(here):
    if not (os.environ.get("WATTLENS_AGENT_SOCKET") and os.environ.get("WATTLENS_AGENT_TOKEN")):
        return
    try:
        import importlib.util

        agent_dir = os.path.dirname(here)
        name = "_wattlens_agent"
        package = sys.modules.get(name)
        if package is None:
            spec = importlib.util.spec_from_file_location(
                name, os.path.join(agent_dir, "__init__.py"),
                submodule_search_locations=[agent_dir])
            package = importlib.util.module_from_spec(spec)
            sys.modules[name] = package
            spec.loader.exec_module(package)
        package.activate_from_env()
    except Exception as exc:
        sys.stderr.write(f"wattlens agent: could not start ({type(exc).__name__}: {exc}); "
                         "running without profiling\n")


def _chain(here):
    """Import the sitecustomize that is next on sys.path, as Python would have without us."""
    import importlib.machinery
    import importlib.util

    def _same(p):
        try:
            return os.path.samefile(p or os.getcwd(), here)
        except OSError:
            return False

    path = [p for p in sys.path if not _same(p)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                         f"{type(exc).__name__}: {exc}\n")


_here = os.path.dirname(os.path.abspath(__file__))
_start_agent(_here)
_chain(_here)
