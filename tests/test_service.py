"""Windows service commands: argument handling and the install plan (tested off Windows)."""
from __future__ import annotations

import sys

import pytest

from sensor.cli import main
from sensor.daemon.service import STARTUP, ServiceError, install_plan, state_name


def test_install_plan():
    p = install_plan(r"C:\Program Files\etw-sensor\sensor.toml", "delayed")
    assert p.name == "EtwSensor" and p.delayed and p.start_type == STARTUP["auto"]
    assert p.class_string == "sensor.daemon.service_windows.SensorService"
    assert p.sc_failure_command() == ["sc.exe", "failure", "EtwSensor", "reset=", "86400",
                                      "actions=", "restart/60000/restart/60000/restart/60000"]
    assert install_plan(r"D:\s.toml", "manual", "EtwSensor2").display_name == "ETW Sensor (EtwSensor2)"


@pytest.mark.parametrize("config,startup,name,msg", [
    ("", "auto", "EtwSensor", "--config is required"),
    ("sensor.toml", "auto", "EtwSensor", "absolute Windows path"),
    (r"C:\s.toml", "sometimes", "EtwSensor", "--startup must be one of"),
    (r"C:\s.toml", "auto", "bad name", "invalid service name"),
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
