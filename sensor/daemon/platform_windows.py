"""Windows facts the start-up checks need (Windows only; nothing here ran on Windows).

Imported lazily by ``sensor.daemon.assemble`` on Windows; importing it elsewhere is harmless.
"""
from __future__ import annotations


def is_elevated() -> bool | None:
    """True when the process token is elevated (Administrator or SYSTEM); None when unknown."""
    try:
        import ctypes
        return bool(ctypes.windll.shell32.IsUserAnAdmin())   # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None
