"""The one writer of user-chosen output files: reports and CSV from `wattlens report`, the demo's
report, the app's Export screen. Every such file goes through :func:`write_output`.

What it promises (docs/reliability.md):

- It writes only to a regular file or a new path. A folder, device (``/dev/full``), FIFO, socket
  or symbolic link at the path is refused with exit 2 and left as it is: no link is followed, so
  a report never lands outside the folder the user chose.
- Atomic: the content goes to a new temp file in the same folder, is fsynced, then renamed over
  the path (and the folder fsynced). A failure leaves the previous file (or nothing) and no temp
  file behind.
- Permissions: a new file is created with 0o666 minus the umask, like any program's output; an
  existing file keeps its mode.
- An unwritable folder or a read-only filesystem is one line, exit 2 (choose another path);
  running out of space while writing is one line, exit 1.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from wattlens.profiler.errors import BadInputError, WattlensError

# errors that mean "this place cannot be written": the user's choice, not a failure of the work
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOENT, errno.ELOOP}
_HINT = "choose another output path"


def check_output_path(path: str | os.PathLike) -> Path:
    """The path to write, after refusing what must not be replaced; raises BadInputError."""
    path = Path(path).expanduser()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise BadInputError(f"cannot use {path}: {exc.strerror or exc}", hint=_HINT) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise BadInputError(f"{path} is a symbolic link; wattlens does not write through links",
                                hint="give the real file path, or remove the link first")
        if stat.S_ISDIR(st.st_mode):
            raise BadInputError(f"{path} is a folder", hint="give a file path, e.g. -o report.html")
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"{path} is not a regular file (a device, FIFO or socket); "
                                "wattlens writes only regular files", hint=_HINT)
    if not path.parent.is_dir():
        raise BadInputError(f"folder {path.parent} does not exist", hint=f"create it or {_HINT}")
    return path


def write_output(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Check ``path``, let ``write(tmp)`` fill a temp file beside it, then move it into place."""
    path = check_output_path(path)
    try:
        existing_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        existing_mode = None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # 0o666: the kernel applies the umask (reading it is not thread-safe); no link followed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        raise _error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        if existing_mode is not None:
            os.chmod(tmp, existing_mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the rename itself is done
    finally:
        os.close(fd)


def _error(path: Path, exc: OSError) -> WattlensError:
    reason = exc.strerror or str(exc)
    if exc.errno in _NOT_WRITABLE:
        return BadInputError(f"cannot write {path}: {reason}", hint=_HINT)
    return WattlensError(f"cannot write {path}: {reason}; nothing was written",
                         hint=f"check free space, or {_HINT}")
