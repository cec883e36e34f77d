"""Private files and folders: what the sensor writes holds command lines, users and tokens.

On POSIX every file the sensor creates is 0600 and every folder 0700, whatever the umask
(``os.open`` with mode 0600 can only lose bits to a umask, never gain them; folders are
``chmod``-ed after ``mkdir`` because ``mkdir``'s mode is also subject to the umask, which
may be stricter but is never looser). A file the sensor opens for writing that already
exists with looser bits is tightened when the sensor owns it. On Windows the mode bits mean
nothing: the service install sets an ACL on the data and config folders instead
(``sensor.daemon.service.acl_plan``).

``exposure`` is the check the sensor makes before it trusts a secret-bearing file
(``token_file``, the config).
"""
from __future__ import annotations

import os
import stat
import sys
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700
POSIX = os.name == "posix"


def private_dir(path: str | os.PathLike) -> None:
    """Create ``path`` (and missing parents) as 0700 folders; an existing folder is left as is."""
    path = os.fspath(path)
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent and parent != os.path.abspath(path):
        private_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    if POSIX:
        os.chmod(path, DIR_MODE)


def _tighten(fd: int) -> None:
    if not POSIX:
        return
    st = os.fstat(fd)
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)


def open_private(path: str | os.PathLike, mode: str = "ab", encoding: str | None = None,
                 make_parents: bool = True) -> IO:
    """``open(path, mode)`` for writing, creating the file 0600 (and, unless ``make_parents``
    is false, its missing folders 0700)."""
    if not any(c in mode for c in "wax"):
        raise ValueError("open_private is for writing")
    flags = os.O_WRONLY
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    elif "x" in mode:
        flags |= os.O_EXCL
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = open_private_fd(path, flags, make_parents)
    try:
        return os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None)
    except BaseException:
        os.close(fd)
        raise


def open_private_fd(path: str | os.PathLike, flags: int = os.O_WRONLY | os.O_APPEND,
                    make_parents: bool = True) -> int:
    """A raw file descriptor opened with ``flags`` (plus create and close-on-exec), the file
    created 0600 and tightened like :func:`open_private` (for writers that want one
    ``os.write`` and no buffered file object)."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent and make_parents:
        private_dir(parent)
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0),
                 FILE_MODE)
    try:
        _tighten(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic_private(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a private temp file, fsync, rename); the temp
    file is removed when anything fails. The folder must exist."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open_private(tmp, "wb", make_parents=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def touch_private(path: str | os.PathLike) -> None:
    """Create ``path`` empty and private if it does not exist (so that a library that
    creates files next to it with the same mode, like SQLite's -wal and -shm, inherits 0600)."""
    with open_private(path, "ab"):
        pass


def exposure(path: str | os.PathLike, allow_readable: bool = False) -> str | None:
    """Why users other than the owner can read (or change) ``path``, or None when they cannot.

    Group- or world-writable is always reported; group- or world-readable unless
    ``allow_readable``. POSIX only: on Windows access is decided by the folder's ACL (set by
    ``service install``), so this returns None there.
    """
    if not POSIX or sys.platform == "win32":
        return None
    bits = stat.S_IMODE(os.stat(path).st_mode)
    who = []
    if bits & 0o022:
        who.append("others can change it")
    if bits & 0o044 and not allow_readable:
        who.append("others can read it")
    if not who:
        return None
    return f"mode {bits:04o}: {' and '.join(who)} (chmod 600 {os.fspath(path)})"


def open_regular(path: str | os.PathLike) -> int:
    """A descriptor of ``path`` opened non-blocking and checked with fstat: a FIFO or a device
    raises OSError("not a regular file") instead of being waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int) -> bytes | None:
    """The bytes of a regular file, or None when it holds more than ``limit``."""
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size > limit:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    return None if len(data) > limit else data
