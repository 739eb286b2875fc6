"""Whether the other instances of a model are running a batch right now.

Each instance of a Python-backend model is its own stub process, so an instance cannot see its
siblings' state in memory. Instead, every instance owns a file in a folder shared by the
instances of the model (in the server's private folder, ``server.private.server_runtime_dir``: a
``mkdtemp`` folder of mode 0700 that ``cxr serve`` creates, so another local user can neither
predict nor pre-create it; keyed by the server's pid, the model and its version) and holds an
exclusive ``flock`` on it while it runs a batch; a sibling is running when a shared lock on its
file cannot be taken. Locks die with their process: a crashed stub never leaves the others
believing it is busy. The cost is four uncontended system calls per batch.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cxr.server.private import server_runtime_dir

#: Lock folders are named ``PREFIX<server pid>-<model>-<version>``.
PREFIX = "cxr-instances-"


class Siblings:
    """The instance ``name`` among the ``instances`` of a model whose lock files are in
    ``folder``."""

    def __init__(self, folder: Path, name: str, instances: int) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder, self.name, self.expected = folder, name, instances - 1
        self.own = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o600)
        self.others: dict[str, int] = {}

    @classmethod
    def of_instance(cls, model: str, version: str, name: str, instances: int) -> Siblings:
        """The siblings of instance ``name`` of ``model`` in the server that started this stub."""
        root = server_runtime_dir()
        remove_stale(root)
        return cls(root / f"{PREFIX}{os.getppid()}-{model}-{version}", name, instances)

    def _find(self) -> None:
        """Open the lock files of siblings that have started since the last look."""
        for path in self.folder.iterdir():
            if path.name != self.name and path.name not in self.others:
                try:
                    self.others[path.name] = os.open(path, os.O_RDONLY)
                except FileNotFoundError:  # a sibling that was just unloaded
                    continue

    def busy(self) -> bool:
        """Whether another instance holds its lock, i.e. is running a batch now."""
        if len(self.others) < self.expected:
            self._find()
        for fd in self.others.values():
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    @contextmanager
    def running(self) -> Iterator[bool]:
        """Mark this instance as running for the block; yields whether another is running too."""
        fcntl.flock(self.own, fcntl.LOCK_EX)
        try:
            yield self.busy()
        finally:
            fcntl.flock(self.own, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock files and remove this instance's (and the folder once it is empty)."""
        for fd in [self.own, *self.others.values()]:
            os.close(fd)
        self.others.clear()
        (self.folder / self.name).unlink(missing_ok=True)
        with suppress(OSError):  # siblings still have their files there
            self.folder.rmdir()


def remove_stale(root: Path) -> None:
    """Remove the lock folders in ``root`` of servers that are no longer running."""
    for folder in root.glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            for path in folder.glob("*"):
                path.unlink(missing_ok=True)
            with suppress(OSError):  # another instance got there first
                folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
