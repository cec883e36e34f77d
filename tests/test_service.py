"""Windows service commands: argument handling and the install plan (tested off Windows)."""
from __future__ import annotations

import sys

import pytest

from sensor.cli import main
from sensor.daemon.service import (STARTUP, ServiceError, acl_target, folder_sddl, install_plan,
                                   service_sid, start_failure, state_name)


def test_install_plan():
    p = install_plan(r"C:\Program Files\etw-sensor\sensor.toml", "delayed")
    assert p.name == "EtwSensor" and p.delayed and p.start_type == STARTUP["auto"]
    assert p.class_string == "sensor.daemon.service_windows.SensorService"
    assert p.sc_failure_command() == ["sc.exe", "failure", "EtwSensor", "reset=", "86400",
                                      "actions=", "restart/60000/restart/60000/restart/60000"]
    assert install_plan(r"D:\etw\s.toml", "manual", "EtwSensor2").display_name == "ETW Sensor (EtwSensor2)"
    assert p.account == "localsystem" and p.account_name is None and p.groups == ()
    # LocalSystem: the config and data folders are SYSTEM and Administrators only, protected
    assert p.acl == ((r"C:\Program Files\etw-sensor", "D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"),
                     (r"C:\ProgramData\etw-sensor", "D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"))


@pytest.mark.parametrize("config,startup,name,msg", [
    ("", "auto", "EtwSensor", "--config is required"),
    ("sensor.toml", "auto", "EtwSensor", "absolute Windows path"),
    (r"C:\etw\s.toml", "sometimes", "EtwSensor", "--startup must be one of"),
    (r"C:\etw\s.toml", "auto", "bad name", "invalid service name"),
    (r"C:\s.toml", "auto", "EtwSensor", "a drive root"),
    (r"C:\Windows\s.toml", "auto", "EtwSensor", "shared by the system"),
    (r"C:\ProgramData\s.toml", "auto", "EtwSensor", "shared by the system"),
    (r"C:\Users\alice\s.toml", "auto", "EtwSensor", "system or profile folder"),
])
def test_install_plan_errors(config, startup, name, msg):
    with pytest.raises(ServiceError, match=msg):
        install_plan(config, startup, name)


def test_cli_dry_run_and_refusal(capsys):
    assert main(["service", "install", "-c", r"C:\etw\sensor.toml", "--dry-run"]) == 0
    assert "would install service 'EtwSensor'" in capsys.readouterr().out
    assert main(["service", "install", "-c", "relative.toml"]) == 2
    assert "absolute Windows path" in capsys.readouterr().err
    if sys.platform != "win32":
        assert main(["service", "status"]) == 2
        assert "need Windows" in capsys.readouterr().err


def test_state_names():
    assert state_name(4) == "running" and state_name(1) == "stopped" and "unknown" in state_name(99)


def test_windows_module_imports_lazily():
    import sensor.daemon.eventlog_windows as el
    import sensor.daemon.service_windows as sw  # must import on any OS (pywin32 only inside functions)
    assert callable(sw.install)
    if sys.platform != "win32":
        assert el.event_log_handler() is None


def test_service_sid_is_the_one_windows_derives():
    # `sc showsid TrustedInstaller` (a well-known virtual account SID, documented by Microsoft)
    assert service_sid("TrustedInstaller") == \
        "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    assert service_sid("trustedinstaller") == service_sid("TRUSTEDINSTALLER")   # case-insensitive


def test_virtual_account_plan():
    p = install_plan(r"C:\Program Files\etw-sensor\sensor.toml", "auto", account="virtual",
                     data_dir=r"D:\sensor-data")
    sid = service_sid("EtwSensor")
    assert p.account_name == "NT SERVICE\\EtwSensor"
    # it reads its config folder and owns its data folder; nobody else but SYSTEM and Administrators
    assert p.acl == ((r"C:\Program Files\etw-sensor", folder_sddl("FR", "EtwSensor")),
                     (r"D:\sensor-data", folder_sddl("FA", "EtwSensor")))
    assert p.acl[1][1] == f"D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{sid})"
    # ETW real-time sessions: Performance Log Users (S-1-5-32-559)
    assert p.groups == (("S-1-5-32-559", "NT SERVICE\\EtwSensor"),)
    with pytest.raises(ServiceError, match="--account must be one of"):
        install_plan(r"C:\etw\s.toml", account="admin")
    same = install_plan(r"C:\etw\s.toml", data_dir=r"C:\etw")
    assert len(same.acl) == 1


def test_acl_target():
    assert acl_target("C:\\Program Files\\etw-sensor\\") == r"C:\Program Files\etw-sensor"
    assert acl_target(r"C:\Users\alice\etw") == r"C:\Users\alice\etw"
    for bad in ("C:\\", "C:", r"\\server\share", r"C:\Program Files", r"c:\windows\system32"):
        with pytest.raises(ServiceError):
            acl_target(bad)


def test_start_failure_lists_every_problem():
    code, message = start_failure(["rules: a.yml:3: bad", "output.token: missing"])
    assert code == 2 and "a.yml:3: bad" in message and "output.token: missing" in message


def test_dry_run_prints_the_acl(capsys):
    assert main(["service", "install", "-c", r"C:\etw\sensor.toml", "--dry-run", "--account", "virtual"]) == 0
    out = capsys.readouterr().out
    assert "account NT SERVICE\\EtwSensor" in out
    assert r"would set the ACL of C:\etw to D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FR;;;S-1-5-80-" in out
    assert "Performance Log Users" in out
