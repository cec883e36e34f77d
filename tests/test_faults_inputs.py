"""Poison input never ends a source: real files, the real readers, `scan` and `run` as processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.sources import ReadStats, read_paths
from sensor.sources.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[1]
MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe"}


def mof(i: int) -> bytes:
    return json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof", ProcessId=1000 + i)).encode() + b"\n"


DEEP = b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"\n"     # RecursionError in the JSON decoder
DEEP_LIST = b"[" * 100_000 + b"]" * 100_000 + b"\n"


def poisoned(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "a.jsonl"
    a.write_bytes(mof(1) + DEEP + mof(2) + DEEP_LIST + mof(3))
    b = tmp_path / "b.jsonl"
    b.write_bytes(mof(4))
    return a, b


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_record_the_decoder_chokes_on_is_reported_and_reading_goes_on(tmp_path):
    a, b = poisoned(tmp_path)
    stats = ReadStats()
    events = list(read_paths([a, b], stats))
    assert [e["ProcessId"] for e in events] == [1001, 1002, 1003, 1004]
    where = [(os.path.basename(e.path), e.where) for e in stats.errors]
    assert where == [("a.jsonl", "line 2"), ("a.jsonl", "line 4")]
    assert all("RecursionError" in e.message for e in stats.errors)
    assert stats.records == 6 and stats.events == 4 and stats.as_dict()["errors"] == 2


def test_scan_reports_the_poison_line_and_scans_every_file(tmp_path):
    a, b = poisoned(tmp_path)
    r = subprocess.run([sys.executable, "-m", "sensor", "scan", str(a), str(b)], capture_output=True,
                       text=True, env=env(), timeout=120)
    assert r.returncode == 1, r.stderr  # input errors were reported
    assert "Traceback" not in r.stderr
    assert f"{a}:line 2: cannot decode: RecursionError" in r.stderr
    assert f"{a}:line 4: cannot decode: RecursionError" in r.stderr
    alerts = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(alerts) == 4  # the seed rule fires on every mofcomp start, in both files


def test_run_replays_every_file_past_a_poison_line(tmp_path):
    a, b = poisoned(tmp_path)
    out = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "state"}"\nheartbeat_s = 0\n'
                   f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{a}", "{b}"]\n'
                   f'[output]\nformat = "jsonl"\npath = "{out}"\n')
    cfg.chmod(0o600)  # the sensor refuses a config others can read
    r = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True, text=True,
                       env=env(), timeout=120)
    assert r.returncode == 1, r.stderr  # the replay had input errors: said at the end, exit 1
    assert "2 input file(s) or record(s) could not be read" in r.stderr
    assert "replay source failed" not in r.stderr and "Traceback" not in r.stderr
    assert "a.jsonl:line 2: cannot decode: RecursionError" in r.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    alerts = [d for d in docs if d["event"]["kind"] != "metric"]   # not the ledger's health documents
    assert len(alerts) == 4  # every mofcomp start of both files became an alert


def test_a_line_over_the_limit_is_skipped_and_reported(tmp_path):
    f = tmp_path / "long.jsonl"
    long_line = json.dumps(dict(MOF, CommandLine="x" * 5000)).encode() + b"\n"
    f.write_bytes(mof(1) + long_line + mof(2))
    stats = ReadStats()
    assert [e["ProcessId"] for e in read_jsonl(str(f), stats, max_line_bytes=4096)] == [1001, 1002]
    (err,) = stats.errors
    assert err.where == "line 2" and "line too long" in err.message and str(len(long_line)) in err.message
    stats = ReadStats()
    assert len(list(read_jsonl(str(f), stats, max_line_bytes=len(long_line) - 1))) == 3  # the cap is the content
    assert not stats.errors


def test_max_line_bytes_is_a_config_key(tmp_path):
    from sensor.daemon.config import ConfigError, parse
    cfg = parse({"source": {"kind": "replay", "replay": {"paths": ["x"], "max_line_bytes": 4096}}}, "t.toml")
    assert cfg.source.replay.max_line_bytes == 4096
    with pytest.raises(ConfigError, match="source.replay.max_line_bytes"):
        parse({"source": {"kind": "replay", "replay": {"paths": ["x"], "max_line_bytes": 0}}}, "t.toml")


# VmHWM: this process's own peak RSS. (ru_maxrss would carry over the peak of the forked copy of
# the test runner from before the exec on Linux.)
_RSS = r"""
import sys
from sensor.sources import ReadStats, read_paths
stats = ReadStats()
n = sum(1 for _ in read_paths([sys.argv[1]], stats))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(n, stats.error_count, hwm)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS read from /proc (Linux)")
def test_a_300_mb_file_without_newlines_reads_in_bounded_memory(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as fh:  # 300 MB of zeros (sparse: cheap to make), then one good line
        fh.truncate(300 * 1024 * 1024)
        fh.seek(0, 2)
        fh.write(b"\n" + mof(7))
    r = subprocess.run([sys.executable, "-c", _RSS, str(f)], capture_output=True, text=True, env=env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    events, errors, rss_kb = map(int, r.stdout.split())
    assert events == 1 and errors == 1
    assert rss_kb < 150 * 1024, f"peak RSS {rss_kb // 1024} MiB reading a 300 MB line"


def big_rule(path: Path, values: int) -> Path:
    """A process_creation rule with ``values`` OR-ed CommandLine values (about 30 bytes each)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("title: big\nid: 11111111-2222-3333-4444-555555555555\nstatus: test\n"
                 "logsource:\n  category: process_creation\n  product: windows\n"
                 "detection:\n  selection:\n    CommandLine|contains:\n")
        for i in range(values):
            fh.write(f"      - 'value-{i:08d}-xxxx'\n")
        fh.write("  condition: selection\nlevel: high\n")
    return path


def validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", "rules", "validate", *map(str, paths)],
                          capture_output=True, text=True, env=env(), timeout=300)


def test_rules_validate_refuses_a_rule_file_too_large_or_with_too_many_values(tmp_path):
    pytest.importorskip("sigma", reason="reading Sigma YAML needs pySigma (the sigma extra)")
    from sensor.detect.sigma import MAX_RULE_FILE_BYTES, MAX_RULE_VALUES

    huge = big_rule(tmp_path / "huge.yml", 300_000)            # 9 MB: the size bound
    assert huge.stat().st_size > MAX_RULE_FILE_BYTES
    many = big_rule(tmp_path / "many.yml", MAX_RULE_VALUES + 5_000)  # under 1 MiB: the value bound
    assert many.stat().st_size < MAX_RULE_FILE_BYTES
    fine = big_rule(tmp_path / "fine.yml", 2_000)              # more than any SigmaHQ rule has
    r = validate(huge, many, fine)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert f"{huge}: rule file too large (more than {MAX_RULE_FILE_BYTES:,} bytes)" in r.stdout
    assert f"{many}:7: too many detection values (more than {MAX_RULE_VALUES:,} in one file)" in r.stdout
    assert str(fine) not in r.stdout.split("rejected")[-1]   # the ordinary one loads
    assert "1 loaded, 2 rejected" in r.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo (POSIX)")
def test_a_rule_pack_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    # no writer ever opens the FIFO: a blocking open would hang (the subprocess timeout only
    # guards that); the folder's real rule still loads
    folder = tmp_path / "rules"
    folder.mkdir()
    os.mkfifo(folder / "evil.pack")
    (folder / "junk.pack").write_text("not a pack")
    r = validate(folder)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "evil.pack: cannot read rule pack: not a regular file" in r.stdout, r.stdout
    assert "junk.pack: not a rule pack" in r.stdout, r.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo (POSIX)")
def test_a_rule_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    pytest.importorskip("sigma", reason="reading Sigma YAML needs pySigma (the sigma extra)")
    fifo = tmp_path / "rule.yml"
    os.mkfifo(fifo)
    r = validate(fifo)        # before: blocked for good in open()
    assert r.returncode == 1 and f"{fifo}: cannot read: not a regular file" in r.stdout, r.stdout + r.stderr


def nested(depth: int) -> dict:
    """A value ``depth`` levels deep (the record holding it is one level more)."""
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_a_record_nested_past_the_bound_is_refused_and_the_one_at_it_read(tmp_path):
    from sensor.sources.jsonl import MAX_NESTING
    at = dict(MOF, CommandLine="mofcomp 1.mof", ProcessId=1001, Extra=nested(MAX_NESTING - 1))
    past = dict(MOF, CommandLine="mofcomp 2.mof", ProcessId=1002, Extra=[nested(MAX_NESTING - 1)])
    record = {"eid": 1, "channel": "Microsoft-Windows-Sysmon/Operational", "computer": "h",
              "data": dict(MOF, CommandLine="x", ProcessId=1003, Extra=nested(MAX_NESTING))}
    p = tmp_path / "n.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in (at, past, record)) + mof(4).decode())
    stats = ReadStats()
    events = list(read_jsonl(str(p), stats))
    assert [e["ProcessId"] for e in events] == [1001, 1004]
    assert [(e.where, e.message) for e in stats.errors] == [
        ("line 2", f"nested deeper than {MAX_NESTING} levels: not a process start"),
        ("line 3", f"nested deeper than {MAX_NESTING} levels: not a process start")]


def test_a_record_nested_as_deep_as_the_decoder_allows_cannot_hold_up_delivery(tmp_path):
    # 987 levels decode on the replay thread; the alert carrying them could not be encoded again
    # on the forwarder's deeper stack, so the output failed the batch on every attempt and no
    # alert of it (the good one included) ever reached the receiver.
    from sensor.testing.receiver import Receiver
    good = json.dumps(dict(MOF, CommandLine="mofcomp 1.mof", ProcessId=1001))
    bad = good[:-1] + ', "Extra": ' + '{"a": ' * 986 + "1" + "}" * 986 + "}"
    p = tmp_path / "n.jsonl"
    p.write_text(bad + "\n" + mof(2).decode())
    with Receiver(token="s3cr3t-token") as rec:
        cfg = tmp_path / "sensor.toml"
        cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "state"}"\nheartbeat_s = 0\ndrain_timeout_s = 10\n'
                       f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{p}"]\n'
                       f'[output]\nformat = "ecs"\nurl = "{rec.url}/x"\ntoken = "s3cr3t-token"\n'
                       f'ca_file = "{rec.ca_file}"\n')
        cfg.chmod(0o600)
        r = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True,
                           text=True, env=env(), timeout=120)
        ids = rec.ids()
    assert "Traceback" not in r.stderr and "RecursionError" not in r.stderr, r.stderr
    assert "n.jsonl:line 1: nested deeper than" in r.stderr
    assert "0 left in the spool" in r.stderr, r.stderr
    assert r.returncode == 1                      # the refused line is an input error
    assert len(ids) >= 1                          # the good start's alert (and health documents) delivered
