"""The Windows service host and its control commands (pywin32; Windows only).

Nothing here runs on Linux; the decisions are made in ``sensor.daemon.service`` and
tested there.  pywin32 is imported lazily so importing this module elsewhere
only fails when a function is called.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import threading

from .service import InstallPlan, SERVICE_NAME, state_name

log = logging.getLogger("sensor.service")


def install(plan: InstallPlan) -> None:
    """Register the service, its recovery actions, config path and event source."""
    import subprocess

    import win32service
    import win32serviceutil

    win32serviceutil.InstallService(
        plan.class_string, plan.name, plan.display_name, startType=plan.start_type,
        description=plan.description,
    )
    win32serviceutil.SetServiceCustomOption(plan.name, "config", plan.config)
    if plan.delayed:
        h = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
        try:
            s = win32service.OpenService(h, plan.name, win32service.SERVICE_ALL_ACCESS)
            try:
                win32service.ChangeServiceConfig2(
                    s, win32service.SERVICE_CONFIG_DELAYED_AUTO_START_INFO, True)
            finally:
                win32service.CloseServiceHandle(s)
        finally:
            win32service.CloseServiceHandle(h)
    subprocess.run(plan.sc_failure_command(), check=True, capture_output=True)
    import win32evtlogutil
    win32evtlogutil.AddSourceToRegistry(plan.event_source)


def uninstall(name: str = SERVICE_NAME) -> None:
    import win32serviceutil
    win32serviceutil.RemoveService(name)


def start(name: str = SERVICE_NAME) -> None:
    import win32serviceutil
    win32serviceutil.StartService(name)
    win32serviceutil.WaitForServiceStatus(name, 4, 60)


def stop(name: str = SERVICE_NAME) -> None:
    import win32serviceutil
    win32serviceutil.StopService(name)
    win32serviceutil.WaitForServiceStatus(name, 1, 60)


def status(name: str = SERVICE_NAME) -> str:
    import win32serviceutil
    return state_name(win32serviceutil.QueryServiceStatus(name)[1])


def _service_class():
    import servicemanager
    import win32event
    import win32service
    import win32serviceutil

    class SensorService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = "ETW Sensor"

        def __init__(self, args):
            super().__init__(args)
            self._stop = threading.Event()
            self._h = win32event.CreateEvent(None, 0, 0, None)
            self._name = args[0] if args else SERVICE_NAME   # the installed name (--name)
            self._drain = 30.0

        def SvcStop(self):
            # The drain may take drain_timeout_s: tell the SCM so it does not give up early.
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING,
                                     waitHint=int((self._drain + 5) * 1000))
            self._stop.set()

        # Accept system shutdown too, so queued events and the spool are flushed.
        SvcShutdown = SvcStop

        def SvcDoRun(self):
            from .assemble import prepare, setup_logging
            from .runner import serve
            from .config import ConfigError, load

            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE,
                                  servicemanager.PYS_SERVICE_STARTED, (self._name, ""))
            try:
                path = win32serviceutil.GetServiceCustomOption(self._name, "config")
                cfg = load(path)
                self._drain = cfg.sensor.drain_timeout_s
                setup_logging(cfg)
                pipeline = prepare(cfg)
            except ConfigError as exc:
                servicemanager.LogErrorMsg(f"etw-sensor: config error: {exc}")
                return
            serve(pipeline, self._stop, cfg.sensor.drain_timeout_s)

    return SensorService


def __getattr__(name):  # SensorService is built on first use (needs pywin32)
    if name == "SensorService":
        return _service_class()
    raise AttributeError(name)


if __name__ == "__main__" and sys.platform == "win32":
    import servicemanager
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(_service_class())
    servicemanager.StartServiceCtrlDispatcher()
