"""`etw-sensor run` as a process: SIGTERM drains and stops cleanly; the status command reads it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from sensor.cli import main

MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe"}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_and_stops(tmp_path, capsys):
    pytest.importorskip("cryptography", reason="the local receiver generates certificates with it")
    from sensor.testing.receiver import Receiver

    # 200 starts one second apart in event time, replayed 20x faster: ~10 s if left alone.
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof",
                                           UtcTime=f"2026-01-01 00:{i // 60:02d}:{i % 60:02d}.000"))
                           + "\n" for i in range(200)))
    with Receiver(token="tok") as receiver:
        cfg = tmp_path / "sensor.toml"
        cfg.write_text(
            f'[sensor]\ndata_dir = "state"\nheartbeat_s = 0.2\n'
            f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\nspeed = 20.0\n'
            f'[output]\nformat = "ecs"\nurl = "{receiver.url}/ingest"\nca_file = "{receiver.ca_file}"\n'
            f'token = "tok"\n[delivery]\nbatch_wait_ms = 20\n')
        proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)],
                                stderr=subprocess.PIPE, text=True)
        status_file = tmp_path / "state" / "status.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not receiver.ids():
            time.sleep(0.05)
        assert receiver.ids(), "no alert arrived while running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "signal 15: stopping" in err and "stopped:" in err
        st = json.loads(status_file.read_text())
        # every alert raised before the stop was delivered (the spool drained), none twice
        assert st["alerts"]["total"] == len(set(receiver.ids())) == len(receiver.ids())
        assert 0 < st["alerts"]["total"] < 200            # it really stopped early
        assert st["spool"]["depth"] == 0
    assert main(["status", "--status-file", str(status_file)]) == 0
    out = capsys.readouterr().out
    assert "heartbeat:" in out and "seed-cc784d634d6f7fd1" in out
