"""The Windows service, platform-neutral part: names, arguments, the install plan.

``sensor.daemon.service_windows`` (pywin32) carries the plan out; everything that can be
decided without Windows is decided here and tested on Linux.
"""
from __future__ import annotations

import hashlib
import ntpath
import struct
from dataclasses import dataclass, field

SERVICE_NAME = "EtwSensor"
DISPLAY_NAME = "ETW Sensor"
DESCRIPTION = ("Watches process starts through ETW, evaluates detection rules and forwards "
               "alerts over HTTPS.")
SERVICE_CLASS = "sensor.daemon.service_windows.SensorService"
EVENT_SOURCE = "etw-sensor"

# pywin32 / SCM start types
STARTUP = {"auto": 2, "delayed": 2, "manual": 3, "disabled": 4}
# Recovery: restart after 60 s, three times; reset the failure count after a day.
RECOVERY_RESET_S = 86400
RECOVERY_DELAY_MS = 60000
# A user-defined service control code (128-255): `sc control EtwSensor 129` reloads the rules.
SERVICE_CONTROL_RELOAD = 129
ACTIONS = ("install", "uninstall", "start", "stop", "status")
# The account the service runs as: LocalSystem (default: everything ETW and back-fill need), or
# the service's virtual account NT SERVICE\\<name> (less power; see README "On Windows").
ACCOUNTS = ("localsystem", "virtual")
SID_SYSTEM = "SY"                       # SDDL aliases: LocalSystem
SID_ADMINS = "BA"                       # BUILTIN\Administrators
SID_PERFORMANCE_LOG_USERS = "S-1-5-32-559"   # may run and consume ETW trace sessions


class ServiceError(ValueError):
    """A service command that cannot be carried out (the message says why)."""


@dataclass(frozen=True)
class InstallPlan:
    """What ``service install`` does."""

    name: str
    display_name: str
    description: str
    class_string: str
    start_type: int
    delayed: bool
    config: str
    recovery: tuple  # ((action, delay_ms), ...)
    recovery_reset_s: int
    event_source: str
    account: str = "localsystem"
    data_dir: str = ""
    acl: tuple = ()                     # (folder, SDDL) pairs: set before the service starts
    groups: tuple = ()                  # (group SID, account): memberships the account needs

    @property
    def account_name(self) -> str | None:
        """The SCM logon name: None for LocalSystem, ``NT SERVICE\\<name>`` for a virtual account."""
        return None if self.account == "localsystem" else f"NT SERVICE\\{self.name}"

    def sc_failure_command(self) -> list[str]:
        """The ``sc.exe failure`` call that sets the recovery actions."""
        actions = "/".join(f"restart/{d}" for _, d in self.recovery)
        # sc.exe wants each option name ("reset=") and its value as separate arguments.
        return ["sc.exe", "failure", self.name, "reset=", str(self.recovery_reset_s),
                "actions=", actions]


def service_sid(name: str) -> str:
    """The SID of the service's virtual account ``NT SERVICE\\<name>``: S-1-5-80 followed by the
    SHA-1 of the upper-cased name (UTF-16LE) read as five little-endian 32-bit numbers (what
    ``sc showsid`` prints)."""
    digest = hashlib.sha1(name.upper().encode("utf-16-le")).digest()
    return "S-1-5-80-" + "-".join(str(n) for n in struct.unpack("<5I", digest))


def folder_sddl(service_access: str | None = None, service: str | None = None) -> str:
    """A protected DACL (nothing inherited from the parent) for a sensor folder: full control for
    SYSTEM and Administrators, inherited by every file and sub-folder; ``service_access``
    (``FA`` full, ``FR`` read) for the virtual account of ``service`` when it runs as one."""
    aces = [f"(A;OICI;FA;;;{SID_SYSTEM})", f"(A;OICI;FA;;;{SID_ADMINS})"]
    if service_access and service:
        aces.append(f"(A;OICI;{service_access};;;{service_sid(service)})")
    return "D:PAI" + "".join(aces)


# Folders a protected ACL must never be put on: it would lock users out of their system.
_SHARED = {"windows", "program files", "program files (x86)", "programdata", "users",
           "system volume information", "$recycle.bin"}


def acl_target(folder: str) -> str:
    """``folder`` when it is one the sensor may lock down (its own), else ServiceError."""
    norm = ntpath.normpath(folder)
    drive, rest = ntpath.splitdrive(norm)
    parts = [p for p in rest.split("\\") if p]
    if not drive or not parts:
        raise ServiceError(f"{folder!r}: a drive root; keep the sensor's files in a folder of their own")
    if len(parts) == 1 and parts[0].lower() in _SHARED:
        raise ServiceError(f"{folder!r} is shared by the system; keep the sensor's files in a folder "
                           f"of their own (like {ntpath.join(norm, 'etw-sensor')})")
    if parts[0].lower() == "windows" or (len(parts) >= 2 and parts[0].lower() == "users"
                                         and len(parts) <= 2):
        raise ServiceError(f"{folder!r} is a system or profile folder; keep the sensor's files in a "
                           f"folder of their own")
    return norm


def install_plan(config: str, startup: str = "delayed", name: str = SERVICE_NAME,
                 account: str = "localsystem", data_dir: str = "") -> InstallPlan:
    """Check the arguments of ``service install`` and say what will be done."""
    if startup not in STARTUP:
        raise ServiceError(f"--startup must be one of {', '.join(STARTUP)}, got {startup!r}")
    if not config:
        raise ServiceError("--config is required: the service reads its settings from that file")
    if not ntpath.isabs(config):
        raise ServiceError(f"--config must be an absolute Windows path (the service does not run "
                           f"in this folder), got {config!r}")
    if not name or any(c in name for c in "\\/ "):
        raise ServiceError(f"invalid service name {name!r}")
    if account not in ACCOUNTS:
        raise ServiceError(f"--account must be one of {', '.join(ACCOUNTS)}, got {account!r}")
    data_dir = data_dir or r"C:\ProgramData\etw-sensor"
    if not ntpath.isabs(data_dir):
        raise ServiceError(f"the data folder must be an absolute Windows path, got {data_dir!r}")
    virtual = account == "virtual"
    config_dir = acl_target(ntpath.dirname(config))
    data = acl_target(data_dir)
    if ntpath.normcase(config_dir) == ntpath.normcase(data):
        acl = ((data, folder_sddl("FA" if virtual else None, name)),)
    else:
        acl = ((config_dir, folder_sddl("FR" if virtual else None, name)),
               (data, folder_sddl("FA" if virtual else None, name)))
    return InstallPlan(
        name=name, display_name=DISPLAY_NAME if name == SERVICE_NAME else f"{DISPLAY_NAME} ({name})",
        description=DESCRIPTION, class_string=SERVICE_CLASS, start_type=STARTUP[startup],
        delayed=startup == "delayed", config=config,
        recovery=(("restart", RECOVERY_DELAY_MS),) * 3, recovery_reset_s=RECOVERY_RESET_S,
        event_source=EVENT_SOURCE, account=account, data_dir=data, acl=acl,
        groups=((SID_PERFORMANCE_LOG_USERS, f"NT SERVICE\\{name}"),) if virtual else (),
    )


def start_failure(errors: list[str]) -> tuple[int, str]:
    """What the service reports when its configuration is refused: the service-specific exit
    code 2 (as ``run``) and one message listing every problem for the Event Log."""
    return 2, "etw-sensor: not started, the configuration is refused:\n" + "\n".join(errors)


def state_name(code: int) -> str:
    """SCM SERVICE_STATUS.dwCurrentState as a word."""
    return {1: "stopped", 2: "start pending", 3: "stop pending", 4: "running",
            5: "continue pending", 6: "pause pending", 7: "paused"}.get(code, f"unknown ({code})")
