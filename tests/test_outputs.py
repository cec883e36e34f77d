"""Output formats, TLS policy and secrets, against the local HTTPS receiver (real sockets, real TLS)."""
from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import os
import ssl

import pytest
from hypothesis import given, settings, strategies as st

from sensor import cli
from sensor.deliver.protocol import BISECT, OK, PARK, RESEND, RETRY, SPLIT, Output
from sensor.deliver.tls import ConfigError
from sensor.deliver.outputs import OPTION_KEYS, build_output
from sensor.deliver.ecs import iso_time, to_ecs
from sensor.deliver.http import HttpResponse, classify_status, parse_retry_after, safe_url
from sensor.deliver.memory import MemoryOutput
from sensor.deliver.tls import Secret, load_secret
from sensor.deliver.webhook import sign
from sensor.testing.receiver import Receiver, sample_alert


@pytest.fixture()
def receiver():
    with Receiver(token="s3cr3t-token") as rec:
        yield rec


def opts(rec: Receiver, **kw) -> dict:
    base = {"url": rec.url, "ca_file": str(rec.ca_file), "token": "s3cr3t-token"}
    base.update(kw)
    return base


ALERTS = [sample_alert(i) for i in range(6)]
IDS = [a["id"] for a in ALERTS]


# -- ECS mapping ---------------------------------------------------------------------------------

def test_ecs_document_for_a_seed_alert():
    doc = to_ecs(ALERTS[0])
    assert doc["event"]["kind"] == "alert" and doc["event"]["category"] == ["process"]
    assert doc["event"]["type"] == ["start"] and doc["event"]["id"] == IDS[0]
    assert doc["@timestamp"] == "2026-08-20T10:11:12.345Z"
    assert doc["process"]["executable"] == "C:\\Windows\\System32\\wbem\\mofcomp.exe"
    assert doc["process"]["name"] == "mofcomp.exe"
    assert doc["process"]["pid"] == 1000
    assert doc["process"]["pe"]["original_file_name"] == "mofcomp.exe"
    assert doc["process"]["parent"]["executable"] == "C:\\Windows\\System32\\cmd.exe"
    assert doc["process"]["parent"]["pid"] == 900
    assert doc["user"] == {"name": "alice", "domain": "CORP"}
    assert doc["host"]["hostname"] == "WS01"
    assert doc["rule"]["name"] == "Potential Suspicious Mofcomp Execution"
    assert doc["event"]["severity"] == 99  # critical
    assert doc["threat"]["technique"]["id"] == ["T1218"]
    assert doc["threat"]["tactic"]["id"] == ["TA0005"]  # attack.defense-evasion
    assert doc["sensor"]["integrity_level"] == "High"
    assert doc["sensor"]["select"]["COMMANDLINE"].startswith("mofcomp.exe")
    assert "next_steps" in doc["sensor"]["rule"]


def test_ecs_subtechniques_hashes_and_missing_values():
    alert = {"id": "x", "timestamp": "2026-01-01T00:00:00Z", "event_time": None,
             "rule": {"id": "r", "title": "t", "level": "medium",
                      "tags": ["attack.execution", "attack.t1059.001"], "mitre": ["T1059.001"]},
             "event": {"Image": None, "Hashes": "SHA256=AB12,MD5=CD34,IMPHASH=EE", "ProcessId": "0x10"}}
    doc = to_ecs(alert)
    assert doc["threat"]["technique"]["id"] == ["T1059"]
    assert doc["threat"]["technique"]["subtechnique"]["id"] == ["T1059.001"]
    assert doc["threat"]["tactic"]["name"] == ["Execution"]
    assert doc["process"]["hash"] == {"sha256": "ab12", "md5": "cd34"}
    assert doc["process"]["pe"]["imphash"] == "ee" and doc["process"]["pid"] == 16
    assert "executable" not in doc["process"]  # None is left out, never invented
    assert doc["@timestamp"] == "2026-01-01T00:00:00.000Z"


def test_ecs_health_alert_has_its_own_rule():
    # the spool's own overflow alert (no rule block): an alert with the health rule's id
    doc = to_ecs({"id": "h", "type": "health", "timestamp": "2026-01-01T00:00:00Z",
                  "health": {"event": "spool_overflow", "dropped": 3, "message": "m"}})
    assert doc["event"]["kind"] == "alert" and doc["event"]["action"] == "spool_overflow"
    assert doc["rule"]["id"] == "sensor-health-spool-overflow" and doc["event"]["severity"] == 73
    assert doc["sensor"]["health"]["dropped"] == 3 and doc["message"] == "m"


def test_ecs_health_document_is_a_metric():
    from sensor.deliver.health import health_document
    d = health_document({"events": {"in": 5}}, reason="heartbeat", boot_id="b1", seq=7,
                        sensor={"host": "WS1"}, ts=1767225600.0, summary="heartbeat: 5 events")
    doc = to_ecs(d)
    assert doc["event"]["kind"] == "metric" and doc["event"]["sequence"] == 7
    assert doc["event"]["dataset"] == "sensor.health" and doc["event"]["action"] == "heartbeat"
    assert doc["agent"]["ephemeral_id"] == "b1" and doc["host"]["name"] == "WS1"
    assert doc["@timestamp"] == "2026-01-01T00:00:00.000Z" and doc["event"]["id"] == "b1-0000000007"
    assert doc["sensor"]["health"]["events"]["in"] == 5 and doc["message"] == "heartbeat: 5 events"


def _empties(value, path="doc"):
    """Every None, "" or [] in a document (ECS leaves a field out rather than send it empty)."""
    if value is None or value == "" or value == []:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _empties(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _empties(v, f"{path}[{i}]")]
    return []


def _rule_alert(rule=None, event=None, **top):
    alert = {"id": "a1", "timestamp": "2026-01-01T00:00:00Z", "rule": rule or {"id": "r", "title": "T"},
             "event": event or {}}
    alert.update(top)
    return alert


@pytest.mark.parametrize("level,score", [("informational", 21), ("low", 21), ("medium", 47),
                                         ("high", 73), ("critical", 99), ("High", 73)])
def test_ecs_severity_and_risk_score_per_level(level, score):
    """docs/delivery.md: informational/low/medium/high/critical -> 21/21/47/73/99."""
    doc = to_ecs(_rule_alert({"id": "r", "title": "T", "level": level}))
    assert doc["event"]["severity"] == score and doc["event"]["risk_score"] == float(score)
    assert doc["sensor"]["rule_level"] == level


def test_ecs_rule_block_per_the_mapping_table():
    rule = {"id": "r1", "title": "Title", "description": "D", "author": "Florian Roth",
            "references": ["https://example.org/a"], "version": 2, "license": "DRL-1.1",
            "tags": ["attack.execution"], "level": "low", "falsepositives": ["admins"]}
    doc = to_ecs(_rule_alert(rule))
    assert doc["rule"] == {"id": "r1", "uuid": "r1", "name": "Title", "description": "D",
                           "author": ["Florian Roth"],   # Sigma's author is one string; ECS a list
                           "reference": ["https://example.org/a"], "ruleset": "sigma",
                           "version": "2", "license": "DRL-1.1"}
    assert doc["tags"] == ["attack.execution"]
    assert doc["sensor"]["rule"] == {"falsepositives": ["admins"]}
    bare = to_ecs(_rule_alert({"id": "r2", "title": "T2"}))
    assert bare["rule"] == {"id": "r2", "uuid": "r2", "name": "T2", "ruleset": "sigma"}
    assert "tags" not in bare and "threat" not in bare   # no ATT&CK tags: no threat block
    assert _empties(bare) == [] and _empties(doc) == []


def test_ecs_threat_from_tags_alone_and_from_either_half():
    """rule.mitre, or else attack.tNNNN tags, give the techniques; attack.<tactic> tags the tactics."""
    only_tags = to_ecs(_rule_alert({"id": "r", "title": "T", "tags": ["attack.t1047", "attack.t1059.003"]}))
    assert only_tags["threat"]["framework"] == "MITRE ATT&CK"
    assert only_tags["threat"]["technique"]["id"] == ["T1047", "T1059"]
    assert only_tags["threat"]["technique"]["reference"] == [
        "https://attack.mitre.org/techniques/T1047/", "https://attack.mitre.org/techniques/T1059/"]
    assert only_tags["threat"]["technique"]["subtechnique"]["id"] == ["T1059.003"]
    assert "tactic" not in only_tags["threat"]
    only_tactic = to_ecs(_rule_alert({"id": "r", "title": "T", "tags": ["attack.lateral_movement"]}))
    assert only_tactic["threat"] == {"framework": "MITRE ATT&CK",
                                     "tactic": {"id": ["TA0008"], "name": ["Lateral Movement"]}}
    neither = to_ecs(_rule_alert({"id": "r", "title": "T", "tags": ["cve.2021-44228", "detection.threat_hunting"]}))
    assert "threat" not in neither and neither["tags"] == ["cve.2021-44228", "detection.threat_hunting"]
    # ATT&CK group and software tags (attack.g0016, attack.s0002) name no technique and no tactic
    groups = to_ecs(_rule_alert({"id": "r", "title": "T", "tags": ["attack.g0016", "attack.s0002"]}))
    assert "threat" not in groups


def test_ecs_process_user_host_and_event_code():
    event = {"Image": "mofcomp.exe", "ParentImage": "C:/Windows/System32/cmd.exe", "EventID": 1,
             "User": "NT AUTHORITY\\SYSTEM", "Computer": "WS02",
             "Hashes": "SHA384=AA,SHA256=BB,MD5=,imphash=CC"}
    doc = to_ecs(_rule_alert(event=event))
    assert doc["process"]["name"] == "mofcomp.exe"           # a bare name is its own basename
    assert doc["process"]["parent"]["name"] == "cmd.exe"
    assert doc["event"]["code"] == "1"                       # event.code is a keyword
    assert doc["user"] == {"name": "SYSTEM", "domain": "NT AUTHORITY"}
    assert doc["host"]["hostname"] == doc["host"]["name"] == doc["agent"]["name"] == "WS02"
    assert doc["process"]["hash"] == {"sha256": "bb"} and doc["process"]["pe"] == {"imphash": "cc"}
    assert _empties(doc) == []
    lone = to_ecs(_rule_alert(event={"User": "alice"}))
    assert lone["user"] == {"name": "alice"}


def test_ecs_host_precedence_and_agent_version():
    """HOSTNAME, else event.Computer, else the sensor block's host; agent.version is the sensor's."""
    from sensor import __version__
    assert to_ecs(_rule_alert(HOSTNAME="A", event={"Computer": "B"}))["host"]["name"] == "A"
    assert to_ecs(_rule_alert(HOSTNAME="A"))["host"]["name"] == "A"
    assert to_ecs(_rule_alert(event={"Computer": "B"}))["host"]["name"] == "B"
    doc = to_ecs(_rule_alert(sensor={"host": "C", "version": "9.9.9"}))
    assert doc["host"]["name"] == "C" and doc["agent"] == {"type": "etw-sensor", "version": "9.9.9", "name": "C"}
    nohost = to_ecs(_rule_alert())
    assert "host" not in nohost and nohost["agent"] == {"type": "etw-sensor", "version": __version__}


def test_ecs_message_select_and_field_origin():
    alert = _rule_alert(MESSAGE="the message", HOSTNAME="H", COMMANDLINE=None, field_origin={"User": "token"})
    doc = to_ecs(alert)
    assert doc["message"] == "the message"
    assert doc["sensor"]["select"] == {"MESSAGE": "the message", "HOSTNAME": "H"}   # upper-case, set
    assert doc["sensor"]["field_origin"] == {"User": "token"}
    titled = to_ecs(_rule_alert())
    assert titled["message"] == "T" and "sensor" not in titled


def test_ecs_odd_value_types_are_left_out_not_raised():
    """A stored alert may carry a number where text is expected: the field is left out."""
    doc = to_ecs(_rule_alert(event={"Image": 42, "ParentImage": "", "User": 7, "ProcessId": True,
                                    "ParentProcessId": "12ab", "EventID": "0xZZ"}))
    assert "name" not in doc.get("process", {}) and "user" not in doc
    assert "pid" not in doc.get("process", {}) and "code" not in doc["event"]
    assert "parent" not in doc.get("process", {})
    # text that cannot be encoded as UTF-8 (a lone surrogate) in the rule: still a document
    odd = to_ecs(_rule_alert({"id": "r", "title": "bad \ud800 title"}))
    assert odd["rule"]["name"] == "bad \ud800 title"


_EV_VALUES = st.one_of(st.none(), st.text(max_size=12), st.integers(-5, 70000), st.booleans(),
                      st.sampled_from(["C:\\Windows\\cmd.exe", "DOM\\user", "0x1F", "SHA256=AB,MD5=cd",
                                       "2026-01-01 00:00:00.5", "2026-01-01T00:00:00Z", "bad \ud800"]))
_EV_KEYS = st.sampled_from(["Image", "CommandLine", "ProcessId", "ParentProcessId", "ParentImage", "User",
                            "Hashes", "EventID", "OriginalFileName", "IntegrityLevel", "Computer"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(_EV_KEYS, _EV_VALUES, max_size=8), _EV_VALUES, _EV_VALUES,
                          st.sampled_from(["low", "high", None])), min_size=1, max_size=6))
def test_ecs_documents_are_the_same_with_warm_caches(alerts):
    """The alerts of one event share its fields and times (cached): a document built with the
    caches warm from other alerts is the one built from nothing, whatever the values."""
    from sensor.deliver import ecs
    built = []
    for i, (event, ts, et, level) in enumerate(alerts):
        alert = _rule_alert({"id": f"r{i % 2}", "title": "T", "level": level}, event=event, timestamp=ts,
                            event_time=et)
        built.append((alert, to_ecs(alert), to_ecs(_rule_alert(event=dict(event), timestamp=ts))))
    for alert, warm, _ in built:
        ecs._EVENT_CACHE.clear()
        ecs._ISO_CACHE.clear()
        assert json.dumps(to_ecs(alert)) == json.dumps(warm)
    for alert, warm, other in built:   # one event, another rule: the event's fields are the same
        assert warm.get("process") == other.get("process") and warm.get("user") == other.get("user")


def test_ecs_caches_stay_small_whatever_the_alerts():
    """Events may be large (32,767-character command lines) and times are input too: the caches
    keep a few entries, and a long time text is not kept at all."""
    from sensor.deliver import ecs
    for i in range(50):
        to_ecs(_rule_alert(event={"CommandLine": f"{i} " + "x" * 32_000}, timestamp="2026-01-01T00:00:00Z " + "y" * i * 100))
    assert len(ecs._EVENT_CACHE) <= ecs._EVENT_CACHE_MAX == 8
    assert all(len(k) <= ecs._ISO_CACHE_TEXT for k in ecs._ISO_CACHE) and len(ecs._ISO_CACHE) <= 64


def test_ecs_health_alert_tags_are_the_health_rules():
    doc = to_ecs({"id": "h", "type": "health", "timestamp": "2026-01-01T00:00:00Z",
                  "health": {"event": "spool_overflow", "dropped": 3}})
    assert doc["tags"] == ["sensor.health"] and doc["rule"]["ruleset"] == "sensor-health"


def test_ecs_rule_cache_is_bounded_and_each_document_gets_its_own_rule():
    from sensor.deliver import ecs
    for i in range(1100):
        doc = to_ecs(_rule_alert({"id": f"r{i}", "title": f"T{i}", "tags": [f"attack.t{1000 + i}"]}))
        assert doc["rule"]["id"] == f"r{i}" and doc["threat"]["technique"]["id"] == [f"T{1000 + i}"]
        assert len(ecs._RULE_CACHE) <= 1024


def test_ecs_correlation_alert_keeps_its_window():
    """docs/sigma.md: in ECS documents a correlation alert's block is kept under
    sensor.correlation, with event.action sigma_correlation; a rule alert stays process_started."""
    window = {"type": "event_count", "group": {"User": "alice"}, "count": 5}
    doc = to_ecs(_rule_alert(correlation=window))
    assert doc["sensor"]["correlation"] == window and doc["event"]["action"] == "sigma_correlation"
    plain = to_ecs(_rule_alert(correlation="not a block"))
    assert plain["event"]["action"] == "process_started" and "sensor" not in plain


def test_iso_time_forms():
    assert iso_time("2026-08-20 10:11:12.345") == "2026-08-20T10:11:12.345Z"
    assert iso_time("2026-08-20T12:11:12+02:00") == "2026-08-20T10:11:12.000Z"
    assert iso_time("not a time") is None and iso_time(None) is None


# -- the four HTTP formats -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook"])
def test_each_format_delivers_over_tls(receiver, fmt):
    out = build_output(opts(receiver, format=fmt))
    assert isinstance(out, Output)
    res = out.send_batch(ALERTS)
    out.close()
    assert res.outcome == OK and res.delivered == IDS and res.status == 200
    assert receiver.ids() == IDS
    entry = receiver.request_log[-1]
    assert entry["gzip"] is True and entry["n"] == len(IDS)


def _deep(levels: int = 2000) -> list:
    """A value nested past any encoder's recursion limit (Python's is 1000 frames)."""
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def _with_cmd(i: int, cmd) -> dict:
    a = sample_alert(i)
    return dict(a, event=dict(a["event"], CommandLine=cmd))


def _no_traceback(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


# docs/delivery.md "Formats": an alert an output cannot encode is rejected alone with the reason
# (whatever the encoder raised), the rest of its batch is delivered; a lone UTF-16 surrogate is
# sent as U+FFFD, never a reason to hold or lose the alert.
@pytest.mark.parametrize("document", ["ecs", "alert"])
@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook"])
def test_an_alert_too_deep_to_encode_is_rejected_alone_and_a_lone_surrogate_is_sent(fmt, document, caplog):
    with Receiver(token="s3cr3t-token", keep_documents=True) as rec:
        out = build_output(opts(rec, format=fmt, document=document))
        batch = [ALERTS[0], _with_cmd(1, _deep()), ALERTS[2], _with_cmd(3, "cmd.exe /c \ud800 x\udfff")]
        try:
            with caplog.at_level(logging.DEBUG):
                res = out.send_batch(batch)
        finally:
            out.close()
        assert res.outcome == OK and res.delivered == [IDS[0], IDS[2], IDS[3]]
        assert list(res.rejected) == [IDS[1]]
        assert res.rejected[IDS[1]].startswith("cannot encode: RecursionError: ")
        assert len(res.rejected[IDS[1]]) <= 300
        assert rec.ids() == [IDS[0], IDS[2], IDS[3]]
        text = json.dumps(rec.documents()[-1], ensure_ascii=False)
        assert "cmd.exe /c \ufffd x\ufffd" in text and "\ud800" not in text
        _no_traceback(caplog)


def test_encode_json_sends_a_lone_surrogate_anywhere_as_one_replacement_character():
    from sensor.deliver.http import encode_json
    value = {"k\udc00": ["a\ud800", ("b\udfff", {"c": "\ud83d\ude00 d\ud800"})], "n": 1, "z": None}
    assert json.loads(encode_json(value)) == {
        "k\ufffd": ["a\ufffd", ["b\ufffd", {"c": "\U0001f600 d\ufffd"}]], "n": 1, "z": None}
    assert encode_json({"a": "plain"}) == b'{"a":"plain"}'


def test_the_reason_of_an_alert_that_cannot_be_encoded():
    from sensor.deliver.http import encode_failure

    class Mute(Exception):
        def __str__(self):
            raise ValueError("no words")

    assert encode_failure(RecursionError("too deep")) == "cannot encode: RecursionError: too deep"
    assert encode_failure(Mute()) == "cannot encode: Mute: (no message)"
    long = encode_failure(ValueError("x" * 1000))
    assert len(long) == 300 and long.startswith("cannot encode: ValueError: xxx")
    with pytest.raises(MemoryError):
        encode_failure(MemoryError())


@pytest.mark.parametrize("document", ["ecs", "alert"])
def test_jsonl_rejects_an_alert_too_deep_to_encode_alone_and_writes_a_lone_surrogate(tmp_path, document, caplog):
    path = tmp_path / "alerts.jsonl"
    out = build_output({"format": "jsonl", "path": str(path), "document": document})
    batch = [ALERTS[0], _with_cmd(1, _deep()), _with_cmd(2, "a\udc80b \ud83d\ude00")]
    with caplog.at_level(logging.DEBUG):
        res = out.send_batch(batch)
    assert res.outcome == OK and res.delivered == [IDS[0], IDS[2]]
    assert list(res.rejected) == [IDS[1]]
    assert res.rejected[IDS[1]].startswith("cannot encode: RecursionError: ")
    lines = path.read_text(encoding="utf-8").splitlines()
    # one U+FFFD for the lone surrogate; the two halves of a pair make their character again
    assert len(lines) == 2 and "a\ufffdb \U0001f600" in lines[1]
    _no_traceback(caplog)


@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook", "jsonl"])
def test_whatever_one_alerts_encoding_raises_rejects_that_alert_alone(fmt, tmp_path, monkeypatch):
    """Not a list of exception types: any Exception the encoder raises for one alert (here a
    LookupError and a RuntimeError from the ECS mapping) is that alert's rejection."""
    import sensor.deliver.http as http_mod
    import sensor.deliver.jsonl as jsonl_mod

    real = http_mod.to_ecs

    def picky(alert):
        if alert["id"] == IDS[1]:
            raise LookupError("no such thing")
        if alert["id"] == IDS[2]:
            raise RuntimeError("odd")
        return real(alert)

    monkeypatch.setattr(http_mod, "to_ecs", picky)
    monkeypatch.setattr(jsonl_mod, "to_ecs", picky)
    options = ({"format": "jsonl", "path": str(tmp_path / "a.jsonl")} if fmt == "jsonl"
               else {"format": fmt, "url": "https://127.0.0.1:9/in", "token": "t"})
    out = build_output(options)
    if fmt == "jsonl":
        res = out.send_batch(ALERTS[:4])
        assert res.delivered == [IDS[0], IDS[3]]
        rejected = res.rejected
    else:
        good, rejected = out.encode_each(ALERTS[:4])
        assert [a["id"] for a, _ in good] == [IDS[0], IDS[3]]
        out.close()
    assert rejected == {IDS[1]: "cannot encode: LookupError: no such thing",
                        IDS[2]: "cannot encode: RuntimeError: odd"}


@pytest.mark.parametrize("fmt", ["ecs", "jsonl"])
def test_memory_error_while_encoding_is_not_the_alerts_fault(fmt, tmp_path, monkeypatch):
    """Short of memory, no alert is rejected: the call raises and the batch stays spooled."""
    import sensor.deliver.http as http_mod
    import sensor.deliver.jsonl as jsonl_mod

    def starved(alert):
        raise MemoryError()

    monkeypatch.setattr(http_mod, "to_ecs", starved)
    monkeypatch.setattr(jsonl_mod, "to_ecs", starved)
    options = ({"format": "jsonl", "path": str(tmp_path / "a.jsonl")} if fmt == "jsonl"
               else {"format": fmt, "url": "https://127.0.0.1:9/in"})
    out = build_output(options)
    with pytest.raises(MemoryError):
        out.send_batch(ALERTS[:2])
    out.close()
    assert not (tmp_path / "a.jsonl").exists()


def test_hec_envelopes_auth_and_health(receiver):
    seen = {}
    orig = receiver._dispatch

    def spy(kind, hdr, raw, scripted, entry):
        seen.update(kind=kind, auth=hdr.get("authorization"), raw=raw)
        return orig(kind, hdr, raw, scripted, entry)

    receiver._dispatch = spy
    out = build_output(opts(receiver, format="splunk_hec", index="main"))
    assert out.send_batch(ALERTS[:2]).outcome == OK
    assert seen["kind"] == "hec" and seen["auth"] == "Splunk s3cr3t-token"
    lines = seen["raw"].decode().strip().split("\n")
    assert len(lines) == 2 and not seen["raw"].lstrip().startswith(b"[")  # stacked, no array
    env = json.loads(lines[0])
    assert env["sourcetype"] == "etw-sensor:alert" and env["index"] == "main" and env["host"] == "WS01"
    assert env["time"] == 1787220672.345  # event time, not send time
    assert env["event"]["event"]["id"] == IDS[0]
    health = out.check()
    assert health.outcome == OK and "healthy" in health.detail
    out.close()


def test_hec_400_names_the_poison_event(receiver):
    receiver.reject_ids = {IDS[2]}
    out = build_output(opts(receiver, format="splunk_hec"))
    res = out.send_batch(ALERTS)
    assert res.outcome == RESEND and list(res.rejected) == [IDS[2]] and res.status == 400
    out.close()


def test_bulk_create_with_id_409_is_delivered_and_item_400_rejected(receiver):
    out = build_output(opts(receiver, format="elasticsearch"))
    assert out.path == "/_bulk"
    assert out.send_batch(ALERTS[:3]).delivered == IDS[:3]
    receiver.reject_ids = {IDS[4]}
    res = out.send_batch(ALERTS)  # first three already stored: 409
    assert res.outcome == OK
    assert set(res.delivered) == set(IDS) - {IDS[4]} and list(res.rejected) == [IDS[4]]
    assert "document_parsing_exception" in res.rejected[IDS[4]]
    assert receiver.ids() == IDS[:3] + [IDS[3], IDS[5]]  # each stored once
    out.close()


def test_bulk_body_shape():
    from sensor.deliver.elastic import ElasticsearchOutput
    out = ElasticsearchOutput("https://127.0.0.1:9/es", index="logs-x-default")
    assert out.path == "/es/_bulk"
    body = out.body([out.encode_one(a) for a in ALERTS[:2]])
    lines = body.split(b"\n")
    assert body.endswith(b"\n") and len(lines) == 5
    assert json.loads(lines[0]) == {"create": {"_index": "logs-x-default", "_id": IDS[0]}}
    assert json.loads(lines[1])["event"]["id"] == IDS[0]


def test_elastic_api_key_id_colon_key_is_base64(receiver):
    out = build_output({"format": "es", "url": "https://127.0.0.1:9", "token": "myid:mykey"})
    assert out.headers([], b"")["Authorization"] == "ApiKey bXlpZDpteWtleQ=="
    assert out.redact("x myid:mykey y bXlpZDpteWtleQ==") == "x *** y ***"


def test_webhook_signature_and_idempotency(receiver):
    receiver.hmac_secret = "hm4c"
    out = build_output(opts(receiver, format="webhook", hmac_secret="hm4c"))
    assert out.send_batch(ALERTS[:1]).outcome == OK  # the receiver verified the signature
    body = out.body([out.encode_one(ALERTS[0])])
    h = out.headers(ALERTS[:1], body)
    assert h["X-Sensor-Signature-256"] == "sha256=" + hmac.new(b"hm4c", body, hashlib.sha256).hexdigest()
    assert h["Idempotency-Key"] == IDS[0]
    wrong = build_output(opts(receiver, format="webhook", hmac_secret="other"))
    res = wrong.send_batch(ALERTS[1:2])
    assert res.outcome == PARK and res.status == 401
    assert sign(b"k", b"body").startswith("sha256=")
    out.close()
    wrong.close()


def test_ndjson_400_without_position_means_bisect(receiver):
    receiver.reject_ids = {IDS[1]}
    out = build_output(opts(receiver))
    res = out.send_batch(ALERTS)
    assert res.outcome == BISECT and res.status == 400 and not res.delivered
    out.close()


def test_gzip_off_sends_plain_body(receiver):
    out = build_output(opts(receiver, gzip=False))
    assert out.send_batch(ALERTS[:1]).outcome == OK
    assert receiver.request_log[-1]["gzip"] is False
    out.close()


# -- status classification ------------------------------------------------------------------------

@pytest.mark.parametrize("status,outcome", [
    (200, OK), (201, OK), (204, OK), (409, OK), (408, RETRY), (429, RETRY), (500, RETRY), (502, RETRY),
    (503, RETRY), (504, RETRY), (413, SPLIT), (400, BISECT), (401, PARK), (403, PARK), (404, PARK),
    (301, PARK)])
def test_classify_status(status, outcome):
    assert classify_status(HttpResponse(status, {}, b"")) == outcome


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("status,honoured", [(429, True), (503, True), (500, False), (502, False)])
def test_retry_after_is_read_on_429_and_503(receiver, status, honoured):
    # docs/delivery.md: "Retry-After on 429/503 (seconds or HTTP-date) replaces the jittered wait"
    receiver.fail_next(status, headers={"Retry-After": "3"})
    out = build_output(opts(receiver))
    res = out.send_batch(ALERTS[:1])
    assert res.outcome == RETRY and res.status == status
    assert res.retry_after == (3.0 if honoured else None)
    out.close()


def test_connection_refused_is_retry(receiver):
    out = build_output(opts(receiver, connect_timeout=1))
    receiver.down()
    res = out.send_batch(ALERTS[:1])
    assert res.outcome == RETRY and res.status is None and "connect" in res.error
    out.close()


def test_read_timeout_is_retry(receiver):
    receiver.delay = 0.6
    out = build_output(opts(receiver, read_timeout=0.2))
    res = out.send_batch(ALERTS[:1])
    assert res.outcome == RETRY and "timeout" in res.error.lower()
    out.close()
    receiver.delay = 0


# -- TLS -------------------------------------------------------------------------------------------

def test_wrong_ca_is_refused(receiver):
    with Receiver() as other:
        out = build_output(opts(receiver, ca_file=str(other.ca_file)))
        res = out.send_batch(ALERTS[:1])
        out.close()
    assert res.outcome == PARK and "verif" in res.error.lower()
    assert receiver.ids() == []


def test_hostname_mismatch_is_refused():
    with Receiver(cert_hosts=["other.example"]) as rec:
        out = build_output(opts(rec))
        res = out.send_batch(ALERTS[:1])
        out.close()
        assert res.outcome == PARK and "mismatch" in res.error.lower() and rec.ids() == []


def test_expired_certificate_is_refused():
    with Receiver(cert_expired=True) as rec:
        out = build_output(opts(rec))
        res = out.send_batch(ALERTS[:1])
        out.close()
        assert res.outcome == PARK and "expired" in res.error.lower() and rec.ids() == []


def test_pin_match_and_mismatch(receiver):
    good = build_output(opts(receiver, pin_sha256=receiver.cert_sha256.upper()))
    assert good.send_batch(ALERTS[:1]).outcome == OK
    bad = build_output(opts(receiver, pin_sha256="ab" * 32))
    res = bad.send_batch(ALERTS[1:2])
    assert res.outcome == PARK and "pin mismatch" in res.error
    assert receiver.ids() == IDS[:1]
    good.close()
    bad.close()


def test_pin_does_not_replace_hostname_check():
    with Receiver(cert_hosts=["other.example"]) as rec:
        out = build_output(opts(rec, pin_sha256=rec.cert_sha256))
        res = out.send_batch(ALERTS[:1])
        out.close()
        assert res.outcome == PARK and rec.ids() == []


def test_insecure_skip_verify_only_when_set_and_warned(receiver, caplog):
    with caplog.at_level(logging.WARNING):
        out = build_output({"url": receiver.url, "token": "s3cr3t-token", "insecure_skip_verify": True})
    assert "verification is DISABLED" in caplog.text
    assert out.send_batch(ALERTS[:1]).outcome == OK
    out.close()


def test_tls_minimum_is_1_2(receiver):
    out = build_output(opts(receiver))
    ctx = out.transport.pool.conn_kw["ssl_context"]
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    out.close()


def test_os_trust_store_is_default(receiver):
    import truststore
    out = build_output({"url": receiver.url})
    assert isinstance(out.transport.pool.conn_kw["ssl_context"], truststore.SSLContext)
    # The throw-away CA is not in the OS store: refused, never downgraded.
    assert out.send_batch(ALERTS[:1]).outcome == PARK
    out.close()


def test_client_certificate():
    with Receiver(require_client_cert=True) as rec:
        cert, key = rec.issue_client_cert()
        without = build_output(opts(rec))
        res = without.send_batch(ALERTS[:1])
        assert res.outcome in (PARK, RETRY) and rec.ids() == []
        with_cert = build_output(opts(rec, client_cert=str(cert), client_key=str(key)))
        assert with_cert.send_batch(ALERTS[:1]).outcome == OK
        without.close()
        with_cert.close()


def test_plain_http_refused_unless_allowed(caplog):
    with pytest.raises(ConfigError, match="allow_http"):
        build_output({"url": "http://127.0.0.1:9/x"})
    with Receiver(tls=False) as rec:
        with caplog.at_level(logging.WARNING):
            out = build_output({"url": rec.url, "allow_http": True})
        assert "plain http" in caplog.text
        assert out.send_batch(ALERTS[:1]).outcome == OK
        out.close()


# -- secrets and options --------------------------------------------------------------------------

def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSOR_TEST_TOKEN", "from-env")
    (tmp_path / "tok").write_text("from-file\n")
    assert load_secret({"token": "lit"}, "token").reveal() == "lit"
    assert load_secret({"token_env": "SENSOR_TEST_TOKEN"}, "token").reveal() == "from-env"
    assert load_secret({"token_file": str(tmp_path / "tok")}, "token").reveal() == "from-file"
    assert load_secret({}, "token") is None
    with pytest.raises(ConfigError, match="only one"):
        load_secret({"token": "a", "token_env": "B"}, "token")
    with pytest.raises(ConfigError, match="not set"):
        load_secret({"token_env": "SENSOR_NO_SUCH_VAR_X"}, "token")
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret({"token_file": str(tmp_path / "missing")}, "token")


def test_secret_never_shows():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"


def test_token_not_in_errors_or_logs(receiver, caplog):
    receiver.token = "the-right-one"
    with caplog.at_level(logging.DEBUG):
        out = build_output(opts(receiver, token="wrong-s3cr3t"))
        res = out.send_batch(ALERTS[:1])
    assert res.outcome == PARK and res.status == 401
    assert "wrong-s3cr3t" not in (res.error or "") + res.detail + caplog.text
    assert "wrong-s3cr3t" not in repr(out.token)
    out.close()


def test_safe_url_strips_credentials():
    assert safe_url("https://u:p@h.example:8088/x?token=abc#f") == "https://h.example:8088/x"


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown output option"):
        build_output({"url": "https://x", "tokn": "a"})
    with pytest.raises(ConfigError, match="format"):
        build_output({"format": "smoke-signals"})
    with pytest.raises(ConfigError, match="url"):
        build_output({"format": "ecs"})
    with pytest.raises(ConfigError, match="pin_sha256"):
        build_output({"url": "https://x", "pin_sha256": "abc"})
    with pytest.raises(ConfigError, match="ca_file"):
        build_output({"url": "https://x", "ca_file": str(tmp_path / "none.pem")})


# Each key's documented type (docs/delivery.md "Configuration keys", the config file's types).
_KEY_KIND = {
    **dict.fromkeys(("insecure_skip_verify", "allow_http", "gzip"), "bool"),
    **dict.fromkeys(("gzip_level", "pool_maxsize"), "int"),
    **dict.fromkeys(("connect_timeout", "read_timeout"), "number"),
    **dict.fromkeys(("path", "token_file", "hmac_secret_file", "ca_file", "client_cert", "client_key"), "path"),
    "headers": "table",
}
_WRONG = {
    "bool": [1, 0, "yes", "false", [True]],
    "int": ["5", 1.5, True, [1]],
    "number": ["5", True, [1.0], {"s": 1}],
    "path": [5, True, ["a"], {"a": "b"}],
    "table": [5, "X-A: b", ["X-A", "b"], True, {"X-A": 5}],
    "text": [5, 1.5, True, ["a"], {"a": "b"}],
}
_BASE = {"ecs": {"url": "https://127.0.0.1:9/in"},
         "splunk_hec": {"url": "https://127.0.0.1:9/in", "token": "t"},
         "elasticsearch": {"url": "https://127.0.0.1:9/in"},
         "webhook": {"url": "https://127.0.0.1:9/in"},
         "syslog": {"url": "tls://127.0.0.1:6514"},
         "jsonl": {"path": "alerts.jsonl"}}
_TYPE_CASES = [(fmt, key, value) for fmt in _BASE for key in sorted(OPTION_KEYS - {"format"})
               for value in _WRONG[_KEY_KIND.get(key, "text")]]


@pytest.mark.parametrize("fmt,key,value", _TYPE_CASES, ids=[f"{f}-{k}-{v!r}" for f, k, v in _TYPE_CASES])
def test_an_option_of_the_wrong_type_is_a_configuration_error_naming_its_key(fmt, key, value, tmp_path, monkeypatch):
    """docs/delivery.md: every option of the wrong type (a number where a table goes, a list where
    text goes, text where true/false goes) is a ConfigError that starts with the key: never a
    raw TypeError, never a value silently turned into something else (``allow_http = "no"``
    is not true). build_output and each format's from_options alike."""
    monkeypatch.chdir(tmp_path)
    options = dict(_BASE[fmt], format=fmt)
    options[key] = value
    with pytest.raises(ConfigError) as caught:
        build_output(options)
    assert str(caught.value).startswith(key), str(caught.value)
    if fmt in ("ecs", "splunk_hec", "elasticsearch", "webhook", "syslog"):
        from sensor.deliver.elastic import ElasticsearchOutput
        from sensor.deliver.http import EcsNdjsonOutput
        from sensor.deliver.splunk import SplunkHecOutput
        from sensor.deliver.syslog import SyslogOutput
        from sensor.deliver.webhook import WebhookOutput
        cls = {"ecs": EcsNdjsonOutput, "splunk_hec": SplunkHecOutput, "elasticsearch": ElasticsearchOutput,
               "webhook": WebhookOutput, "syslog": SyslogOutput}[fmt]
        with pytest.raises(ConfigError) as caught:
            cls.from_options(options)
        assert str(caught.value).startswith(key), str(caught.value)


def test_option_type_errors_never_show_the_value():
    # a secret given with the wrong type is still a secret: the error names its type only
    with pytest.raises(ConfigError) as caught:
        build_output({"url": "https://127.0.0.1:9/in", "token": 8675309123})
    assert str(caught.value) == "token: must be text, got a number"
    with pytest.raises(ConfigError, match=r"^format: must be text, got a list$"):
        build_output({"format": ["ecs"], "url": "https://127.0.0.1:9/in"})
    with pytest.raises(ConfigError, match=r"^headers\.X-A: must be text, got a number$"):
        build_output({"url": "https://127.0.0.1:9/in", "headers": {"X-A": 5}})
    with pytest.raises(ConfigError, match=r"^headers: a name must be text, got a number$"):
        build_output({"url": "https://127.0.0.1:9/in", "headers": {5: "b"}})


def test_unset_options_and_right_types_build(tmp_path):
    # None is an unset option; a path may be a path object; every type as documented builds
    out = build_output({"url": "https://127.0.0.1:9/in", "token": None, "headers": {"X-A": "b"},
                        "gzip": False, "allow_http": False, "gzip_level": 3, "connect_timeout": 2,
                        "read_timeout": 2.5, "pool_maxsize": 4, "index": "i"})
    out.close()
    assert build_output({"format": "jsonl", "path": tmp_path / "a.jsonl"}).path == tmp_path / "a.jsonl"


_UNSET_ALL = {key: None for key in OPTION_KEYS - {"format", "url", "path"}}


def test_an_option_set_to_none_takes_its_default_as_if_absent():
    """An option whose value is None is unset (docs/delivery.md): it takes its default, the same
    as an absent key; it is neither an error nor a value read as false (``gzip = None`` once
    turned compression off, ``connect_timeout = None`` failed a range check, and the syslog
    output raised a raw TypeError)."""
    from sensor.deliver.http import _common_kwargs
    url = {"url": "https://127.0.0.1:9/in"}
    assert _common_kwargs(dict(url, **_UNSET_ALL)) == _common_kwargs(url)
    kw = _common_kwargs(dict(url, **_UNSET_ALL))
    assert (kw["gzip"], kw["gzip_level"], kw["connect_timeout"], kw["read_timeout"]) == (True, 1, 5.0, 30.0)
    assert (kw["allow_http"], kw["pool_maxsize"], kw["headers"], kw["document"]) == (False, 2, {}, "ecs")
    for fmt, base in _BASE.items():
        out = build_output(dict(base, format=fmt, **{k: None for k in _UNSET_ALL if k not in base}))
        try:
            if fmt in ("ecs", "splunk_hec", "elasticsearch", "webhook"):
                t = out.transport
                assert (t.gzip, t.gzip_level, t.read_timeout) == (True, 1, 30.0), fmt
                assert out.extra_headers == {} and out.document == "ecs", fmt
            elif fmt == "syslog":
                assert (out.connect_timeout, out.send_timeout, out.use_tls) == (5.0, 30.0, True)
                assert out.format == "rfc5424" and out.app_name == "etw-sensor" and out.document == "ecs"
            else:
                assert out.document == "ecs"
        finally:
            out.close()


def test_a_secret_file_path_that_cannot_name_a_file_is_a_configuration_error(tmp_path):
    # a NUL cannot be in a path; a secret file that is not UTF-8 cannot be a token: both are the
    # key's error, never a raw ValueError, and the error never shows the file's content
    with pytest.raises(ConfigError, match=r"^token_file: cannot read"):
        build_output({"url": "https://127.0.0.1:9/in", "token_file": "tok\0en"})
    bad = tmp_path / "token"
    bad.write_bytes(b"s3cr3t\xff\xfe")
    with pytest.raises(ConfigError, match=r"^hmac_secret_file: cannot read") as caught:
        build_output({"format": "webhook", "url": "https://127.0.0.1:9/in", "hmac_secret_file": str(bad)})
    assert "s3cr3t" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=30))
def test_text_repair_gives_utf8_text_as_utf16_reads_it(text):
    # docs/delivery.md: each lone surrogate is one U+FFFD, a pair held as two halves is joined,
    # all else is unchanged; the result is always UTF-8 text, and repairing it again changes nothing
    from sensor.deliver.text import repair
    fixed = repair(text)
    fixed.encode("utf-8")                                   # strict: raises on any surrogate left
    assert repair(fixed) == fixed
    want, i = [], 0
    while i < len(text):
        c = text[i]
        if "\ud800" <= c <= "\udbff" and i + 1 < len(text) and "\udc00" <= text[i + 1] <= "\udfff":
            want.append(chr(0x10000 + ((ord(c) - 0xD800) << 10) + ord(text[i + 1]) - 0xDC00))
            i += 2
            continue
        want.append("\ufffd" if "\ud800" <= c <= "\udfff" else c)
        i += 1
    assert fixed == "".join(want)
    assert repair({text: [text, (text,)], 1: None}) == {fixed: [fixed, [fixed]], 1: None}


def test_jsonl_document_is_ecs_or_alert(tmp_path):
    with pytest.raises(ConfigError, match="document must be ecs or alert"):
        build_output({"format": "jsonl", "path": str(tmp_path / "a.jsonl"), "document": "xml"})


def test_config_test_names_a_wrongly_typed_output_key_without_a_traceback(tmp_path, capsys):
    """README "Configuration": ``config test`` lists each problem with its key; exit 2."""
    cfg = tmp_path / "sensor.toml"
    cfg.write_text('[output]\nformat = "ecs"\nurl = "https://127.0.0.1:9/in"\ntoken = "t"\n'
                   'headers = 5\nallow_http = "no"\n')
    os.chmod(cfg, 0o600)
    code = cli.main(["config", "test", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert "output.headers" in err and "output.allow_http" in err and "Traceback" not in err


# -- local outputs ---------------------------------------------------------------------------------

def test_jsonl_output_appends_ecs_lines(tmp_path):
    out = build_output({"format": "jsonl", "path": str(tmp_path / "a" / "alerts.jsonl")})
    assert out.send_batch(ALERTS[:2]).delivered == IDS[:2]
    assert out.send_batch(ALERTS[2:3]).outcome == OK
    lines = (tmp_path / "a" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"]["id"] for x in lines] == IDS[:3]


@pytest.mark.skipif(os.name != "posix", reason="file mode bits are POSIX (Windows uses the folder's ACL)")
def test_jsonl_output_file_is_private_and_its_folder_comes_back(tmp_path):
    """One write and one fsync per batch through a raw descriptor: the file is still created
    0600, a folder removed after the first batch is made again, and an unwritable path is a
    retry that keeps the alerts."""
    folder = tmp_path / "a"
    out = build_output({"format": "jsonl", "path": str(folder / "alerts.jsonl")})
    assert out.send_batch(ALERTS[:1]).outcome == OK
    assert (folder / "alerts.jsonl").stat().st_mode & 0o777 == 0o600
    (folder / "alerts.jsonl").unlink()
    folder.rmdir()
    assert out.send_batch(ALERTS[1:3]).delivered == IDS[1:3]
    assert [json.loads(x)["event"]["id"] for x in (folder / "alerts.jsonl").read_text().splitlines()] == IDS[1:3]
    (folder / "alerts.jsonl").unlink()
    (folder / "alerts.jsonl").mkdir()        # a folder where the file should be
    res = out.send_batch(ALERTS[:1])
    assert res.outcome == RETRY and "cannot write" in res.error and not res.delivered


def test_memory_output_records_and_scripts():
    out = build_output({"format": "memory"})
    assert isinstance(out, MemoryOutput)
    assert out.send_batch(ALERTS[:2]).outcome == OK and out.ids == IDS[:2]


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_output_test_delivers(receiver, capsys, monkeypatch):
    monkeypatch.setenv("SENSOR_TEST_TOKEN", "s3cr3t-token")
    rc = cli.main(["output", "test", "--url", receiver.url, "--ca-file", str(receiver.ca_file),
                   "--token-env", "SENSOR_TEST_TOKEN", "--format", "splunk_hec"])
    out = capsys.readouterr().out
    assert rc == 0 and "DELIVERED" in out and "HEC is healthy" in out
    assert len(receiver.ids()) == 1
    assert "s3cr3t-token" not in out


def test_cli_output_test_refuses_and_reports(receiver, capsys):
    rc = cli.main(["output", "test", "--url", receiver.url, "--token", "s3cr3t-token", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["outcome"] == PARK and report["delivered"] is False
    rc = cli.main(["output", "test", "--url", "http://127.0.0.1:9/"])
    assert rc == 2 and "allow_http" in capsys.readouterr().err


def test_receiver_decodes_gzip_and_rejects_garbage(receiver):
    import urllib3
    pool = urllib3.HTTPSConnectionPool("127.0.0.1", receiver.port, ca_certs=str(receiver.ca_file),
                                       cert_reqs="CERT_REQUIRED", assert_hostname="127.0.0.1")
    r = pool.urlopen("POST", "/x", body=gzip.compress(b"not json"),
                     headers={"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson",
                              "Authorization": "Bearer s3cr3t-token"})
    assert r.status == 400
    pool.close()


def test_insecure_with_pin_still_checks_the_pin(receiver):
    with Receiver() as other:  # a certificate from a CA we do not trust
        ok = build_output({"url": other.url, "insecure_skip_verify": True, "pin_sha256": other.cert_sha256})
        assert ok.send_batch(ALERTS[:1]).outcome == OK
        bad = build_output({"url": other.url, "insecure_skip_verify": True, "pin_sha256": "ef" * 32})
        assert bad.send_batch(ALERTS[:1]).outcome == PARK
        ok.close()
        bad.close()


@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook"])
def test_receiver_keeps_documents_when_asked(fmt):
    with Receiver(keep_documents=True) as rec:
        out = build_output({"url": rec.url, "ca_file": str(rec.ca_file), "format": fmt})
        assert out.send_batch(ALERTS[:2]).outcome == OK
        out.close()
        docs = rec.documents()
    assert [d["event"]["id"] for d in docs] == IDS[:2]
    assert docs[0]["process"]["executable"].endswith("mofcomp.exe")


def test_output_test_uses_the_config_file(receiver, tmp_path, capsys):
    """`output test -c FILE` sends through the configured [output]; options override it."""
    from sensor.cli import main
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(
        '[source]\nkind = "replay"\n[source.replay]\npaths = ["x.jsonl"]\n'
        f'[output]\nformat = "splunk_hec"\nurl = "{receiver.url}"\n'
        f'ca_file = "{receiver.ca_file}"\ntoken_env = "SENSOR_TEST_OUTPUT_TOKEN"\n')
    import os
    os.environ["SENSOR_TEST_OUTPUT_TOKEN"] = receiver.token or "t"
    try:
        assert main(["output", "test", "-c", str(cfg), "--json"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["delivered"] and report["format"] == "splunk_hec"
        assert report["alert_id"] in receiver.ids()
        bad = tmp_path / "bad.toml"
        bad.write_text('[output]\nformatt = "x"\n')
        assert main(["output", "test", "-c", str(bad)]) == 2
    finally:
        del os.environ["SENSOR_TEST_OUTPUT_TOKEN"]


# -- answers read without a network (the documented API facts of each receiver) -------------------

def _resp(status, body=b"", headers=None):
    return HttpResponse(status, headers or {}, body if isinstance(body, bytes) else json.dumps(body).encode())


def _hec():
    from sensor.deliver.splunk import SplunkHecOutput
    return SplunkHecOutput("https://127.0.0.1:9")


@pytest.mark.parametrize("status,body,outcome", [
    (200, {"text": "Success", "code": 0}, OK),
    (200, b"", OK),                                          # no JSON body: the status decides
    (200, {"text": "Data channel is missing", "code": 10}, PARK),   # a configuration code
    (200, {"text": "Server is busy", "code": 9}, RETRY),     # 2xx with another code: no confirmation
    (400, {"text": "Invalid token", "code": 4}, PARK),
    (400, {"text": "Incorrect index", "code": 7}, PARK),
    (400, {"text": "No data", "code": 5}, BISECT),           # no event number: find it by halving
    (400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 3}, BISECT),  # past the end
    (400, {"text": "Invalid data format", "code": 6, "invalid-event-number": -1}, BISECT),
    (400, {"text": "Invalid data format", "code": 6, "invalid-event-number": "1"}, BISECT),
    (503, {"text": "Server is busy", "code": 9}, RETRY),
    (401, {"text": "Token is required", "code": 2}, PARK),
    (403, {"text": "Invalid token", "code": 4}, PARK),
    (500, b"oops", RETRY),
])
def test_hec_answers(status, body, outcome):
    res = _hec().interpret(ALERTS[:3], _resp(status, body))
    assert res.outcome == outcome
    if outcome == OK:
        assert res.delivered == IDS[:3]
    else:
        assert not res.delivered


@pytest.mark.parametrize("n", [0, 2])
def test_hec_invalid_event_number_names_that_event_and_resends_the_rest(n):
    res = _hec().interpret(ALERTS[:3], _resp(400, {"text": "Invalid data format", "code": 6,
                                                    "invalid-event-number": n}))
    assert res.outcome == RESEND and list(res.rejected) == [IDS[n]]
    assert "HEC 400 code 6: Invalid data format" in res.rejected[IDS[n]]


@pytest.mark.parametrize("status,honoured", [(429, True), (503, True), (500, False)])
def test_hec_retry_after_on_429_and_503(status, honoured):
    res = _hec().interpret(ALERTS[:1], _resp(status, {"text": "busy", "code": 9}, {"Retry-After": "4"}))
    assert res.outcome == RETRY and res.retry_after == (4.0 if honoured else None)


def test_hec_envelope_host_falls_back_from_config_to_alert_to_this_machine():
    import socket
    from sensor.deliver.splunk import SplunkHecOutput
    alert = dict(ALERTS[0])
    assert SplunkHecOutput("https://h:9", host="cfg").envelope(alert)["host"] == "cfg"
    assert _hec().envelope(alert)["host"] == alert["HOSTNAME"]
    bare = {k: v for k, v in alert.items() if k != "HOSTNAME"}
    bare["event"] = dict(bare.get("event") or {}, Computer="FROM-EVENT")
    assert _hec().envelope(bare)["host"] == "FROM-EVENT"
    bare["event"].pop("Computer")
    assert _hec().envelope(bare)["host"] == socket.gethostname()
    env = _hec().envelope(alert)
    assert "index" not in env and env["source"] == "etw-sensor"


def test_hec_options_and_path():
    from sensor.deliver.splunk import SplunkHecOutput
    out = SplunkHecOutput.from_options({"url": "https://h:8088", "index": "sec", "sourcetype": "",
                                        "source": None})
    assert (out.index, out.source, out.sourcetype) == ("sec", "etw-sensor", "etw-sensor:alert")
    assert out.request_path("") == out.request_path("/") == "/services/collector/event"
    assert out.request_path("/custom/event") == "/custom/event"


def _es():
    from sensor.deliver.elastic import ElasticsearchOutput
    return ElasticsearchOutput("https://127.0.0.1:9")


def _items(*statuses):
    out = []
    for s in statuses:
        res = {"status": s} if s is not None else {}
        if s is not None and not (200 <= s < 300 or s == 409):
            res["error"] = {"type": f"t{s}", "reason": f"r{s}"}
        out.append({"create": res})
    return {"errors": True, "items": out}


@pytest.mark.parametrize("statuses,outcome,delivered,rejected", [
    ((201, 409, 201), OK, [0, 1, 2], []),
    ((201, 400, 404), OK, [0], [1, 2]),            # other 4xx: dead letter, the rest is done
    ((201, 429, 400), RETRY, [0], [2]),            # 429: try that one again
    ((201, 500, 201), RETRY, [0, 2], []),
    ((201, 408, 201), RETRY, [0, 2], []),
    ((201, 499, 201), OK, [0, 2], [1]),
    ((201, 401, 429), PARK, [0], []),              # auth: park, whatever else failed
    ((201, 429, 403), PARK, [0], []),
    ((201, None, 201), RETRY, [0, 2], []),         # an item without a status: not confirmed
    ((200, 299, 300), OK, [0, 1], [2]),
    ((199, 201, 201), OK, [1, 2], [0]),            # 1xx: not a 2xx, no confirmation
])
def test_bulk_item_statuses(statuses, outcome, delivered, rejected):
    res = _es().interpret(ALERTS[:3], _resp(200, _items(*statuses)))
    assert res.outcome == outcome
    assert res.delivered == [IDS[i] for i in delivered]
    assert sorted(res.rejected) == sorted(IDS[i] for i in rejected)
    for i in rejected:
        assert res.item_status[IDS[i]] == statuses[i]
        assert res.rejected[IDS[i]] == f"item {statuses[i]} t{statuses[i]}: r{statuses[i]}"


def test_bulk_answers_that_confirm_nothing():
    es = _es()
    assert es.interpret(ALERTS[:2], _resp(200, {"errors": False, "items": []})).delivered == IDS[:2]
    assert es.interpret(ALERTS[:2], _resp(200, b"not json")).outcome == RETRY
    assert es.interpret(ALERTS[:2], _resp(200, b"[1]")).outcome == RETRY
    wrong = es.interpret(ALERTS[:2], _resp(200, _items(201)))          # one item for two alerts
    assert wrong.outcome == RETRY and not wrong.delivered
    assert es.interpret(ALERTS[:2], _resp(200, {"errors": True, "items": "x"})).outcome == RETRY
    assert es.interpret(ALERTS[:2], _resp(413)).outcome == SPLIT       # not 200: the status decides
    first = es.interpret(ALERTS[:3], _resp(200, _items(400, 404, 201)))
    assert first.error == "item 400 t400: r400"                         # the first error is reported


def test_bulk_path():
    from sensor.deliver.elastic import ElasticsearchOutput
    assert ElasticsearchOutput("https://h:9200/").path == "/_bulk"
    assert ElasticsearchOutput("https://h:9200/x/_bulk/").path == "/x/_bulk"
    assert ElasticsearchOutput.from_options({"url": "https://h:9", "index": ""}).index == "logs-sensor.alert-default"


def test_webhook_idempotency_key_is_the_id_or_a_hash_of_the_ids():
    from sensor.deliver.webhook import idempotency_key
    assert idempotency_key(["a"]) == "a"
    assert idempotency_key(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest()
    assert idempotency_key(["a", "b"]) != idempotency_key(["b", "a"])


def test_hec_a_redirect_is_not_a_confirmation():
    res = _hec().interpret(ALERTS[:1], _resp(300, {"text": "Success", "code": 0}))
    assert res.outcome == PARK and not res.delivered


def test_hec_health_reports_an_unhealthy_collector():
    # HEC answers its health endpoint with 503 while it is busy (code 9): not healthy
    import http.server
    import threading

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"text":"Server is busy","code":9}'
            self.send_response(503 if self.path == "/services/collector/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        out = build_output({"format": "splunk_hec", "url": f"http://127.0.0.1:{srv.server_port}",
                            "allow_http": True, "token": "t"})
        res = out.check()
        assert res.outcome == RETRY and res.status == 503 and "busy" in res.detail
        out.close()
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(10)


def test_hec_health_check_of_an_unreachable_collector_is_a_result_not_an_exception(receiver):
    # `sensor output test` reports an unreachable collector; it must not raise
    out = build_output(opts(receiver, format="splunk_hec", connect_timeout=1))
    receiver.down()
    res = out.check()
    assert res.outcome == RETRY and res.status is None and "connect" in res.error
    assert "s3cr3t-token" not in res.error
    out.close()


@pytest.mark.parametrize("code", [1, 2, 3, 4, 7, 10, 11, 14])
@pytest.mark.parametrize("status", [200, 400])
def test_hec_token_index_and_channel_codes_are_configuration(status, code):
    # docs/delivery.md: a HEC 400 about the token, index or channel (codes 1-4, 7, 10, 11, 14)
    # parks; no event is to blame, so never bisect, and a 2xx with such a code confirms nothing
    res = _hec().interpret(ALERTS[:3], _resp(status, {"text": "t", "code": code}))
    assert res.outcome == PARK and not res.delivered


@pytest.mark.parametrize("code", [5, 6, 12, 13])
def test_hec_event_codes_are_not_configuration(code):
    # no data, invalid data format, event field required / blank: about an event, find it
    res = _hec().interpret(ALERTS[:3], _resp(400, {"text": "t", "code": code}))
    assert res.outcome == BISECT


@pytest.mark.parametrize("given,expected", [(None, "etw-sensor:health"), ("", "etw-sensor:health"),
                                            ("sec:health", "sec:health")])
def test_hec_health_documents_get_the_health_sourcetype(given, expected):
    # docs/delivery.md: health documents go in an envelope with `health_sourcetype`
    # (default etw-sensor:health); alerts keep the alert sourcetype
    from sensor.deliver.health import health_document
    from sensor.deliver.splunk import SplunkHecOutput
    options = {"url": "https://h:8088"}
    if given is not None:
        options["health_sourcetype"] = given
    out = SplunkHecOutput.from_options(options)
    doc = health_document({"events": {"in": 5}}, reason="heartbeat", boot_id="b1", seq=7,
                          sensor={"host": "WS1"}, ts=1767225600.0, summary="heartbeat: 5 events")
    assert out.envelope(doc)["sourcetype"] == expected
    assert out.envelope(ALERTS[0])["sourcetype"] == "etw-sensor:alert"


@pytest.mark.parametrize("status,confirmed", [(199, False), (200, True), (204, True), (299, True),
                                              (300, False)])
def test_hec_only_a_2xx_with_code_0_confirms(status, confirmed):
    # docs/delivery.md: delivered means 2xx with HEC code 0, every 2xx and nothing else
    res = _hec().interpret(ALERTS[:2], _resp(status, {"text": "Success", "code": 0}))
    assert (res.outcome == OK) == confirmed
    assert res.delivered == (IDS[:2] if confirmed else [])


def test_hec_health_an_informational_answer_is_not_healthy():
    # a 1xx final answer (http.client returns any 1xx but 100 as the response) is no "healthy"
    import http.server
    import threading

    class Odd(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(199, "Odd")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        out = build_output({"format": "splunk_hec", "url": f"http://127.0.0.1:{srv.server_port}",
                            "allow_http": True, "token": "t", "read_timeout": 10})
        res = out.check()
        assert res.status == 199 and res.outcome != OK
        out.close()
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(10)


def test_bulk_an_item_that_is_not_an_object_is_not_confirmed():
    # a hostile or broken receiver's item list: an item that is no {"create": {...}} object
    # confirms nothing and never stops the batch's interpretation
    for odd in ("create", ["create", {"status": 201}], 201, {}):
        res = _es().interpret(ALERTS[:2], _resp(200, {"errors": True,
                                                      "items": [odd, {"create": {"status": 201}}]}))
        assert res.outcome == RETRY and res.delivered == [IDS[1]] and not res.rejected, odd


@pytest.mark.parametrize("given,expected", [(None, "metrics-sensor.health-default"),
                                            ("", "metrics-sensor.health-default"),
                                            ("metrics-x", "metrics-x")])
def test_bulk_health_documents_go_to_the_health_index(given, expected):
    # docs/delivery.md: health documents go to `health_index` (a metrics data stream)
    from sensor.deliver.elastic import ElasticsearchOutput
    from sensor.deliver.health import health_document
    options = {"url": "https://h:9200"}
    if given is not None:
        options["health_index"] = given
    out = ElasticsearchOutput.from_options(options)
    doc = health_document({"events": {"in": 5}}, reason="heartbeat", boot_id="b1", seq=7,
                          sensor={"host": "WS1"}, ts=1767225600.0, summary="heartbeat: 5 events")
    action = json.loads(out.encode_one(doc).split(b"\n")[0])
    assert action == {"create": {"_index": expected, "_id": doc["id"]}}
    alert_action = json.loads(out.encode_one(ALERTS[0]).split(b"\n")[0])
    assert alert_action["create"]["_index"] == "logs-sensor.alert-default"


def test_bulk_item_error_kept_is_at_most_300_characters():
    # docs/delivery.md: the dead-letter reason is `item <status> <type>: <reason>`, cut to 300
    # characters, so a receiver's text cannot grow the spool without bound
    body = {"errors": True, "items": [{"create": {"status": 400, "error": {"type": "mapper_parsing_exception",
                                                                         "reason": "x" * 5000}}}]}
    reason = _es().interpret(ALERTS[:1], _resp(200, body)).rejected[IDS[0]]
    assert reason == ("item 400 mapper_parsing_exception: " + "x" * 5000)[:300] and len(reason) == 300


def test_plain_http_is_refused_by_the_classes_themselves_not_only_by_the_config():
    # The default of allow_http is the safe one wherever an output is built, not just in
    # build_output's option parsing (docs/delivery.md: plain http only when asked for).
    from sensor.deliver.http import HttpOutput, HttpTransport
    with pytest.raises(ConfigError, match="allow_http"):
        HttpTransport("http://127.0.0.1:9/x")
    with pytest.raises(ConfigError, match="allow_http"):
        HttpOutput("http://127.0.0.1:9/x")


def test_the_receivers_answer_reaches_the_result_with_the_token_masked():
    # What the receiver said is what an operator needs to see in the log and the status; a
    # receiver that echoes the request's token must not put it there.
    import http.server
    import threading

    class Overloaded(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"queue full; auth was {self.headers.get('Authorization')}".encode()
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Overloaded)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        out = build_output({"url": f"http://127.0.0.1:{srv.server_port}/in", "allow_http": True,
                            "token": "tok-5ecret-value"})
        res = out.send_batch(ALERTS[:1])
        assert res.outcome == RETRY and res.status == 503
        assert "queue full" in res.detail and "***" in res.detail
        assert "tok-5ecret-value" not in res.detail
        out.close()
    finally:
        srv.shutdown()
        srv.server_close()


# -- the ECS document's caches: the alerts of one event share its fields and times, and a
#    stream of distinct events or times (any host's normal traffic, or a hostile one) never
#    grows them past their bounds ---------------------------------------------------------------

def test_ecs_caches_are_bounded_and_shared_by_the_alerts_of_one_event():
    from sensor.deliver import ecs as ecs_mod
    ecs_mod._ISO_CACHE.clear()
    for i in range(3 * ecs_mod._ISO_CACHE_MAX):
        assert ecs_mod.iso_time(f"2026-08-20 10:{i // 60 % 60:02d}:{i % 60:02d}.000") is not None
        assert len(ecs_mod._ISO_CACHE) <= ecs_mod._ISO_CACHE_MAX
    # a value of exactly the remembered length is remembered, a longer one never is
    ecs_mod._ISO_CACHE.clear()
    at = "2026-08-20T10:11:12.345Z".ljust(ecs_mod._ISO_CACHE_TEXT)
    over = at + " "
    ecs_mod.iso_time(at)
    ecs_mod.iso_time(over)
    assert at in ecs_mod._ISO_CACHE and over not in ecs_mod._ISO_CACHE
    ecs_mod._EVENT_CACHE.clear()
    for i in range(3 * ecs_mod._EVENT_CACHE_MAX):
        ecs_mod._event_part({"Image": f"C:\\x\\{i}.exe", "ProcessId": i})
        assert len(ecs_mod._EVENT_CACHE) <= ecs_mod._EVENT_CACHE_MAX
    ev = {"Image": "C:\\Windows\\System32\\cmd.exe", "ProcessId": 4, "User": "DOM\\alice"}
    first = ecs_mod._event_part(ev)
    assert ecs_mod._event_part(dict(ev)) is first          # one event's alerts share one part
    # "the last few": more than one at a time (a batch interleaves the alerts of a few events)
    ecs_mod._ISO_CACHE.clear()
    ecs_mod.iso_time("2026-08-20 10:11:12.345")
    ecs_mod.iso_time("2026-08-20 10:11:13.345")
    assert {"2026-08-20 10:11:12.345", "2026-08-20 10:11:13.345"} <= set(ecs_mod._ISO_CACHE)
    other = {"Image": "C:\\Windows\\System32\\whoami.exe", "ProcessId": 8}
    ecs_mod._EVENT_CACHE.clear()
    first, second = ecs_mod._event_part(ev), ecs_mod._event_part(other)
    assert ecs_mod._event_part(dict(ev)) is first and ecs_mod._event_part(dict(other)) is second


# -- the TLS policy's own promises (docs/delivery.md "TLS and secrets") ----------------------------

def test_a_pin_may_carry_a_sha256_prefix_and_colons():
    from sensor.deliver.tls import TLSConfig
    hexpin = hashlib.sha256(b"leaf").hexdigest()
    colons = ":".join(hexpin[i:i + 2] for i in range(0, 64, 2)).upper()
    for given in (hexpin, "sha256/" + hexpin, "sha256=" + hexpin, "SHA256/" + colons, "sha256=" + colons):
        assert TLSConfig.from_options({"pin_sha256": given}).pin_sha256 == hexpin, given
    for wrong in ("sha256/" + hexpin[:-1], "sha256:" + hexpin[:-2] + "x", "sha1/" + hexpin):
        with pytest.raises(ConfigError, match="^pin_sha256 must be 64 hex digits"):
            TLSConfig.from_options({"pin_sha256": wrong})


def test_verification_is_on_unless_asked_and_a_built_policy_cannot_be_changed():
    import dataclasses
    from sensor.deliver.tls import TLSConfig
    for cfg in (TLSConfig(), TLSConfig.from_options({})):
        assert cfg.insecure_skip_verify is False
        ctx = cfg.ssl_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        # from_options checked it (files exist, client_key has its client_cert): it stays so
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.insecure_skip_verify = True  # type: ignore[misc]
    assert TLSConfig.from_options({"insecure_skip_verify": True}).ssl_context().verify_mode == ssl.CERT_NONE


def test_a_ca_file_or_client_certificate_that_cannot_be_loaded_is_a_configuration_error(tmp_path):
    from sensor.deliver.tls import TLSConfig
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    gone = tmp_path / "gone.pem"
    gone.write_text("x")
    for key, path in (("ca_file", junk), ("client_cert", junk), ("ca_file", gone), ("client_cert", gone)):
        cfg = TLSConfig.from_options({key: str(path)})
        if path == gone:
            gone.unlink()   # removed after the options were checked, before the context is built
        with pytest.raises(ConfigError, match=f"^{key}: cannot load {path}"):
            cfg.ssl_context()
        gone.write_text("x")


def test_secrets_are_equal_only_to_the_same_secret():
    assert Secret("hunter2") == Secret("hunter2")
    assert Secret("hunter2") != Secret("hunter3") and Secret("a") != Secret("")
    assert Secret("hunter2") != "hunter2" and "hunter2" != Secret("hunter2")


def test_the_insecure_warning_names_the_pin_only_when_one_is_set(caplog):
    from sensor.deliver.tls import TLSConfig
    with caplog.at_level(logging.WARNING):
        TLSConfig(insecure_skip_verify=True).warn_if_insecure("https://h.example/x")
    assert "verification is DISABLED" in caplog.text and "pin" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        TLSConfig(insecure_skip_verify=True, pin_sha256="ab" * 32).warn_if_insecure("https://h.example/x")
    assert "only the SHA-256 pin protects it" in caplog.text


def test_a_pin_mismatch_says_which_certificate_the_server_presented(receiver):
    out = build_output(opts(receiver, pin_sha256="ab" * 32))
    res = out.send_batch(ALERTS[:1])
    out.close()
    assert res.outcome == PARK
    assert f"pin mismatch: server presented sha256 {receiver.cert_sha256}" in res.error


def test_an_unreadable_secret_file_or_output_file_says_why_in_the_system_s_words(tmp_path):
    import errno
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as caught:
        load_secret({"token_file": str(missing)}, "token")
    assert str(caught.value) == f"token_file: cannot read {missing}: {os.strerror(errno.ENOENT)}"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    out = build_output({"format": "jsonl", "path": str(folder)})
    res = out.send_batch(ALERTS[:1])
    out.close()
    assert res.outcome == RETRY
    assert res.error == f"cannot write {folder}: {os.strerror(errno.EISDIR)}"
