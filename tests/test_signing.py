"""Signed rule packs: keygen, sign, and the fail-closed load (tampered, wrong key, expired,
rotated, unsigned, key file permissions), through the real commands and the daemon's checks."""
from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.daemon.assemble import validate
from sensor.daemon.config import parse
from sensor.detect.ir import RuleError
from sensor.detect.loader import load_rules
from sensor.detect.pack import decode_pack
from sensor.detect.signing import (MARKER, PRIVATE_TAG, PUBLIC_TAG, Trust, TrustedKey, open_pack,
                                   read_key_file, sign_pack, split_signature, trust_from_entries)

ROOT = Path(__file__).resolve().parents[1]

RULE = """
title: Signed test rule
id: 6d7a3c1e-0000-4000-8000-000000000001
status: test
logsource: {category: process_creation, product: windows}
detection:
  sel: {Image|endswith: '\\\\signedtest.exe'}
  condition: sel
level: high
"""


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or ROOT)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pack")
    (d / "r.yml").write_text(RULE)
    res = cli("rules", "compile", str(d / "r.yml"), "-o", str(d / "rules.pack"))
    assert res.returncode == 0, res.stderr
    return d / "rules.pack"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for kid in ("fleet-2025", "fleet-2026", "attacker"):
        res = cli("rules", "keygen", "--id", kid, "-o", str(d / kid))
        assert res.returncode == 0, res.stderr
        out[kid] = d / kid
    return out


def signed_copy(pack: Path, key: Path, dest: Path) -> Path:
    res = cli("rules", "sign", str(pack), "--key", f"{key}.key", "-o", str(dest))
    assert res.returncode == 0, res.stderr
    return dest


def trust(*key_prefixes, not_after=None) -> Trust:
    t, errors = trust_from_entries([{"file": f"{p}.pub", "not_after": not_after} for p in key_prefixes])
    assert not errors
    return t


def test_keygen_writes_private_key_0600_and_never_overwrites(keys):
    key = Path(f"{keys['fleet-2025']}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kid, raw = read_key_file(str(key), PRIVATE_TAG)
    assert kid == "fleet-2025" and len(raw) == 32
    assert read_key_file(f"{keys['fleet-2025']}.pub", PUBLIC_TAG)[0] == "fleet-2025"
    before = key.read_bytes()
    res = cli("rules", "keygen", "--id", "fleet-2025", "-o", str(keys["fleet-2025"]))
    assert res.returncode == 2 and "not overwritten" in res.stderr
    assert key.read_bytes() == before


def test_sign_refuses_a_private_key_others_can_read(pack, keys, tmp_path):
    leaky = tmp_path / "leaky.key"
    leaky.write_bytes(Path(f"{keys['fleet-2025']}.key").read_bytes())
    leaky.chmod(0o644)
    res = cli("rules", "sign", str(pack), "--key", str(leaky), "-o", str(tmp_path / "x.pack"))
    assert res.returncode == 2
    assert "others can read it" in res.stderr and "not used" in res.stderr
    assert not (tmp_path / "x.pack").exists()


def test_signed_pack_loads_and_reports_its_key(pack, keys, tmp_path):
    signed = signed_copy(pack, keys["fleet-2025"], tmp_path / "s.pack")
    assert stat.S_IMODE(signed.stat().st_mode) == 0o600
    report = load_rules([str(signed)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not report.rejected, report.rejected
    assert [r.title for r in report.rules] == ["Signed test rule"]
    assert report.packs[0]["key_id"] == "fleet-2025" and report.packs[0]["verified"] is True
    # the signature block sits after the pack's own bytes, which are unchanged
    data = signed.read_bytes()
    assert data.startswith(pack.read_bytes()) and MARKER in data
    # re-signing replaces the block (one signature, the new key)
    resigned = signed_copy(signed, keys["fleet-2026"], tmp_path / "r.pack")
    assert resigned.read_bytes().count(MARKER) == 1
    rep = load_rules([str(resigned)], builtin=False, trust=trust(keys["fleet-2026"]))
    assert rep.packs[0]["key_id"] == "fleet-2026" and not rep.rejected


def test_tampered_pack_is_refused(pack, keys, tmp_path):
    signed = signed_copy(pack, keys["fleet-2025"], tmp_path / "s.pack")
    data = signed.read_bytes()
    body, meta = split_signature(data)
    # change one byte of the body and fix the pack's own SHA-256 header: the pack is then
    # intact by its checksum, so only the signature can catch it
    import hashlib
    magic_end = body.index(b"\n") + 1
    nl = body.index(b"\n", magic_end)
    header = json.loads(body[magic_end:nl])
    new_body = body[nl + 1:].replace(b"signedtest", b"signedTEST")
    header["sha256"] = hashlib.sha256(new_body).hexdigest()
    forged = body[:magic_end] + json.dumps(header, sort_keys=True).encode() + b"\n" + new_body
    decode_pack(forged)            # a well-formed pack...
    tampered = tmp_path / "t.pack"
    tampered.write_bytes(forged + data[len(body):])
    report = load_rules([str(tampered)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not report.rules
    assert report.rejected[0].path == str(tampered)
    assert "does not verify with key 'fleet-2025'" in report.rejected[0].reason
    # a changed signature block (another signing time) is refused as well
    meta2 = dict(meta, signed_at="2000-01-01T00:00:00Z")
    bad = body + MARKER + json.dumps(meta2).encode() + b"\n"
    with pytest.raises(RuleError, match="does not verify"):
        open_pack(bad, "p", trust(keys["fleet-2025"]))
    # a damaged block
    with pytest.raises(RuleError, match="damaged"):
        open_pack(body + MARKER + b"{not json\n", "p", trust(keys["fleet-2025"]))


def test_a_signature_block_is_looked_for_only_in_the_last_4096_bytes():
    # MAX_TRAILER: the block is about 300 bytes; the marker is searched for in the tail only, so a
    # pack is never scanned whole for it and a marker-like line deep in the pack is not a block.
    from sensor.detect.signing import MAX_TRAILER
    assert MAX_TRAILER == 4096
    meta = {"alg": "ed25519", "key_id": "k", "sha256": "0" * 64, "sig": "s"}

    def with_block(pad: int) -> bytes:
        line = json.dumps(dict(meta, pad="x" * pad), sort_keys=True).encode() + b"\n"
        return b"PACK" + MARKER + line

    tails = set()
    for pad in range(3900, 4100):
        data = with_block(pad)
        tail = len(data) - data.rfind(MARKER)
        tails.add(tail)
        body, found = split_signature(data)
        if tail <= MAX_TRAILER:
            assert found is not None and found["key_id"] == "k" and body == b"PACK"
        else:
            assert found is None and body == data       # an unsigned pack, refused as such
    assert MAX_TRAILER in tails and MAX_TRAILER + 1 in tails


def test_wrong_key_unknown_key_and_unsigned_are_refused(pack, keys, tmp_path):
    by_attacker = signed_copy(pack, keys["attacker"], tmp_path / "a.pack")
    report = load_rules([str(by_attacker)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not report.rules
    assert "signed with key 'attacker', which is not in [rules] trusted_keys" in report.rejected[0].reason
    # an attacker reusing the trusted key's id with their own key: the signature fails
    forged = sign_pack(pack.read_bytes(), "fleet-2025",
                       read_key_file(f"{keys['attacker']}.key", PRIVATE_TAG)[1])
    with pytest.raises(RuleError, match="does not verify with key 'fleet-2025'"):
        open_pack(forged, "p", trust(keys["fleet-2025"]))
    report = load_rules([str(pack)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert "rule pack is not signed" in report.rejected[0].reason
    # Sigma YAML is refused too once keys are trusted
    yml = tmp_path / "r.yml"
    yml.write_text(RULE)
    report = load_rules([str(yml)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not report.rules and "not a signed rule pack" in report.rejected[0].reason
    # without trusted keys the unsigned pack and the YAML load as before
    assert load_rules([str(pack), str(yml)], builtin=False).rules


def test_expired_and_rotated_keys(pack, keys, tmp_path):
    signed = signed_copy(pack, keys["fleet-2025"], tmp_path / "s.pack")
    data = signed.read_bytes()
    pub = read_key_file(f"{keys['fleet-2025']}.pub", PUBLIC_TAG)[1]
    until = dt.datetime(2025, 6, 30, 23, 59, 59, tzinfo=dt.timezone.utc)
    t = Trust(clock=lambda: until - dt.timedelta(seconds=1))
    t.add(TrustedKey("fleet-2025", pub, until))
    assert open_pack(data, "p", t)[1].verified
    t.clock = lambda: until + dt.timedelta(seconds=1)
    with pytest.raises(RuleError, match="trusted only until 2025-06-30 23:59:59Z"):
        open_pack(data, "p", t)
    # a date means the end of that day (UTC), from the config's entries
    t2, errs = trust_from_entries([{"file": f"{keys['fleet-2025']}.pub", "not_after": dt.date(2025, 6, 30)}],
                                  clock=lambda: until + dt.timedelta(seconds=1))
    assert not errs
    with pytest.raises(RuleError, match="expired"):
        open_pack(data, "p", t2)
    # rotation: the old key removed from the list, the new one added
    rotated = trust(keys["fleet-2026"])
    with pytest.raises(RuleError, match="not in \\[rules\\] trusted_keys"):
        open_pack(data, "p", rotated)
    assert open_pack(signed_copy(pack, keys["fleet-2026"], tmp_path / "n.pack").read_bytes(), "p",
                     rotated)[1].key_id == "fleet-2026"


def _config(tmp_path: Path, rules: list[str], keys_toml: str, on_error="fail") -> Path:
    cfg = tmp_path / "sensor.toml"
    rec = tmp_path / "rec.jsonl"
    rec.write_text('{"Image": "C:\\\\x\\\\signedtest.exe"}\n')
    cfg.write_text(f"""
[sensor]
data_dir = "{tmp_path / 'data'}"
[source]
kind = "replay"
[source.replay]
paths = ["{rec}"]
[rules]
paths = {json.dumps(rules)}
on_error = "{on_error}"
{keys_toml}
""")
    cfg.chmod(0o600)
    return cfg


def test_config_test_refuses_unsigned_pack_naming_the_file(pack, keys, tmp_path):
    keys_toml = f'trusted_keys = [{{ file = "{keys["fleet-2025"]}.pub" }}]'
    cfg = _config(tmp_path, [str(pack)], keys_toml)
    res = cli("config", "test", str(cfg))
    assert res.returncode == 2
    assert f"{pack}: rule pack is not signed" in res.stderr
    signed = signed_copy(pack, keys["fleet-2025"], tmp_path / "s.pack")
    cfg = _config(tmp_path, [str(signed)], keys_toml)
    res = cli("config", "test", str(cfg))
    assert res.returncode == 0, res.stderr


def test_trusted_key_entries_are_checked(keys, tmp_path):
    pub_line = Path(f"{keys['fleet-2025']}.pub").read_text().strip()
    b64 = pub_line.split()[2]
    ok = parse({"rules": {"trusted_keys": [{"id": "fleet-2025", "public_key": b64,
                                            "not_after": dt.date(2030, 1, 1)}]}}, "x")
    v = validate(ok)
    assert not [e for e in v.errors if "trusted_keys" in e]
    bad = parse({"rules": {"trusted_keys": [
        {"public_key": b64},                                      # no id
        {"id": "other", "public_key": pub_line},                  # id differs from the line's
        {"id": "k", "public_key": "AAAA"},                        # not 32 bytes
        {"id": "k2", "file": str(tmp_path / "missing.pub")},
        {"id": "k3", "public_key": b64, "file": f"{keys['fleet-2025']}.pub"},
        {"id": "k4", "public_key": b64, "not_after": "soon"},
    ]}}, "x")
    errors = "\n".join(validate(bad).errors)
    for i, why in enumerate(["needs an id", "does not match the key's own id", "an Ed25519 key has 32",
                             "cannot read", "exactly one of", "not a date"]):
        assert f"rules.trusted_keys[{i}]" in errors and why in errors, (i, errors)


def test_key_files_are_bounded_and_checked(tmp_path):
    from sensor.detect.signing import KeyError_
    big = tmp_path / "big.key"
    big.write_bytes(b"x" * 100_000)
    with pytest.raises(KeyError_, match="too large"):
        read_key_file(str(big), PRIVATE_TAG)
    other = tmp_path / "o.key"
    other.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(KeyError_, match="not an etw-sensor key file"):
        read_key_file(str(other), PRIVATE_TAG)
    assert os.path.exists(other)


CORRELATED = RULE + """---
title: Signed test correlation
id: 6d7a3c1e-0000-4000-8000-0000000000c1
correlation:
    type: event_count
    rules: [6d7a3c1e-0000-4000-8000-000000000001]
    group-by: [Computer]
    timespan: 5m
    condition: {gte: 3}
---
title: Signed test filter
logsource: {category: process_creation, product: windows}
filter:
    rules: [6d7a3c1e-0000-4000-8000-000000000001]
    sel: {User: svc}
    condition: not sel
"""


def test_signed_pack_carries_its_correlations_and_filters(keys, tmp_path):
    """The signature covers the pack's bytes whatever they hold: a signed pack's correlations
    and filters load with its rules, and a changed correlation fails the signature."""
    import hashlib

    (tmp_path / "r.yml").write_text(CORRELATED)
    res = cli("rules", "compile", str(tmp_path / "r.yml"), "-o", str(tmp_path / "c.pack"))
    assert res.returncode == 0, res.stderr
    signed = signed_copy(tmp_path / "c.pack", keys["fleet-2025"], tmp_path / "s.pack")
    report = load_rules([str(signed)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not report.rejected, report.rejected
    assert [c.title for c in report.correlations] == ["Signed test correlation"]
    assert [f.title for f in report.filters] == ["Signed test filter"]
    assert report.packs[0]["correlations"] == 1 and report.packs[0]["filters"] == 1
    assert report.packs[0]["verified"] is True
    # the filter applies to the rule as it loads from the signed pack
    from sensor.detect.matcher import create
    from sensor.events import ProcessEvent
    m = create(report.rules, "reference")
    ev = {"Image": "C:\\t\\signedtest.exe", "Computer": "h"}
    assert m.match(ProcessEvent(dict(ev, User="bob"))) and not m.match(ProcessEvent(dict(ev, User="svc")))
    # a forged threshold (the pack's own checksum fixed) is caught by the signature alone
    data = signed.read_bytes()
    body, _meta = split_signature(data)
    magic_end = body.index(b"\n") + 1
    nl = body.index(b"\n", magic_end)
    header = json.loads(body[magic_end:nl])
    new_body = body[nl + 1:].replace(b'[["gte",3]]', b'[["gte",9]]')
    assert new_body != body[nl + 1:]
    header["sha256"] = hashlib.sha256(new_body).hexdigest()
    forged = body[:magic_end] + json.dumps(header, sort_keys=True).encode() + b"\n" + new_body
    (tmp_path / "f.pack").write_bytes(forged + data[len(body):])
    rep = load_rules([str(tmp_path / "f.pack")], builtin=False, trust=trust(keys["fleet-2025"]))
    assert not rep.rules and not rep.correlations
    assert "does not verify with key 'fleet-2025'" in rep.rejected[0].reason


def test_signed_pack_with_a_backtracking_rule_needs_both_the_key_and_the_opt_in(keys, tmp_path):
    """Signing vouches for where a pack came from, not for its regexes: a rule that needs the
    backtracking engine still needs the operator's per-rule opt-in."""
    rid = "0a6b1c2d-0000-4000-8000-0000000000bb"
    (tmp_path / "b.yml").write_text(
        f"title: Signed backreference\nid: {rid}\nlogsource:\n    category: process_creation\n"
        "    product: windows\ndetection:\n    selection:\n        CommandLine|re: '(\\w+) \\1'\n"
        "    condition: selection\n")
    res = cli("rules", "compile", str(tmp_path / "b.yml"), "-o", str(tmp_path / "b.pack"),
              "--allow-backtracking", rid)
    assert res.returncode == 0, res.stderr
    signed = signed_copy(tmp_path / "b.pack", keys["fleet-2025"], tmp_path / "bs.pack")
    refused = load_rules([str(signed)], builtin=False, trust=trust(keys["fleet-2025"]))
    assert refused.rules == [] and "backreference" in refused.rejected[0].reason
    report = load_rules([str(signed)], builtin=False, trust=trust(keys["fleet-2025"]),
                        allow_backtracking=[rid])
    assert not report.rejected and [r.id for r in report.rules] == [rid]
    assert report.packs[0]["key_id"] == "fleet-2025" and report.packs[0]["rules"] == 1


# -- the block format, key parsing and dates, unit by unit (README "Build and sign rule packs",
# the module's format description) -------------------------------------------------------------

def _pair(kid="unit-key"):
    from sensor.detect.signing import _parse_key_text, generate_key
    priv_text, pub_text = generate_key(kid)
    return (_parse_key_text(priv_text, PRIVATE_TAG, "k")[1], _parse_key_text(pub_text, PUBLIC_TAG, "p")[1],
            pub_text)


def _trust_of(kid, pub, not_after=None, clock=None):
    t = Trust() if clock is None else Trust(clock=clock)
    t.add(TrustedKey(kid, pub, not_after))
    return t


BODY = b"ETW-SENSOR-PACK\n{}\nrules"
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def test_a_signed_block_is_one_canonical_json_line_of_version_1():
    priv, pub, _ = _pair()
    signed = sign_pack(BODY, "unit-key", priv, now=WHEN)
    body, meta = split_signature(signed)
    assert body == BODY
    line = signed[len(BODY) + len(MARKER):]
    assert line == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert meta["v"] == 1 and meta["alg"] == "ed25519" and meta["key_id"] == "unit-key"
    assert meta["signed_at"] == "2026-01-02T03:04:05Z"
    # Ed25519 is deterministic: the same pack, key and time sign to the same bytes
    assert sign_pack(BODY, "unit-key", priv, now=WHEN) == signed


def test_what_a_pack_reports_verified_only_when_checked_against_a_trusted_key():
    from sensor.detect.signing import PackSignature
    priv, pub, _ = _pair()
    signed = sign_pack(BODY, "unit-key", priv, now=WHEN)
    # no trusted keys: an unsigned pack, and a signed one whose SHA-256 only is checked
    assert open_pack(BODY, "p", None) == (BODY, PackSignature(None, False))
    assert open_pack(BODY, "p", Trust()) == (BODY, PackSignature(None, False))
    body, sig = open_pack(signed, "p", None)
    assert body == BODY and sig.key_id == "unit-key" and sig.verified is False
    assert sig.signed_at == "2026-01-02T03:04:05Z"
    body, sig = open_pack(signed, "p", _trust_of("unit-key", pub))
    assert sig.verified is True and sig.as_dict()["verified"] is True
    # what was read is a value: neither record can be changed after the check
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        sig.verified = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrustedKey("k", pub).public = b"\0" * 32


def test_a_block_at_the_very_start_of_the_file_is_still_the_block():
    priv, _pub, _ = _pair()
    signed = sign_pack(b"", "unit-key", priv, now=WHEN)
    assert signed.startswith(MARKER)
    body, meta = split_signature(signed)
    assert body == b"" and meta["key_id"] == "unit-key"


@pytest.mark.parametrize("tail", [b"", b"\n", b"x\n", b" \n"])
def test_a_block_that_is_not_exactly_one_line_is_damaged(tail):
    priv, _pub, _ = _pair()
    signed = sign_pack(BODY, "unit-key", priv, now=WHEN)
    if tail == b"":
        damaged = signed[:-1]                       # no final newline
    else:
        damaged = signed + tail                     # a second line after the block
    with pytest.raises(RuleError, match="damaged"):
        split_signature(damaged)
    if tail != b"":
        with pytest.raises(RuleError, match="not one line"):
            split_signature(damaged)


@pytest.mark.parametrize("field,value", [("sig", None), ("key_id", 7), ("sha256", None), ("alg", ["ed25519"])])
def test_a_block_missing_a_field_or_with_a_field_of_another_type_is_damaged(field, value):
    priv, pub, _ = _pair()
    _body, meta = split_signature(sign_pack(BODY, "unit-key", priv, now=WHEN))
    meta = dict(meta)
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    data = BODY + MARKER + json.dumps(meta).encode() + b"\n"
    for t in (None, _trust_of("unit-key", pub)):
        with pytest.raises(RuleError, match="signature block is damaged"):
            open_pack(data, "p", t)


@pytest.mark.parametrize("alg,v", [("ed25519", 2), ("ed25519", 0), ("rsa", 1), ("ed25519", "1")])
def test_another_algorithm_or_version_is_refused(alg, v):
    priv, pub, _ = _pair()
    _body, meta = split_signature(sign_pack(BODY, "unit-key", priv, now=WHEN))
    data = BODY + MARKER + json.dumps(dict(meta, alg=alg, v=v)).encode() + b"\n"
    for t in (None, _trust_of("unit-key", pub)):
        with pytest.raises(RuleError, match="is not supported"):
            open_pack(data, "p", t)


@pytest.mark.parametrize("change", ["junk", "non-ascii"])
def test_a_signature_with_characters_base64_does_not_have_is_refused(change):
    # A lenient decoder would drop the stray characters and verify the rest: the block was
    # altered, so it must not load.
    priv, pub, _ = _pair()
    _body, meta = split_signature(sign_pack(BODY, "unit-key", priv, now=WHEN))
    sig = meta["sig"]
    bad = sig[:10] + ("!" if change == "junk" else "\u00e9") + sig[10:]
    data = BODY + MARKER + json.dumps(dict(meta, sig=bad), sort_keys=True).encode() + b"\n"
    with pytest.raises(RuleError, match="does not verify"):
        open_pack(data, "p", _trust_of("unit-key", pub))


def test_a_key_is_trusted_up_to_and_including_its_not_after_second():
    priv, pub, _ = _pair()
    signed = sign_pack(BODY, "unit-key", priv, now=WHEN)
    until = dt.datetime(2026, 6, 30, 23, 59, 59, tzinfo=dt.timezone.utc)
    assert open_pack(signed, "p", _trust_of("unit-key", pub, until, clock=lambda: until))[1].verified
    with pytest.raises(RuleError, match="expired"):
        open_pack(signed, "p", _trust_of("unit-key", pub, until,
                                          clock=lambda: until + dt.timedelta(microseconds=1)))


def test_the_trust_store_uses_the_clock_it_is_given_and_else_the_real_one():
    priv, pub, pub_text = _pair()
    signed = sign_pack(BODY, "unit-key", priv, now=WHEN)
    entry = {"public_key": pub_text.strip(), "not_after": "2020-01-01"}
    t, errors = trust_from_entries([entry], clock=lambda: dt.datetime(2019, 12, 31, tzinfo=dt.timezone.utc))
    assert not errors and open_pack(signed, "p", t)[1].verified       # 2019 by the given clock
    t, errors = trust_from_entries([entry])                            # today: long past 2020
    assert not errors
    with pytest.raises(RuleError, match="expired"):
        open_pack(signed, "p", t)
    t, errors = trust_from_entries([dict(entry, not_after="2999-01-01")])
    assert not errors and open_pack(signed, "p", t)[1].verified


def test_not_after_dates_and_times():
    from sensor.detect.signing import KeyError_, parse_not_after
    utc = dt.timezone.utc
    end = dt.datetime(2026, 6, 30, 23, 59, 59, tzinfo=utc)
    assert parse_not_after("2026-06-30") == end                       # a date: the end of that day
    assert parse_not_after(" 2026-06-30 ") == end
    assert parse_not_after(dt.date(2026, 6, 30)) == end
    assert parse_not_after("2026-06-30T12:00:00Z") == dt.datetime(2026, 6, 30, 12, tzinfo=utc)
    assert parse_not_after("2026-06-30T12:00:00+02:00") == dt.datetime(2026, 6, 30, 10, tzinfo=utc)
    assert parse_not_after("2026-06-30 12:00") == dt.datetime(2026, 6, 30, 12, tzinfo=utc)
    # a TOML datetime: without an offset it is UTC, with one it is kept
    assert parse_not_after(dt.datetime(2026, 6, 30, 12)) == dt.datetime(2026, 6, 30, 12, tzinfo=utc)
    plus2 = dt.datetime(2026, 6, 30, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert parse_not_after(plus2) == plus2 and parse_not_after(plus2).utcoffset() == dt.timedelta(hours=2)
    assert parse_not_after(None) is None and parse_not_after("") is None
    for bad in ("2026-6-30", "30.06.2026", "soon", "2026-06-31"):
        with pytest.raises(KeyError_, match="not a date"):
            parse_not_after(bad)


@pytest.mark.parametrize("kid,ok", [("a", True), ("fleet-2026.v2_x", True), ("a" * 64, True),
                                    ("a" * 65, False), ("", False), ("-lead", False), ("bad id", False),
                                    ("../x", False), ("k\u00e9", False), ("k\n", False)])
def test_key_ids(kid, ok):
    from sensor.detect.signing import KeyError_, check_key_id
    if ok:
        assert check_key_id(kid) == kid
    else:
        with pytest.raises(KeyError_, match="1-64 characters"):
            check_key_id(kid)
        with pytest.raises(KeyError_):
            sign_pack(BODY, kid, b"\1" * 32)


def test_inline_public_keys_must_be_strict_base64_of_32_bytes():
    from sensor.detect.signing import KeyError_, parse_public_key
    _priv, pub, pub_text = _pair()
    b64 = pub_text.split()[2]
    assert parse_public_key(b64) == (None, pub)
    assert parse_public_key(pub_text) == ("unit-key", pub)
    for bad in (b64[:10] + "!" + b64[10:], b64[:10] + "\u00e9" + b64[10:], b64[:10] + " " + b64[10:]):
        with pytest.raises(KeyError_, match="not base64"):
            parse_public_key(bad)
    with pytest.raises(KeyError_, match="an Ed25519 key has 32"):
        parse_public_key(b64[:-4])
    # the same problems in [rules] trusted_keys come back as errors naming the entry, not raised
    _t, errors = trust_from_entries([{"id": "a", "public_key": b64[:10] + "\u00e9" + b64[10:]},
                                     {"id": "bad id", "public_key": b64}])
    assert errors == ["rules.trusted_keys[0]: public_key: not base64",
                      "rules.trusted_keys[1]: key id 'bad id': 1-64 characters of letters, digits, '.', "
                      "'_' or '-', starting with a letter or digit"]


def test_where_a_trusted_key_came_from(tmp_path):
    _priv, pub, pub_text = _pair()
    f = tmp_path / "k.pub"
    f.write_text(pub_text)
    t, errors = trust_from_entries([{"public_key": pub_text.strip()}])
    assert not errors and t.keys["unit-key"].source == "inline"
    t, errors = trust_from_entries([{"file": str(f)}])
    assert not errors and t.keys["unit-key"].source == str(f)


def test_key_files_at_the_size_cap_and_one_byte_over(tmp_path):
    from sensor.detect.signing import KeyError_
    _priv, pub, pub_text = _pair()
    line = pub_text.encode()
    at = tmp_path / "at.pub"
    at.write_bytes(line + b" " * (4096 - len(line)))              # 4,096 bytes: read
    assert len(at.read_bytes()) == 4096
    assert read_key_file(str(at), PUBLIC_TAG) == ("unit-key", pub)
    over = tmp_path / "over.pub"
    over.write_bytes(line + b" " * (4097 - len(line)))            # 4,097: refused
    with pytest.raises(KeyError_, match="too large for a key file"):
        read_key_file(str(over), PUBLIC_TAG)
    latin = tmp_path / "latin.pub"
    latin.write_bytes(line.replace(b"unit-key", b"unit-k\xe9y"))
    with pytest.raises(KeyError_, match="not an etw-sensor key file"):
        read_key_file(str(latin), PUBLIC_TAG)
    with pytest.raises(KeyError_) as err:
        read_key_file(str(tmp_path / "missing.pub"), PUBLIC_TAG)
    assert str(err.value) == f"{tmp_path / 'missing.pub'}: cannot read: No such file or directory"
