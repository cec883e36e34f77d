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

from .service import InstallPlan, SERVICE_CONTROL_RELOAD, SERVICE_NAME, start_failure, state_name

ERROR_SERVICE_SPECIFIC_ERROR = 1066   # the SCM then records svcExitCode

log = logging.getLogger("sensor.service")


def apply_acl(folder: str, sddl: str) -> None:
    """Create ``folder`` if needed and give it the protected DACL ``sddl`` (inherited by every
    file and sub-folder in it, existing ones included)."""
    import os

    import win32security

    os.makedirs(folder, exist_ok=True)
    sd = win32security.ConvertStringSecurityDescriptorToSecurityDescriptor(
        sddl, win32security.SDDL_REVISION_1)
    dacl = sd.GetSecurityDescriptorDacl()
    win32security.SetNamedSecurityInfo(
        folder, win32security.SE_FILE_OBJECT,
        win32security.DACL_SECURITY_INFORMATION | win32security.PROTECTED_DACL_SECURITY_INFORMATION,
        None, None, dacl, None)


def add_to_group(group_sid: str, account: str) -> None:
    """Make ``account`` a member of the local group ``group_sid`` (its name is localised)."""
    import win32net
    import win32security

    name, _domain, _type = win32security.LookupAccountSid(None, win32security.ConvertStringSidToSid(group_sid))
    try:
        win32net.NetLocalGroupAddMembers(None, name, 3, [{"domainandname": account}])
    except win32net.error as exc:  # 1378: already a member
        if exc.winerror != 1378:
            raise


def install(plan: InstallPlan) -> None:
    """Lock the folders down, register the service, its account, recovery actions, config path
    and event source."""
    import subprocess

    import win32service
    import win32serviceutil

    for folder, sddl in plan.acl:
        apply_acl(folder, sddl)
    win32serviceutil.InstallService(
        plan.class_string, plan.name, plan.display_name, startType=plan.start_type,
        description=plan.description, userName=plan.account_name,
    )
    win32serviceutil.SetServiceCustomOption(plan.name, "config", plan.config)
    h = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        s = win32service.OpenService(h, plan.name, win32service.SERVICE_ALL_ACCESS)
        try:
            if plan.delayed:
                win32service.ChangeServiceConfig2(
                    s, win32service.SERVICE_CONFIG_DELAYED_AUTO_START_INFO, True)
            if plan.account_name:
                # the service SID in the token, so the folder ACL naming it applies
                win32service.ChangeServiceConfig2(
                    s, win32service.SERVICE_CONFIG_SERVICE_SID_INFO, win32service.SERVICE_SID_TYPE_UNRESTRICTED)
        finally:
            win32service.CloseServiceHandle(s)
    finally:
        win32service.CloseServiceHandle(h)
    for group_sid, account in plan.groups:
        add_to_group(group_sid, account)
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
            self._pipeline = None

        def SvcOther(self, control):
            # `sc control <name> 129`: reload the rules (as `etw-sensor reload` and SIGHUP)
            reloader = getattr(self._pipeline, "reloader", None)
            if control == SERVICE_CONTROL_RELOAD and reloader is not None:
                reloader.request("service")

        def SvcStop(self):
            # The drain may take drain_timeout_s: tell the SCM so it does not give up early.
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING,
                                     waitHint=int((self._drain + 5) * 1000))
            self._stop.set()

        # Accept system shutdown too, so queued events and the spool are flushed.
        SvcShutdown = SvcStop

        def _refuse(self, errors):
            # Fail closed: the service does not run without its rules or with a bad config.
            code, message = start_failure(errors)
            servicemanager.LogErrorMsg(message)
            self.ReportServiceStatus(win32service.SERVICE_STOPPED,
                                     win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=code)

        def SvcDoRun(self):
            from .assemble import instance_lock, prepare, setup_logging, validate
            from .runner import serve
            from .config import ConfigError, load
            from .lock import AlreadyRunning

            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE,
                                  servicemanager.PYS_SERVICE_STARTED, (self._name, ""))
            try:
                path = win32serviceutil.GetServiceCustomOption(self._name, "config")
                cfg = load(path)
                self._drain = cfg.sensor.drain_timeout_s
                # The same checks as `run` and `config test`; the folder's ACL protects the
                # config here (POSIX mode bits mean nothing on Windows).
                checked = validate(cfg, allow_readable_config=True)
                if checked.errors:
                    self._refuse(checked.errors)
                    return
                setup_logging(cfg)
                lock = instance_lock(cfg).acquire()  # held for the life of the service
            except ConfigError as exc:
                self._refuse(exc.errors)
                return
            except (AlreadyRunning, OSError) as exc:
                # A second sensor on this data folder: exit 2 naming the holder's pid.
                servicemanager.LogErrorMsg(f"etw-sensor: not started: {exc}")
                self.ReportServiceStatus(win32service.SERVICE_STOPPED,
                                         win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=2)
                return
            except Exception as exc:  # noqa: BLE001 - the SCM gets a reason, not a crash
                self._refuse([f"{type(exc).__name__}: {exc}"])
                return
            try:
                try:
                    pipeline = prepare(cfg, checked, owner=True)
                    self._pipeline = pipeline    # SvcOther: the reload control code
                except ConfigError as exc:
                    self._refuse(exc.errors)
                    return
                except Exception as exc:  # noqa: BLE001 - the SCM gets a reason, not a crash
                    self._refuse([f"{type(exc).__name__}: {exc}"])
                    return
                code = serve(pipeline, self._stop, cfg.sensor.drain_timeout_s)
            finally:
                lock.release()
            if code:
                self.ReportServiceStatus(win32service.SERVICE_STOPPED,
                                         win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=code)

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
