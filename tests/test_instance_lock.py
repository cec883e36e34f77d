"""One sensor per data folder: a second `run` exits 2 naming the holder; a crash frees the lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.daemon.lock import AlreadyRunning, InstanceLock, PosixLocking, lock_paths, read_pid

REPO = Path(__file__).resolve().parents[1]
MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe"}
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the POSIX lock and signals")

_HOLD = r"""
import sys, time
from sensor.daemon.lock import InstanceLock, PosixLocking
lock = InstanceLock(sys.argv[1:], PosixLocking()).acquire()
print("held", flush=True)
time.sleep(600)
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def holder(*paths: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, *map(str, paths)], stdout=subprocess.PIPE,
                            text=True, env=env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@posix_only
def test_a_second_holder_is_refused_with_the_first_ones_pid_and_a_crash_frees_it(tmp_path):
    path = tmp_path / "data" / "sensor.lock"
    proc = holder(path)
    try:
        with pytest.raises(AlreadyRunning) as err:
            InstanceLock([path], PosixLocking()).acquire()
        assert err.value.pid == proc.pid and f"pid {proc.pid}" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the OS drops the lock
        proc.wait(30)
        proc.stdout.close()
    with InstanceLock([path], PosixLocking()) as lock:
        assert lock.held and read_pid(path) == os.getpid()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@posix_only
def test_every_lock_is_taken_or_none(tmp_path):
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    proc = holder(b)
    try:
        lock = InstanceLock([a, b], PosixLocking())
        with pytest.raises(AlreadyRunning):
            lock.acquire()
        assert not lock.held
        InstanceLock([a], PosixLocking()).acquire().release()  # the first one was given back
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()


def test_lock_paths_cover_a_spool_outside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    assert lock_paths(str(data), str(data / "spool.sqlite")) == [data / "sensor.lock"]
    assert lock_paths(str(data), str(tmp_path / "elsewhere" / "s.sqlite")) == \
        [data / "sensor.lock", tmp_path / "elsewhere" / "s.sqlite.lock"]


@posix_only
def test_second_run_on_the_same_data_folder_exits_2_naming_the_first(tmp_path):
    rec = tmp_path / "rec.jsonl"
    # 600 starts one second apart in event time at real speed: the first run keeps going
    rec.write_text("".join(json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof",
                                           UtcTime=f"2026-01-01 00:{i // 60:02d}:{i % 60:02d}.000")) + "\n"
                           for i in range(600)))
    out = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "state"}"\nheartbeat_s = 0.2\n'
                   f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\nspeed = 1.0\n'
                   f'[output]\nformat = "jsonl"\npath = "{out}"\n')
    cfg.chmod(0o600)  # the sensor refuses a config others can read
    first = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], stderr=subprocess.PIPE,
                             text=True, env=env())
    try:
        status = tmp_path / "state" / "status.json"
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.exists(), "the first sensor did not start"
        second = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True,
                                text=True, env=env(), timeout=120)
        assert second.returncode == 2
        assert f"another sensor (pid {first.pid}) is running with {tmp_path / 'state'}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first one was not disturbed
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # the crashed sensor's lock is gone with it: the next start runs (and is stopped cleanly)
        third = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], stderr=subprocess.PIPE,
                                 text=True, env=env())
        mtime = status.stat().st_mtime
        deadline = time.monotonic() + 60
        while status.stat().st_mtime == mtime and third.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert third.poll() is None, third.stderr.read() if third.stderr else ""
        third.send_signal(signal.SIGTERM)
        _, err = third.communicate(timeout=60)
        assert third.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
        if first.stderr:
            first.stderr.close()


@posix_only
def test_a_second_sensor_with_its_own_data_folder_but_the_same_spool_is_refused(tmp_path):
    """Two configs that share only the spool file: the spool's own lock refuses the second."""
    spool = tmp_path / "shared" / "spool.sqlite"
    lock = holder(tmp_path / "a" / "sensor.lock", Path(str(spool) + ".lock"))  # what sensor A holds
    try:
        rec = tmp_path / "rec.jsonl"
        rec.write_text(json.dumps(dict(MOF, CommandLine="mofcomp x.mof")) + "\n")
        cfg = tmp_path / "b.toml"
        cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "b"}"\nheartbeat_s = 0\n'
                       f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                       f'[output]\nformat = "jsonl"\npath = "{tmp_path / "alerts.jsonl"}"\n'
                       f'[spool]\npath = "{spool}"\n')
        cfg.chmod(0o600)
        r = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True,
                           text=True, env=env(), timeout=120)
        assert r.returncode == 2, r.stderr
        assert f"another sensor (pid {lock.pid}) is running with {spool.parent} (lock spool.sqlite.lock)" in r.stderr
        assert "Traceback" not in r.stderr
        assert not spool.exists()              # refused before the spool was opened
        assert not (tmp_path / "alerts.jsonl").exists()
    finally:
        lock.kill()
        lock.wait(30)
        lock.stdout.close()
