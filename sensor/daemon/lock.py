"""One sensor per data folder: an OS file lock held for the life of ``run`` or the service.

Two sensors on one data folder would share the spool and send every alert twice (they did: 2,050
duplicates out of 2,814). The lock is an OS lock on ``<data_dir>/sensor.lock`` (and on
``<spool>.lock`` when the spool lives elsewhere), so the OS releases it when the holder dies, even
by SIGKILL or a crash: there is no stale lock to clean up. The file holds the holder's pid, which
the refusal names.

The lock primitive is injected: :class:`PosixLocking` (``fcntl.flock``) here, the Windows one in
``lock_windows.py`` (``msvcrt.locking``), chosen by ``sensor.daemon.assemble.instance_lock``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

from .._files import private_dir

LOCK_NAME = "sensor.lock"


class AlreadyRunning(RuntimeError):
    """Another sensor holds the lock; ``pid`` is its process id when the lock file says it."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "a process whose pid the lock file does not say"
        super().__init__(f"another sensor ({who}) is running with {path.parent} (lock {path.name}); "
                         f"stop it first: two sensors on one data folder send every alert twice")


class Locking(Protocol):
    """The OS primitive: take an exclusive lock on an open descriptor without waiting."""

    def try_lock(self, fd: int) -> bool:
        """True when the lock was taken, False when another process holds it."""
        ...

    def unlock(self, fd: int) -> None:
        ...


class PosixLocking:
    """``flock``: per open file, released by the OS when the holder's descriptors close."""

    def try_lock(self, fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self, fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def read_pid(path: Path) -> int | None:
    """The pid written in a lock file, if it holds one."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).split(b"\n", 1)[0].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class InstanceLock:
    """Exclusive locks on ``paths``, taken in order by :meth:`acquire`, held until :meth:`release`."""

    def __init__(self, paths: Sequence[str | os.PathLike], locking: Locking) -> None:
        self.paths = [Path(p) for p in paths]
        self.locking = locking
        self._fds: list[int] = []

    def acquire(self) -> "InstanceLock":
        """Take every lock; raises AlreadyRunning (naming the holder) or OSError."""
        try:
            for path in self.paths:
                private_dir(path.parent)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                             | getattr(os, "O_BINARY", 0), 0o600)
                if not self.locking.try_lock(fd):
                    os.close(fd)
                    raise AlreadyRunning(path, read_pid(path))
                self._fds.append(fd)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Drop the locks (the OS does the same when the process ends)."""
        fds, self._fds = self._fds, []
        for fd in reversed(fds):
            try:
                self.locking.unlock(fd)
            except OSError:
                pass
            os.close(fd)

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_paths(data_dir: str, spool_path: str) -> list[Path]:
    """``<data_dir>/sensor.lock``, plus ``<spool>.lock`` when the spool is not in the data folder."""
    paths = [Path(data_dir) / LOCK_NAME]
    spool_dir = os.path.realpath(os.path.dirname(os.path.abspath(spool_path)))
    if spool_dir != os.path.realpath(os.path.abspath(data_dir)):
        paths.append(Path(str(spool_path) + ".lock"))
    return paths
