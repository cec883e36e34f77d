"""The instance lock's primitive on Windows: ``msvcrt.locking`` (Windows only).

It locks one byte far past the pid text, so another process can still read which pid holds
the lock (a Windows byte-range lock also stops reads of the range it covers). Windows releases
the lock when the holder's handle closes, including when the process dies.
"""
from __future__ import annotations

import os

from .lock import Locking

LOCK_OFFSET = 1 << 20


class WindowsLocking(Locking):
    def try_lock(self, fd: int) -> bool:
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True

    def unlock(self, fd: int) -> None:
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
