"""Private by default: what the sensor writes is 0600 (folders 0700) whatever the umask; the test
receiver keeps its key private and its control endpoints shut."""
from __future__ import annotations

import json
import os
import stat
import sys
import urllib.error
import urllib.request
import ssl
from pathlib import Path

import pytest

from sensor.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes (Windows: the service ACL)")

ROOT = Path(__file__).resolve().parents[1]
MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
       "CommandLine": "mofcomp secret-password.mof"}


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_run_writes_everything_private(tmp_path, umask_022):
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps(MOF) + "\n")
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "state/data"\n[logging]\nfile = "logs/sensor.log"\n'
                   f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n')
    os.chmod(cfg, 0o600)
    assert main(["run", "-c", str(cfg)]) == 0
    data = tmp_path / "state" / "data"
    for folder in (tmp_path / "state", data, tmp_path / "logs"):
        assert mode(folder) == 0o700, folder
    for f in (data / "spool.sqlite", data / "alerts.jsonl", data / "status.json", tmp_path / "logs" / "sensor.log"):
        assert mode(f) == 0o600, f
    assert "secret-password" in (data / "alerts.jsonl").read_text()      # what is being protected


def test_spool_wal_and_shm_are_private_while_open(tmp_path, umask_022):
    from sensor.deliver.spool import Spool
    sp = Spool(tmp_path / "d" / "spool.sqlite")
    sp.put_many([{"id": "a1", "x": "secret"}])
    names = {p.name: mode(p) for p in (tmp_path / "d").iterdir()}
    sp.close()
    assert names == {"spool.sqlite": 0o600, "spool.sqlite-wal": 0o600, "spool.sqlite-shm": 0o600}
    assert mode(tmp_path / "d") == 0o700


def test_an_existing_loose_alerts_file_is_tightened(tmp_path, umask_022):
    from sensor.deliver.jsonl import JsonlOutput
    out = tmp_path / "alerts.jsonl"
    out.write_text("")
    os.chmod(out, 0o644)
    assert JsonlOutput(out).send_batch([{"id": "a", "rule": {}}]).ok
    assert mode(out) == 0o600


def test_pack_and_scan_output_are_private(tmp_path, umask_022, capsys):
    pack = tmp_path / "rules.pack"
    assert main(["rules", "compile", str(ROOT / "tests/data/sigma/rules/mofcomp.yml"), "-o", str(pack)]) == 0
    assert mode(pack) == 0o600
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps(MOF) + "\n")
    assert main(["scan", str(rec), "-o", str(tmp_path / "out.jsonl")]) == 0
    assert mode(tmp_path / "out.jsonl") == 0o600


def test_status_file_is_private(tmp_path, umask_022):
    from sensor.daemon.health import Status, write_status
    write_status(str(tmp_path / "new" / "status.json"), Status())
    assert mode(tmp_path / "new" / "status.json") == 0o600 and mode(tmp_path / "new") == 0o700


def test_receiver_key_is_private_and_its_control_needs_the_token(tmp_path, umask_022):
    pytest.importorskip("cryptography", reason="the local receiver generates certificates with it")
    from sensor.testing.receiver import Receiver
    with Receiver(directory=tmp_path / "rx", token="tok") as rx:
        assert mode(rx.key_file) == 0o600 and mode(tmp_path / "rx") == 0o700
        ctx = ssl.create_default_context(cafile=str(rx.ca_file))

        def call(path, body=None, token=None):
            req = urllib.request.Request(rx.url + path, data=body, method="POST" if body else "GET")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        cmd = json.dumps({"fail": 500, "count": 5}).encode()
        assert call("/_receiver/control", cmd) == 401
        assert call("/_receiver/control", cmd, token="tok") == 401         # the alert token is not it
        assert call("/_receiver/stats") == 401
        assert rx.fail_queue == []                                         # nothing changed
        assert call("/_receiver/control", cmd, token=rx.control_token) == 200
        assert len(rx.fail_queue) == 5
        assert call("/_receiver/stats", token=rx.control_token) == 200
        client_cert, client_key = rx.issue_client_cert()
        assert mode(client_key) == 0o600
