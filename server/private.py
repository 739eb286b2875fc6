"""Folders only this user can use: another local user can neither pre-create nor read them."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class UnsafeFolderError(RuntimeError):
    """A folder that should be private to this user is not (owner, mode or a symlink)."""


def private_folder(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that the existing one is a real folder (not a
    symlink) owned by this user and closed to others; raise :class:`UnsafeFolderError` if not."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolderError(f"{path} is not a folder (a symlink or a file put there)")
    if info.st_uid != os.geteuid():
        raise UnsafeFolderError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        raise UnsafeFolderError(f"{path} is open to other users (mode {info.st_mode & 0o777:o})")
    return path


def user_runtime_dir() -> Path:
    """This user's private folder for cxr-triage's run-time files: ``$XDG_RUNTIME_DIR/cxr-triage``
    when set, else ``cxr-triage-<uid>`` in the temporary directory (checked, never trusted)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return private_folder(Path(runtime) / "cxr-triage")
    return private_folder(Path(tempfile.gettempdir()) / f"cxr-triage-{os.geteuid()}")


#: Environment variable naming the running server's private folder (set by ``cxr.server.triton`` for
#: tritonserver and the Python-backend stubs it starts).
RUNTIME_DIR_ENV = "CXR_RUNTIME_DIR"


def server_runtime_dir() -> Path:
    """The private folder of the server this process belongs to, else :func:`user_runtime_dir`."""
    given = os.environ.get(RUNTIME_DIR_ENV)
    return private_folder(Path(given)) if given else user_runtime_dir()
