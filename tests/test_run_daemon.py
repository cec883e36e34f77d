"""`etw-sensor run` as a process: SIGTERM drains and stops cleanly; fail closed on rules; exit codes
as the README says; the completeness ledger read back from the local HTTPS receiver."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest

from sensor.cli import main

MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe"}
DATA = os.path.join(os.path.dirname(__file__), "data")
DATA_DIR = Path(DATA)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and modes")


def receiver_cls():
    pytest.importorskip("cryptography", reason="the local receiver generates certificates with it")
    from sensor.testing.receiver import Receiver
    return Receiver


def write_config(tmp_path, text: str) -> str:
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(text)
    os.chmod(cfg, 0o600)
    return str(cfg)


def recording(tmp_path, n: int, name: str = "rec.jsonl", **extra) -> str:
    rec = tmp_path / name
    rec.write_text("".join(json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof",
                                           UtcTime=f"2026-01-01 00:{i // 60:02d}:{i % 60:02d}.000", **extra))
                           + "\n" for i in range(n)))
    return str(rec)


def output_to(receiver, fmt: str = "ecs") -> str:
    return (f'[output]\nformat = "{fmt}"\nurl = "{receiver.url}/ingest"\nca_file = "{receiver.ca_file}"\n'
            f'token = "tok"\n')


def alerts(receiver):
    return [d for d in receiver.documents("alert") if d["event"]["dataset"] == "sensor.alert"]


def test_sigterm_drains_and_stops(tmp_path, capsys):
    Receiver = receiver_cls()
    # 200 starts one second apart in event time, replayed 20x faster: ~10 s if left alone.
    rec = recording(tmp_path, 200)
    with Receiver(token="tok", keep_documents=True) as receiver:
        cfg = write_config(tmp_path,
                           f'[sensor]\ndata_dir = "state"\nheartbeat_s = 0.2\n'
                           f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\nspeed = 20.0\n'
                           + output_to(receiver) + '[delivery]\nbatch_wait_ms = 20\n')
        proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)],
                                stderr=subprocess.PIPE, text=True)
        status_file = tmp_path / "state" / "status.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (alerts(receiver) and len(receiver.documents("metric")) >= 2):
            time.sleep(0.05)
        assert alerts(receiver), "no alert arrived while running"
        assert len(receiver.documents("metric")) >= 2, "no heartbeat arrived while running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "signal 15: stopping" in err and "stopped:" in err
        st = json.loads(status_file.read_text())
        # every alert raised before the stop was delivered (the spool drained), none twice
        ids = [d["event"]["id"] for d in alerts(receiver)]
        assert st["alerts"]["total"] == len(set(ids)) == len(ids)
        assert 0 < st["alerts"]["total"] < 200            # it really stopped early
        assert st["spool"]["depth"] == 0 and st["sensor"]["state"] == "stopped"
        # the ledger: one boot, sequence numbers 0, 1, 2, ... without a gap, start ... stop
        ledger = receiver.documents("metric")
        seqs = [d["event"]["sequence"] for d in ledger]
        assert sorted(seqs) == list(range(len(seqs))) and len(seqs) >= 3
        assert len({d["agent"]["ephemeral_id"] for d in ledger}) == 1
        by_seq = {d["event"]["sequence"]: d for d in ledger}
        assert by_seq[0]["event"]["action"] == "start" and by_seq[len(seqs) - 1]["event"]["action"] == "stop"
        assert {by_seq[i]["event"]["action"] for i in range(1, len(seqs) - 1)} == {"heartbeat"}
    assert main(["status", "--status-file", str(status_file)]) == 0
    out = capsys.readouterr().out
    assert "heartbeat:" in out and "Potential Suspicious Mofcomp Execution  [seed-cc784d634d6f7fd1]" in out


def test_a_restart_is_a_new_boot_and_the_sequence_starts_again(tmp_path, capsys):
    Receiver = receiver_cls()
    rec = recording(tmp_path, 3)
    with Receiver(token="tok", keep_documents=True) as receiver:
        cfg = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\n[source]\nkind = "replay"\n'
                                     f'[source.replay]\npaths = ["{rec}"]\n' + output_to(receiver))
        for _ in range(2):
            code = main(["run", "-c", cfg])
            assert code == 0, capsys.readouterr().err
        ledger = receiver.documents("metric")
        boots: dict[str, set[int]] = {}
        for d in ledger:     # (delivery is at-least-once: a document may arrive twice)
            boots.setdefault(d["agent"]["ephemeral_id"], set()).add(d["event"]["sequence"])
        assert len(boots) == 2 and all(s == {0, 1} for s in boots.values()), \
            [(d["agent"]["ephemeral_id"], d["event"]["sequence"], d["event"]["action"]) for d in ledger]


# -- fail closed ------------------------------------------------------------------------------

def test_missing_rules_and_a_damaged_pack_refuse_the_start(tmp_path, capsys):
    rec = recording(tmp_path, 3)
    pack = tmp_path / "rules.pack"
    assert main(["rules", "compile", os.path.join(DATA, "sigma", "rules", "mofcomp.yml"),
                 "-o", str(pack)]) == 0
    data = bytearray(pack.read_bytes())
    data[-10] ^= 0x01                                   # one flipped byte
    pack.write_bytes(bytes(data))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.yml").write_bytes((DATA_DIR / "sigma" / "errors" / "unknown_modifier.yml").read_bytes())
    cfg = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\n[source]\nkind = "replay"\n'
                                 f'[source.replay]\npaths = ["{rec}"]\n'
                                 f'[rules]\npaths = ["/nonexistent/rules", "{pack}", "bad"]\n')
    capsys.readouterr()
    assert main(["run", "-c", cfg]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/rules: no such file or folder" in err
    assert "rules.pack: rule pack checksum mismatch" in err
    assert re.search(r"broken\.yml:\d+: ", err)        # the rejected rule, with its file and line
    assert 'on_error = "skip"' in err and "not started" in err
    assert not (tmp_path / "state").exists()           # nothing ran, nothing was created
    assert main(["config", "test", cfg]) == 2          # config test says the same


def test_on_error_skip_starts_and_tells_the_siem(tmp_path, capsys):
    Receiver = receiver_cls()
    rec = recording(tmp_path, 3)
    with Receiver(token="tok", keep_documents=True) as receiver:
        cfg = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\n[source]\nkind = "replay"\n'
                                     f'[source.replay]\npaths = ["{rec}"]\n'
                                     f'[rules]\npaths = ["/nonexistent/rules"]\non_error = "skip"\n'
                                     + output_to(receiver))
        assert main(["run", "-c", cfg]) == 0
        err = capsys.readouterr().err
        assert "/nonexistent/rules: no such file or folder (on_error = \"skip\": running without it)" in err
        assert "rules 2 (1 rejected)" in err                      # the heartbeat line
        [health] = [d for d in receiver.documents("alert") if d["event"]["dataset"] == "sensor.health_alert"]
        assert health["rule"]["id"] == "sensor-health-rules-rejected"
        assert "/nonexistent/rules" in health["message"]
        assert health["sensor"]["health"]["problems"] == [
            "rule rejected: /nonexistent/rules: no such file or folder"]
        start = [d for d in receiver.documents("metric") if d["event"]["action"] == "start"][0]
        assert start["sensor"]["health"]["rules"]["rejected"] == 1
    st = json.loads((tmp_path / "state" / "status.json").read_text())
    assert st["rules"]["rejected"] == 1 and "rule problem" in " ".join(st["problems"])
    assert main(["status", "--status-file", str(tmp_path / "state" / "status.json")]) == 0
    assert "/nonexistent/rules: no such file or folder" in capsys.readouterr().out


# -- exit codes ---------------------------------------------------------------------------------

def test_exit_1_when_alerts_are_left_undelivered(tmp_path, capsys):
    Receiver = receiver_cls()
    rec = recording(tmp_path, 5)
    with Receiver(token="tok") as receiver:
        receiver.fail_next(503, count=1000)
        cfg = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\ndrain_timeout_s = 1.0\n'
                                     f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                                     + output_to(receiver) + '[delivery]\nbatch_wait_ms = 0\n'
                                                            'backoff_base_s = 0.05\nbackoff_cap_s = 0.1\n')
        assert main(["run", "-c", cfg]) == 1
    err = capsys.readouterr().err
    assert "NOT delivered: kept in the spool" in err
    st = json.loads((tmp_path / "state" / "status.json").read_text())
    assert st["spool"]["depth"] >= 5 and st["delivery"]["failed_attempts"] > 0


def test_exit_1_when_alerts_are_dead_lettered(tmp_path, capsys):
    Receiver = receiver_cls()
    rec = recording(tmp_path, 4)
    with Receiver(token="tok") as receiver:
        receiver.reject_containing = "mofcomp 2.mof"     # the receiver refuses this one alert (400)
        cfg = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\n'
                                     f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                                     + output_to(receiver))
        assert main(["run", "-c", cfg]) == 1
    assert "1 alert(s) rejected by the receiver and dead-lettered" in capsys.readouterr().err
    assert main(["spool", "dead", "-c", cfg]) == 0
    assert "Potential Suspicious Mofcomp Execution" in capsys.readouterr().out


def test_exit_1_on_unreadable_or_missing_input(tmp_path, capsys):
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps(MOF) + "\nnot json\n")
    cfg = write_config(tmp_path, '[sensor]\ndata_dir = "state"\n')
    assert main(["run", "-c", cfg, "--replay", str(rec)]) == 1
    assert "1 input file(s) or record(s) could not be read" in capsys.readouterr().err
    # a missing input given on the command line: the run reads the others and says so (as scan)
    assert main(["run", "-c", cfg, "--replay", "/nonexistent.jsonl", "--replay", str(rec)]) == 1
    err = capsys.readouterr().err
    assert "/nonexistent.jsonl: no such file or folder" in err and "2 input file(s) or record(s)" in err
    # a missing one named by the config file is a configuration error (`config test` finds it)
    bad = write_config(tmp_path, f'[sensor]\ndata_dir = "state"\n[source]\nkind = "replay"\n'
                                 f'[source.replay]\npaths = ["/nonexistent.jsonl"]\n')
    assert main(["run", "-c", bad]) == 2
    assert "source.replay.paths[0]: /nonexistent.jsonl: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse: a negative speed is a usage error
        from sensor.cli import build_parser
        build_parser().parse_args(["run", "--replay", str(rec), "--speed", "-1"])
    assert main(["run", "--replay", str(rec), "--speed", "-1"]) == 2


# -- signals -----------------------------------------------------------------------------------

def _interrupted_inside_wait(stop, handler):
    """What Python does when a signal lands while the main thread is inside ``stop.wait()`` at a
    moment it holds the event's own lock: it runs the handler right there, in that thread."""
    import threading

    def main_thread():
        with stop._cond:
            handler(signal.SIGTERM, None)
    t = threading.Thread(target=main_thread, daemon=True)
    t.start()
    t.join(60)                                   # 60 s only guards a hang
    return not t.is_alive()


def test_a_stop_signal_landing_inside_the_stop_wait_does_not_hang_the_sensor():
    import threading
    from sensor.daemon.runner import SignalRelay
    stop = threading.Event()
    relay = SignalRelay({signal.SIGTERM: lambda signum: stop.set()}).install()
    try:
        assert _interrupted_inside_wait(stop, relay.handler)
        assert stop.wait(60)                     # the relay thread set it
        stop.clear()
        os.kill(os.getpid(), signal.SIGTERM)     # and a real one
        assert stop.wait(60)
    finally:
        relay.close()
    assert signal.getsignal(signal.SIGTERM) is not relay.handler   # the handler found is back
