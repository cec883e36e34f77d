"""NT device paths (``\\Device\\HarddiskVolume3\\x.exe``) to DOS paths (``C:\\x.exe``).

Kernel-Process ``ImageName`` is a native path (reference §1.4).  The mapper is a pure function
over an injected device map ``{"\\Device\\HarddiskVolume3": "C:"}`` (on Windows built with
QueryDosDevice by ``sensor.sources.etw_windows``).  A device matches only as a whole path
component: ``\\Device\\HarddiskVolume1`` never matches ``\\Device\\HarddiskVolume12\\...`` (the
prefix bug the reference notes in rustinel).
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

UNC_DEVICES = ("\\device\\mup\\", "\\device\\lanmanredirector\\", "\\??\\unc\\")


def _device_of(path: str) -> str | None:
    """``\\Device\\Name`` of ``path`` (the first two components), or None."""
    if not path[:8].lower() == "\\device\\":
        return None
    end = path.find("\\", 8)
    return path if end == -1 else path[:end]


def nt_to_dos(path: str | None, devices: Mapping[str, str], system_root: str = "C:\\Windows") -> str | None:
    """The DOS form of an NT path; paths already in DOS form come back unchanged, unknown devices too."""
    if not path:
        return path
    low = path[:32].lower()
    if low.startswith("\\??\\"):
        if low.startswith("\\??\\unc\\"):
            return "\\\\" + path[8:]
        return path[4:]                                  # \??\C:\x -> C:\x
    if low.startswith("\\\\?\\"):
        if low.startswith("\\\\?\\unc\\"):
            return "\\\\" + path[8:]
        return path[4:]
    if low.startswith("\\systemroot"):
        rest = path[11:]
        if not rest or rest[0] == "\\":
            return system_root.rstrip("\\") + rest
        return path
    for prefix in UNC_DEVICES:
        if low.startswith(prefix):
            rest = path[len(prefix):]
            while rest.startswith(";"):
                # Mapped drives: \Device\Mup\;LanmanRedirector\;Z:000000000001a2b3\srv\share
                cut = rest.find("\\")
                rest = rest[cut + 1:] if cut != -1 else ""
            return "\\\\" + rest
    device = _device_of(path)
    if device is None:
        return path
    letter = _lookup(devices, device)
    if letter is None:
        return path
    return letter.rstrip("\\") + path[len(device):] if len(path) > len(device) else letter.rstrip("\\") + "\\"


def _lookup(devices: Mapping[str, str], device: str) -> str | None:
    hit = devices.get(device)
    if hit is None:
        # Device names are case-insensitive; the map is usually tiny (one entry per drive).
        low = device.lower()
        for k, v in devices.items():
            if k.lower() == low:
                return v
    return hit


# The mapper remembers the paths it translated: a server starts the same few images again and
# again. Bounded: paths up to CACHE_PATH_CHARS characters, CACHE_ENTRIES of them (the cache is
# emptied when full, and whenever the device map is reloaded).
CACHE_ENTRIES = 2048
CACHE_PATH_CHARS = 520


class DeviceMapper:
    """``nt_to_dos`` over a device map that is reloaded on a miss (at most once per cooldown)."""

    def __init__(self, loader: Callable[[], Mapping[str, str]] | None = None,
                 devices: Mapping[str, str] | None = None, cooldown: float = 5.0,
                 system_root: str = "C:\\Windows", clock: Callable[[], float] = time.monotonic) -> None:
        self._loader = loader
        self._clock = clock
        self.cooldown = cooldown
        self.system_root = system_root
        self.devices: dict[str, str] = dict(devices or {})
        self._cache: dict[str, str] = {}       # path -> its DOS form (translated paths only)
        self._last_load = float("-inf")
        self.refreshes = 0
        self.misses = 0
        self.load_errors = 0
        if not self.devices and loader is not None:
            self.refresh()

    def refresh(self) -> bool:
        """Reload the device map; False when the loader failed (the old map is kept)."""
        self._last_load = self._clock()
        if self._loader is None:
            return False
        try:
            new = dict(self._loader())
        except Exception:  # noqa: BLE001 - a failed reload must not stop the event path
            self.load_errors += 1
            return False
        self.devices = new
        self._cache = {}
        self.refreshes += 1
        return True

    def __call__(self, path: str | None) -> str | None:
        """The DOS path for ``path``; an unknown ``\\Device\\X`` triggers one reload (cooldown)."""
        cache = self._cache
        try:
            return cache[path]
        except (KeyError, TypeError):          # (TypeError: not a str, nothing to remember)
            pass
        out = nt_to_dos(path, self.devices, self.system_root)
        if out is not path and path.__class__ is str and len(path) <= CACHE_PATH_CHARS:
            # only what a device map translated: a miss must still reach the reload below
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[path] = out
            return out
        if out is path and path and _device_of(path) is not None and not _is_unc(path):
            if self._loader is not None and self._clock() - self._last_load >= self.cooldown:
                self.refresh()
                out = nt_to_dos(path, self.devices, self.system_root)
            if out is path:
                self.misses += 1
        return out

    def stats(self) -> dict:
        """Counters as plain data."""
        return {"devices": len(self.devices), "refreshes": self.refreshes,
                "misses": self.misses, "load_errors": self.load_errors}


def _is_unc(path: str) -> bool:
    low = path[:32].lower()
    return any(low.startswith(p) for p in UNC_DEVICES)
