"""Rule packs: round trip, identical matches, no pySigma needed, damaged packs refused."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from sensor.detect import matcher
from sensor.cli import main
from sensor.events import ProcessEvent
from sensor.detect.ir import RuleError
from sensor.detect.loader import load_rules
from sensor.detect.pack import MAGIC, PACK_VERSION, decode_pack, encode_pack, read_pack, write_pack

from .conftest import DATA, ROOT, SHARED, needs_shared

RULES = DATA / "sigma" / "rules"

EVENTS = [
    ProcessEvent(Image=r"C:\Windows\System32\wbem\mofcomp.exe", ParentImage=r"C:\x\cmd.exe",
                 CommandLine="mofcomp a.mof"),
    ProcessEvent(OriginalFileName="mofcomp.exe", CommandLine=r"x C:\Users\Public\y"),
    ProcessEvent(Image=r"C:\Windows\System32\wbem\mofcomp.exe", ParentImage=r"C:\x\cmd.exe",
                 CommandLine=r"mofcomp C:\Windows\Temp\a.mof"),
    ProcessEvent(Image="a.exe", Hashes="SHA1=1,IMPHASH=00000000000000000000000000000001"),
    ProcessEvent(Image="a.exe"),
]


@pytest.fixture
def pack(tmp_path):
    out = tmp_path / "rules.pack"
    assert main(["rules", "compile", str(RULES), "-o", str(out)]) == 0
    return out


def _strip(rule):
    d = rule.to_json()
    d.pop("origin")
    return d


def test_round_trip_gives_the_same_rules_and_matches(pack, engine):
    yaml_rules = load_rules([RULES], builtin=False).rules
    report = load_rules([pack], builtin=False)
    assert not report.rejected and report.files == 1
    assert [_strip(r) for r in report.rules] == [_strip(r) for r in yaml_rules]
    assert all(r.origin == "pack" for r in report.rules)
    a, b = matcher.create(yaml_rules, engine), matcher.create(report.rules, engine)
    verdicts = [a.match(e) for e in EVENTS]
    assert verdicts == [b.match(e) for e in EVENTS]
    assert verdicts == [[1], [1], [], [0], []]  # hashes.yml (0), mofcomp.yml (1): sorted


def test_pack_loads_without_pysigma_or_yaml(pack):
    code = (
        "import sys\n"
        "for m in ('sigma', 'yaml', 'jq', 're2', 'diskcache', 'requests', 'jinja2'):\n"
        "    sys.modules[m] = None  # importing any of them now fails\n"
        "from sensor.detect.loader import load_rules\n"
        f"r = load_rules([{str(pack)!r}], builtin=False)\n"
        "assert not r.rejected, r.rejected\n"
        "print(len(r.rules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_pack_is_plain_json_data(pack):
    data = pack.read_bytes()
    assert data.startswith(MAGIC)
    header, body = data[len(MAGIC):].split(b"\n", 1)
    h = json.loads(header)
    assert h["length"] == len(body) and h["sha256"] == hashlib.sha256(body).hexdigest()
    doc = json.loads(body)
    assert {r["id"] for r in doc["rules"]} == {"1dd05363-104e-4b4a-b963-196a534b03a1",
                                              "0b3c8a52-6f0e-4a8e-9a51-3d2b5a7a0011"}


def test_tampered_pack_is_refused(pack):
    data = bytearray(pack.read_bytes())
    i = data.index(b"mofcomp.exe")
    data[i] = ord("n")
    pack.write_bytes(bytes(data))
    with pytest.raises(RuleError, match="checksum mismatch"):
        read_pack(pack)
    report = load_rules([pack], builtin=False)
    assert report.rules == [] and "checksum mismatch" in report.rejected[0].reason
    assert report.rejected[0].path == str(pack)


def test_truncated_pack_is_refused(pack):
    data = pack.read_bytes()
    pack.write_bytes(data[: len(data) - 100])
    with pytest.raises(RuleError, match="truncated"):
        read_pack(pack)
    pack.write_bytes(data[: len(MAGIC) + 10])
    with pytest.raises(RuleError, match="truncated|damaged"):
        read_pack(pack)


def test_other_versions_and_garbage_are_refused(tmp_path):
    rules = load_rules([RULES], builtin=False).rules
    data = encode_pack(rules)
    with pytest.raises(RuleError, match="bad magic"):
        decode_pack(b"{}" + data)
    with pytest.raises(RuleError, match="not supported"):
        decode_pack(data.replace(b'"pack": %d' % PACK_VERSION, b'"pack": 99', 1))
    with pytest.raises(RuleError, match="header is damaged"):
        decode_pack(MAGIC + b"{nope\n{}")


def test_a_consistent_pack_with_an_invalid_rule_is_refused():
    rules = load_rules([RULES], builtin=False).rules
    body = json.loads(encode_pack(rules).split(b"\n", 2)[2])
    body["rules"][0]["predicates"][0][1] = "exec"   # not an IR op
    raw = json.dumps(body).encode()
    header = json.dumps({"pack": 1, "ir": 1, "length": len(raw),
                         "sha256": hashlib.sha256(raw).hexdigest()}).encode()
    with pytest.raises(RuleError, match="invalid rule"):
        decode_pack(MAGIC + header + b"\n" + raw)


def test_folders_pick_up_packs_and_validate_reads_them(pack, tmp_path, capsys):
    report = load_rules([tmp_path], builtin=False)
    assert len(report.rules) == 2 and not report.rejected
    assert main(["rules", "validate", str(pack)]) == 0
    assert "2 loaded, 0 rejected" in capsys.readouterr().out


def test_write_is_atomic_and_compile_reports_rejections(tmp_path, capsys):
    out = tmp_path / "e.pack"
    # A rejected rule means a pack without it: none is written unless asked.
    assert main(["rules", "compile", str(DATA / "sigma" / "errors"), "-o", str(out)]) == 1
    cap = capsys.readouterr()
    assert "no pack written" in cap.err and "--allow-rejected" in cap.err and not out.exists()
    assert main(["rules", "compile", str(DATA / "sigma" / "errors"), "-o", str(out),
                 "--allow-rejected"]) == 1
    assert "wrote" in (o := capsys.readouterr().out) and "WITHOUT 5 rejected" in o
    assert [r.id for r in read_pack(out)] == ["0b3c8a52-6f0e-4a8e-9a51-3d2b5a7a0001"]
    assert not list(tmp_path.glob("*.tmp"))
    assert write_pack([], tmp_path / "empty.pack") > len(MAGIC)
    assert read_pack(tmp_path / "empty.pack") == []


@needs_shared
def test_full_sigmahq_pack_matches_exactly_like_the_yaml(tmp_path):
    """Whole SigmaHQ set: pack vs YAML, reference engine, on a corpus sample + regression events."""
    from .test_sigma_regression import read_events

    rules_dir = SHARED / "data" / "sigma-rules"
    out = tmp_path / "full.pack"
    yaml_report = load_rules([rules_dir], builtin=False)
    write_pack(yaml_report.rules, out)
    pack_report = load_rules([out], builtin=False)
    assert [_strip(r) for r in pack_report.rules] == [_strip(r) for r in yaml_report.rules]
    events = read_events([SHARED / "data" / "events" / "process_creation_corpus.jsonl.gz"])[::20]
    events += read_events([SHARED / "data" / "sigma-regression"])
    a = matcher.create(yaml_report.rules, "reference")
    b = matcher.create(pack_report.rules, "reference")
    hits = 0
    for e in events:
        ma = a.match(e)
        assert ma == b.match(e)
        hits += len(ma)
    assert hits > 100  # the sample does exercise the rules
