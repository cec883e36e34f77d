"""The Windows service, platform-neutral part: names, arguments, the install plan.

``sensor.daemon.service_windows`` (pywin32) carries the plan out; everything that can be
decided without Windows is decided here and tested on Linux.
"""
from __future__ import annotations

import ntpath
from dataclasses import dataclass

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
ACTIONS = ("install", "uninstall", "start", "stop", "status")


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

    def sc_failure_command(self) -> list[str]:
        """The ``sc.exe failure`` call that sets the recovery actions."""
        actions = "/".join(f"restart/{d}" for _, d in self.recovery)
        # sc.exe wants each option name ("reset=") and its value as separate arguments.
        return ["sc.exe", "failure", self.name, "reset=", str(self.recovery_reset_s),
                "actions=", actions]


def install_plan(config: str, startup: str = "delayed", name: str = SERVICE_NAME) -> InstallPlan:
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
    return InstallPlan(
        name=name, display_name=DISPLAY_NAME if name == SERVICE_NAME else f"{DISPLAY_NAME} ({name})",
        description=DESCRIPTION, class_string=SERVICE_CLASS, start_type=STARTUP[startup],
        delayed=startup == "delayed", config=config,
        recovery=(("restart", RECOVERY_DELAY_MS),) * 3, recovery_reset_s=RECOVERY_RESET_S,
        event_source=EVENT_SOURCE,
    )


def state_name(code: int) -> str:
    """SCM SERVICE_STATUS.dwCurrentState as a word."""
    return {1: "stopped", 2: "start pending", 3: "stop pending", 4: "running",
            5: "continue pending", 6: "pause pending", 7: "paused"}.get(code, f"unknown ({code})")
