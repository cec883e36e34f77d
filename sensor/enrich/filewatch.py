"""Directory change notifications that let the PE cache trust an entry without a stat().

A cached answer for ``C:\\dir\\app.exe`` stays right only while nothing renames, replaces,
writes or re-times the file, or renames any folder on its path.  Checking (size, mtime)
on every lookup costs a system call per process start and is blind to an attacker who
pads the replacement to the same size and sets its timestamps back.  A watch on every
folder of the path (its own entries and, one level up each time, the folder names)
reports all of those changes, whatever the timestamps say; while the watches are in
place a hit needs no system call.

Backends: inotify on Linux (this module), ReadDirectoryChangesW on Windows
(``filewatch_windows``).  Both call ``on_change(directory, name, is_dir)``:

- ``directory`` None: anything may have changed (event queue overflow);
- ``name`` None: anything under ``directory`` may have changed (the folder itself was
  moved, deleted or unmounted, or its notification buffer overflowed);
- ``is_dir`` True/False when the backend knows whether ``name`` is a folder, else None.

``watch_chain(path)`` decides which folders must be watched for a path to be trusted,
and refuses paths where watches would not see every change (relative or non-normalised
paths, symlinks or junctions on the way, network paths).
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
import threading
from typing import Callable, Optional

OnChange = Callable[[Optional[str], Optional[str], Optional[bool]], None]

__all__ = ["OnChange", "watch_chain", "parse_inotify", "InotifyWatcher", "parse_notify",
           "notify_changes", "make_watcher"]


def watch_chain(path: str, *, flavour=os.path, realpath: Callable[[str], str] | None = None
                ) -> list[str] | None:
    """The folders to watch, root first, so that any change to ``path`` is reported; None
    when ``path`` cannot be trusted that way.

    ``flavour`` is ``posixpath`` or ``ntpath`` (default: this OS); ``realpath`` resolves
    links (default ``flavour.realpath``; tests pass their own).
    """
    if not path or not flavour.isabs(path) or "\0" in path:
        return None
    if flavour.normpath(path) != path:  # "..", "//", "." or a trailing separator
        return None
    resolve = realpath or flavour.realpath
    if flavour.__name__ == "ntpath":
        drive, _rest = flavour.splitdrive(path)
        if len(drive) != 2 or drive[1] != ":":  # UNC, \\?\ and device paths: not local
            return None
    parent = flavour.dirname(path)
    try:
        real = resolve(parent)
    except (OSError, ValueError):
        return None
    if flavour.normcase(real) != flavour.normcase(parent):
        return None
    chain = [parent]
    while True:
        up = flavour.dirname(chain[-1])
        if up == chain[-1]:
            break
        chain.append(up)
    chain.reverse()
    return chain


# --- inotify (Linux) -------------------------------------------------------------------

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x01000000, 0x02000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def parse_inotify(buf: bytes) -> list[tuple[int, int, str]]:
    """``struct inotify_event`` records as (wd, mask, name); a cut record ends the list."""
    out, pos, n = [], 0, len(buf)
    while pos + _EVENT.size <= n:
        wd, mask, _cookie, nlen = _EVENT.unpack_from(buf, pos)
        pos += _EVENT.size
        if pos + nlen > n:
            break
        name = os.fsdecode(buf[pos:pos + nlen].split(b"\0", 1)[0])
        pos += nlen
        out.append((wd, mask, name))
    return out


class InotifyWatcher:
    """Watches folders with inotify; a daemon thread reports changes to ``on_change``.

    ``add(directory)`` is idempotent and returns False when the folder cannot be watched
    (missing, not a folder, a symlink, no permission, or ``max_dirs`` reached).
    """

    def __init__(self, on_change: OnChange, max_dirs: int = 4096) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm_watch = libc.inotify_rm_watch
        self._rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._on_change = on_change
        self.max_dirs = max_dirs
        self._lock = threading.Lock()
        self._by_dir: dict[str, int] = {}
        self._by_wd: dict[int, str] = {}
        self.failures = 0
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pe-cache-watch", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._by_dir)

    def add(self, directory: str) -> bool:
        with self._lock:
            if directory in self._by_dir:
                return True
            if self._closed or len(self._by_dir) >= self.max_dirs:
                self.failures += 1
                return False
            wd = self._add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
            if wd < 0:
                self.failures += 1
                return False
            old = self._by_wd.get(wd)  # the same folder under another name (bind mount)
            if old is not None and old != directory:
                self._by_dir.pop(old, None)
            self._by_dir[directory] = wd
            self._by_wd[wd] = directory
            return True

    def _forget(self, wd: int) -> str | None:
        with self._lock:
            d = self._by_wd.pop(wd, None)
            if d is not None and self._by_dir.get(d) == wd:
                del self._by_dir[d]
            return d

    def handle(self, events: list[tuple[int, int, str]]) -> None:
        """Turn parsed inotify records into ``on_change`` calls (the thread's work)."""
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                self._on_change(None, None, None)
                continue
            with self._lock:
                d = self._by_wd.get(wd)
            if d is None:
                continue
            if mask & _SELF_GONE:
                # The watch no longer stands for this path: drop it so add() watches the
                # folder now at that path, and distrust everything below.
                if not mask & IN_IGNORED:
                    self._rm_watch(self._fd, wd)
                self._forget(wd)
                self._on_change(d, None, True)
            elif name:
                self._on_change(d, name, bool(mask & IN_ISDIR))

    def _run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self._closed:
                return
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._on_change(None, None, None)
                return
            try:
                self.handle(parse_inotify(buf))
            except Exception:  # never let one odd record end the watch thread silently
                self._on_change(None, None, None)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
        self._by_dir.clear()
        self._by_wd.clear()


# --- ReadDirectoryChangesW (Windows): the pure half, tested everywhere -----------------

FILE_ACTION_ADDED, FILE_ACTION_REMOVED, FILE_ACTION_MODIFIED = 1, 2, 3
FILE_ACTION_RENAMED_OLD_NAME, FILE_ACTION_RENAMED_NEW_NAME = 4, 5
_NOTIFY = struct.Struct("<III")  # NextEntryOffset, Action, FileNameLength (bytes)


def parse_notify(buf: bytes) -> list[tuple[int, str]] | None:
    """``FILE_NOTIFY_INFORMATION`` records as (action, name); None when the buffer is
    malformed (the caller must then assume anything in the folder changed)."""
    out, pos, n = [], 0, len(buf)
    while True:
        if pos + _NOTIFY.size > n:
            return None
        nxt, action, nlen = _NOTIFY.unpack_from(buf, pos)
        start = pos + _NOTIFY.size
        if nlen % 2 or start + nlen > n or (nxt and (nxt < _NOTIFY.size or nxt % 4)):
            return None
        out.append((action, buf[start:start + nlen].decode("utf-16-le", "replace")))
        if not nxt:
            return out
        pos += nxt


def notify_changes(directory: str, buf: bytes) -> list[tuple[str | None, str | None, bool | None]]:
    """One ReadDirectoryChangesW completion as ``on_change`` arguments.  An empty buffer
    (the system's buffer overflowed) or a malformed one means anything in ``directory``."""
    records = parse_notify(buf) if buf else None
    if records is None:
        return [(directory, None, None)]
    # Names are relative to the folder (no subtree watch): "a\\b" would be a malformed record.
    return [(directory, name, None) if name and "\\" not in name else (directory, None, None)
            for _action, name in records]


def make_watcher(on_change: OnChange, max_dirs: int = 4096):
    """The change watcher of this OS, or None when it has none (or it cannot start)."""
    try:
        if sys.platform.startswith("linux"):
            return InotifyWatcher(on_change, max_dirs)
        if sys.platform == "win32":
            from .filewatch_windows import DirectoryChangeWatcher
            return DirectoryChangeWatcher(on_change, max_dirs)
    except (OSError, AttributeError):
        return None
    return None
