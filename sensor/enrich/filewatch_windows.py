"""ReadDirectoryChangesW watcher for the PE cache (Windows only; see filewatch).

One directory handle per watched folder (no subtree), all on one I/O completion port
served by one daemon thread.  Parsing the notification records and turning them into
``on_change`` calls is ``filewatch.notify_changes`` (pure, tested on every OS); this
module only makes the Win32 calls.  NOT RUN here: written against the documented API,
exercised on Linux only through its pure half.
"""
from __future__ import annotations

import ctypes
import threading
from ctypes import wintypes

from .filewatch import OnChange, notify_changes

FILE_LIST_DIRECTORY = 0x0001
FILE_SHARE_ALL = 0x1 | 0x2 | 0x4  # read | write | delete: never block renames or deletes
OPEN_EXISTING = 3
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
FILE_FLAG_OVERLAPPED = 0x40000000
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
INFINITE = 0xFFFFFFFF
ERROR_OPERATION_ABORTED = 995
NOTIFY_FILTER = (0x1      # FILE_NOTIFY_CHANGE_FILE_NAME
                 | 0x2    # DIR_NAME
                 | 0x4    # ATTRIBUTES
                 | 0x8    # SIZE
                 | 0x10   # LAST_WRITE
                 | 0x40   # CREATION
                 | 0x100)  # SECURITY
BUFFER_SIZE = 64 * 1024  # the documented maximum for network paths; ample locally
_WAKE_KEY = 0
_RETIRED: list = []


class _OVERLAPPED(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p),
                ("Offset", wintypes.DWORD), ("OffsetHigh", wintypes.DWORD),
                ("hEvent", wintypes.HANDLE)]


class _Watch:
    __slots__ = ("directory", "handle", "key", "buffer", "overlapped")

    def __init__(self, directory: str, handle: int, key: int) -> None:
        self.directory = directory
        self.handle = handle
        self.key = key
        self.buffer = ctypes.create_string_buffer(BUFFER_SIZE)
        self.overlapped = _OVERLAPPED()


def _kernel32():
    k = ctypes.WinDLL("kernel32", use_last_error=True)
    k.CreateFileW.restype = wintypes.HANDLE
    k.CreateFileW.argtypes = (wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p,
                              wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE)
    k.CreateIoCompletionPort.restype = wintypes.HANDLE
    k.CreateIoCompletionPort.argtypes = (wintypes.HANDLE, wintypes.HANDLE, ctypes.c_size_t,
                                         wintypes.DWORD)
    k.ReadDirectoryChangesW.restype = wintypes.BOOL
    k.ReadDirectoryChangesW.argtypes = (wintypes.HANDLE, ctypes.c_void_p, wintypes.DWORD,
                                        wintypes.BOOL, wintypes.DWORD, ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.c_void_p)
    k.GetQueuedCompletionStatus.restype = wintypes.BOOL
    k.GetQueuedCompletionStatus.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD),
                                            ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_void_p), wintypes.DWORD)
    k.PostQueuedCompletionStatus.restype = wintypes.BOOL
    k.PostQueuedCompletionStatus.argtypes = (wintypes.HANDLE, wintypes.DWORD, ctypes.c_size_t,
                                             ctypes.c_void_p)
    k.CancelIoEx.restype = wintypes.BOOL
    k.CancelIoEx.argtypes = (wintypes.HANDLE, ctypes.c_void_p)
    k.CloseHandle.restype = wintypes.BOOL
    k.CloseHandle.argtypes = (wintypes.HANDLE,)
    return k


class DirectoryChangeWatcher:
    """Same contract as filewatch.InotifyWatcher, over ReadDirectoryChangesW."""

    def __init__(self, on_change: OnChange, max_dirs: int = 4096) -> None:
        self._k = _kernel32()
        port = self._k.CreateIoCompletionPort(INVALID_HANDLE_VALUE, None, 0, 1)
        if not port:
            raise OSError(ctypes.get_last_error(), "CreateIoCompletionPort failed")
        self._port = port
        self._on_change = on_change
        self.max_dirs = max_dirs
        self.failures = 0
        self._lock = threading.Lock()
        self._by_dir: dict[str, _Watch] = {}
        self._by_key: dict[int, _Watch] = {}
        self._next_key = 1
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pe-cache-watch", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._by_dir)

    def _arm(self, w: _Watch) -> bool:
        return bool(self._k.ReadDirectoryChangesW(
            w.handle, w.buffer, BUFFER_SIZE, False, NOTIFY_FILTER, None,
            ctypes.byref(w.overlapped), None))

    def add(self, directory: str) -> bool:
        with self._lock:
            if directory in self._by_dir:
                return True
            if self._closed or len(self._by_dir) >= self.max_dirs:
                self.failures += 1
                return False
            h = self._k.CreateFileW(directory, FILE_LIST_DIRECTORY, FILE_SHARE_ALL, None,
                                    OPEN_EXISTING,
                                    FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OVERLAPPED, None)
            if not h or h == INVALID_HANDLE_VALUE:
                self.failures += 1
                return False
            key = self._next_key
            self._next_key += 1
            w = _Watch(directory, h, key)
            if not self._k.CreateIoCompletionPort(h, self._port, key, 0) or not self._arm(w):
                self._k.CloseHandle(h)
                self.failures += 1
                return False
            self._by_dir[directory] = w
            self._by_key[key] = w
            return True

    def _drop(self, w: _Watch) -> None:
        """Forget a watch whose read has completed (no I/O is pending on it)."""
        with self._lock:
            if self._by_key.pop(w.key, None) is None:
                return
            self._by_dir.pop(w.directory, None)
        self._k.CloseHandle(w.handle)

    def _run(self) -> None:
        nbytes = wintypes.DWORD()
        key = ctypes.c_size_t()
        ovl = ctypes.c_void_p()
        while True:
            ok = self._k.GetQueuedCompletionStatus(self._port, ctypes.byref(nbytes),
                                                   ctypes.byref(key), ctypes.byref(ovl), INFINITE)
            if key.value == _WAKE_KEY and not ovl.value:
                return  # close()
            with self._lock:
                w = self._by_key.get(key.value)
            if w is None:
                continue
            if not ok:
                err = ctypes.get_last_error()
                # The folder was deleted or its handle cancelled: it stands for nothing now.
                self._drop(w)
                if err != ERROR_OPERATION_ABORTED or not self._closed:
                    self._on_change(w.directory, None, True)
                continue
            data = w.buffer.raw[:nbytes.value]
            for change in notify_changes(w.directory, data):
                self._on_change(*change)
            if not self._arm(w):
                self._drop(w)
                self._on_change(w.directory, None, True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._by_key.values())
        for w in watches:
            self._k.CancelIoEx(w.handle, None)
        self._k.PostQueuedCompletionStatus(self._port, 0, _WAKE_KEY, None)
        self._thread.join(timeout=5)
        with self._lock:  # the thread may have dropped (and closed) some meanwhile
            remaining = list(self._by_key.values())
            self._by_dir.clear()
            self._by_key.clear()
        for w in remaining:
            self._k.CloseHandle(w.handle)
        # A cancelled read may still write its status into the OVERLAPPED after this
        # returns: keep the buffers alive for the life of the process.
        _RETIRED.extend(watches)
        self._k.CloseHandle(self._port)
