"""Start the user's command with the agent switched on (``wattlens run -- COMMAND ...``).

The script is not changed: the agent arrives through the environment (PYTHONPATH bootstrap plus
the socket and token variables from :meth:`AgentServer.env`). Interpreters started with ``-I``,
``-E`` or ``-S`` ignore PYTHONPATH or site, so they run unprofiled (the session still gets power).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import Any

from wattlens.profiler.agentlink import AgentServer
from wattlens.profiler.errors import BadInputError


def launch(
    command: list[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    server: AgentServer,
    **popen_kwargs: Any,
) -> subprocess.Popen:
    """Start ``command`` with ``server``'s agent environment layered over ``env`` (or ours).

    Extra keyword arguments go to :class:`subprocess.Popen` (e.g. ``stdout``). A command that
    cannot be started raises :class:`BadInputError` with a one-line message.
    """
    if not command:
        raise BadInputError("no command to run",
                            hint="put it after --, e.g. wattlens run -- python train.py")
    exe = str(command[0])
    if cwd is not None and not os.path.isdir(cwd):
        raise BadInputError(f"working directory not found: {cwd}",
                            hint="check the path or leave it out")
    try:
        return subprocess.Popen([str(c) for c in command], cwd=cwd, env=server.env(env),
                                **popen_kwargs)
    except FileNotFoundError:
        raise BadInputError(f"command not found: {exe}",
                            hint="check the spelling or give a full path") from None
    except PermissionError:
        raise BadInputError(f"cannot run {exe}: permission denied",
                            hint="make it executable (chmod +x) or run it with its interpreter"
                            ) from None
    except OSError as exc:
        raise BadInputError(f"cannot run {exe}: {exc.strerror or exc}",
                            hint="check that it is a program for this machine") from None
