"""The syslog output: message formats and framing, and delivery to a real rsyslog (Debian's
``rsyslog`` + ``rsyslog-gnutls``, started here with a TLS listener on localhost and
certificates made by trustme): the collector down then up, TLS refused on a wrong CA, mutual
TLS, every alert arriving once, health documents and RFC 3164 for older collectors."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.health import health_alert, health_document
from sensor.deliver.outputs import build_output
from sensor.deliver.tls import ConfigError
from sensor.deliver.protocol import OK, PARK, RETRY
from sensor.deliver.spool import Spool
from sensor.deliver.syslog import (format_3164, format_5424, frame_lf, frame_octet_counting,
                                   severity)

WAIT = 60.0
RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
GTLS = any(Path(d, "lmnsd_gtls.so").exists() for d in ("/usr/lib/x86_64-linux-gnu/rsyslog",
                                                        "/usr/lib/aarch64-linux-gnu/rsyslog",
                                                        "/usr/lib/rsyslog"))
need_rsyslog = pytest.mark.skipif(
    not (RSYSLOGD and GTLS),
    reason="rsyslog with its GnuTLS driver is not installed (Debian: rsyslog rsyslog-gnutls; "
           ".ci/run installs them where it can)")


def alert(i: int, level: str = "high", cmd: str | None = None) -> dict:
    return {"id": f"a-{i:05d}", "timestamp": "2024-05-01T12:00:00.123Z", "HOSTNAME": "host one",
            "rule": {"id": "r1", "title": "T", "level": level},
            "event": {"Image": "C:\\x.exe", "CommandLine": cmd or f"x.exe n{i}"}}


# -- formats (pure) ------------------------------------------------------------------------------

def test_rfc5424_and_octet_counting():
    body = b'{"a":1}'
    msg = format_5424(alert(1), body, facility=16, app_name="etw-sensor")
    # local0 (16) * 8 + err (3) = 131; the host's space becomes "_"
    assert msg == b'<131>1 2024-05-01T12:00:00.123Z host_one etw-sensor - alert - {"a":1}'
    framed = frame_octet_counting(msg)
    assert framed == str(len(msg)).encode() + b" " + msg
    assert severity({"type": "metric"}) == 6 and severity(alert(1, "critical")) == 2
    assert severity(alert(1, "whatever")) == 4
    doc = health_document({"x": 1}, reason="heartbeat", boot_id="b", seq=3, sensor={"host": "h"},
                          ts=0.0, summary="s")
    assert b" health - " in format_5424(doc, b"{}", facility=16, app_name="etw-sensor")
    ha = health_alert("etw_loss", "m", {}, sensor={"host": "h"}, ts=0.0, key="k")
    assert b" health-alert - " in format_5424(ha, b"{}", facility=16, app_name="etw-sensor")


def test_rfc3164_and_lf_framing():
    msg = format_3164(alert(1, "medium"), b'{"a":1}', facility=4, app_name="etw sensor!")
    assert msg == b'<36>May  1 12:00:00 host_one etwsensor: {"a":1}'
    assert frame_lf(b"a\nb\0c") == b"a b c\n"


def test_options_are_checked():
    with pytest.raises(ValueError, match="clear text"):
        build_output({"format": "syslog", "url": "tcp://127.0.0.1:514"})
    with pytest.raises(ValueError, match="tls://"):
        build_output({"format": "syslog", "url": "https://127.0.0.1:514"})
    with pytest.raises(ValueError, match="syslog_facility"):
        build_output({"format": "syslog", "url": "tcp://127.0.0.1", "allow_http": True,
                      "syslog_facility": "nope"})
    out = build_output({"format": "syslog", "url": "tcp://127.0.0.1", "allow_http": True,
                        "syslog_format": "rfc3164"})
    assert out.port == 514 and out.framing == "lf"
    out.close()


def test_abort_ends_a_write_the_collector_does_not_read():
    # A collector that takes the connection and never reads: the batch's write blocks once the
    # socket buffers are full (for read_timeout, an hour here). abort() (a stop) ends it.
    import threading
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{port}", "allow_http": True,
                            "read_timeout": 3600})
        big = [alert(i, cmd="x" * 60_000) for i in range(400)]    # 24 MB: more than the buffers
        got: list = []
        t = threading.Thread(target=lambda: got.append(out.send_batch(big)), daemon=True)
        t.start()
        conn, _ = srv.accept()
        try:
            end = time.monotonic() + WAIT
            while out._sock is None and time.monotonic() < end:   # connected: the write goes on
                time.sleep(0.01)
            time.sleep(0.2)                    # (24 MB to a peer that reads nothing: it blocks)
            assert t.is_alive()
            out.abort()
            t.join(WAIT)                                       # WAIT only guards a hang
            assert not t.is_alive() and got[0].outcome == RETRY
            assert out.send_batch([alert(1)]).outcome == RETRY  # and nothing more is sent
        finally:
            conn.close()
            out.close()


def test_config_accepts_syslog_and_names_bad_keys():
    from sensor.daemon.config import ConfigError, parse
    cfg = parse({"output": {"format": "syslog", "url": "tls://siem:6514"}}, "<t>")
    assert cfg.output.format == "syslog"
    with pytest.raises(ConfigError) as exc:
        parse({"output": {"format": "syslog", "syslog_facility": "x", "syslog_framing": "zz"}}, "<t>")
    text = "\n".join(exc.value.errors)
    assert "output.syslog_framing" in text and "output.url" in text


# -- a real rsyslog -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """rsyslogd in the foreground with one TLS (or plain TCP) listener writing what it
    receives to a file: severity|facility|hostname|app-name|msgid|msg per line."""

    def __init__(self, tmp: Path, port: int, ca, cert, *, tls: bool = True, client_auth: bool = False):
        self.dir = tmp
        self.port = port
        self.out = tmp / "received.log"
        (tmp / "work").mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
        cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
        driver = (f'defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{tmp}/ca.pem" '
                  f'defaultNetstreamDriverCertFile="{tmp}/cert.pem" '
                  f'defaultNetstreamDriverKeyFile="{tmp}/key.pem"') if tls else ""
        mode = ('streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode='
                + ('"x509/certvalid"' if client_auth else '"anon"')) if tls else ""
        (tmp / "rsyslog.conf").write_text(f"""
global(workDirectory="{tmp}/work" maxMessageSize="256k" {driver})
module(load="imtcp" {mode})
template(name="fields" type="string"
         string="%syslogseverity%|%syslogfacility%|%hostname%|%app-name%|%msgid%|%msg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{self.out}" template="fields") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="in")
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        log = self.dir / "rsyslogd.out"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.dir / "rsyslog.conf"),
                                          "-i", str(self.dir / "rsyslog.pid")],
                                         stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited: {log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("rsyslogd did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [ln.split("|", 5) for ln in self.out.read_text(errors="replace").splitlines() if ln]


@pytest.fixture(scope="module")
def pki():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1", "localhost")


def wait_for(pred, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def forwarder(tmp: Path, options: dict) -> tuple[Spool, Forwarder]:
    spool = Spool(str(tmp / "spool.sqlite"))
    fw = Forwarder(spool, build_output(options),
                   DeliveryConfig(batch_size=50, linger=0.0, backoff_base=0.05, backoff_cap=0.2,
                                  park_interval=0.2, poll_interval=0.05))
    return spool, fw


@need_rsyslog
def test_every_alert_arrives_once_with_the_collector_down_then_up(tmp_path, pki):
    ca, cert = pki
    port = free_port()
    rs = Rsyslog(tmp_path / "rs", port, ca, cert)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    spool, fw = forwarder(tmp_path, {"format": "syslog", "url": f"tls://127.0.0.1:{port}",
                                     "ca_file": str(tmp_path / "ca.pem")})
    long_cmd = "x" * 30000   # a command line near Windows' limit travels whole
    spool.put_many([alert(i) for i in range(120)] + [alert(999, cmd=long_cmd)])
    fw.start()
    try:
        # the collector is down: nothing is sent, nothing is lost
        wait_for(lambda: fw.stats()["failed_attempts"] >= 2, "failed attempts")
        assert spool.depth() == 121 and "connection refused" in fw.stats()["last_error"]
        rs.start()
        wait_for(lambda: spool.depth() == 0, "the spool to drain")
        # a health document goes out too, with its own MSGID and severity
        doc = health_document({"events": {"in": 5}}, reason="heartbeat", boot_id="boot1", seq=0,
                              sensor={"host": "h1"}, ts=time.time(), summary="heartbeat: 5 events")
        spool.put_many([doc], kind="alert")
        # the collector restarts: the connection is made again, nothing is lost
        wait_for(lambda: len(rs.lines()) >= 122, "rsyslog to write 122 messages")
        rs.stop()
        rs.start()
        spool.put_many([alert(i) for i in range(200, 230)])
        wait_for(lambda: len(rs.lines()) >= 152, "the messages after the restart")
    finally:
        fw.stop()
        fw.output.close()
        rs.stop()
    lines = rs.lines()
    ids = [json.loads(m)["event"]["id"] for *_, m in lines]
    want = [f"a-{i:05d}" for i in list(range(120)) + [999] + list(range(200, 230))] + ["boot1-0000000000"]
    assert sorted(ids) == sorted(want)          # each exactly once
    by_id = {json.loads(m)["event"]["id"]: (sev, fac, host, app, mid, json.loads(m)) for sev, fac, host, app, mid, m in lines}
    sev, fac, host, app, mid, doc_ = by_id["a-00000"]
    assert (sev, fac, host, app, mid) == ("3", "16", "host_one", "etw-sensor", "alert")
    assert doc_["process"]["command_line"] == "x.exe n0"
    assert by_id["a-00999"][5]["process"]["command_line"] == long_cmd
    h = by_id["boot1-0000000000"]
    assert h[0] == "6" and h[4] == "health" and h[5]["event"]["dataset"] == "sensor.health"


@need_rsyslog
def test_tls_refused_on_a_wrong_ca_parks_and_keeps_everything(tmp_path, pki):
    trustme = pytest.importorskip("trustme")
    ca, cert = pki
    port = free_port()
    rs = Rsyslog(tmp_path / "rs", port, ca, cert).start()
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    out = build_output({"format": "syslog", "url": f"tls://127.0.0.1:{port}",
                        "ca_file": str(tmp_path / "other-ca.pem")})
    try:
        res = out.send_batch([alert(1)])
        assert res.outcome == PARK and "TLS verification failed" in res.error
        assert res.delivered == []
        # a pin that does not match: refused as well, even with the right CA
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        pinned = build_output({"format": "syslog", "url": f"tls://127.0.0.1:{port}",
                               "ca_file": str(tmp_path / "ca.pem"), "pin_sha256": "00" * 32})
        res = pinned.send_batch([alert(2)])
        assert res.outcome == PARK and "pin mismatch" in res.error
        pinned.close()
    finally:
        out.close()
        rs.stop()
    assert rs.lines() == []


@need_rsyslog
def test_mutual_tls_and_rfc3164(tmp_path, pki):
    ca, cert = pki
    port = free_port()
    rs = Rsyslog(tmp_path / "rs", port, ca, cert, client_auth=True).start()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("sensor-01.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    base = {"format": "syslog", "url": f"tls://127.0.0.1:{port}", "ca_file": str(tmp_path / "ca.pem")}
    try:
        anonymous = build_output(base)
        # rsyslog refuses a client without a certificate; with TLS 1.3 it says so only after
        # the client's side of the handshake is done: the output waits for that, and parks
        res = anonymous.send_batch([alert(1)])
        anonymous.close()
        assert res.outcome == PARK and res.delivered == [], res
        out = build_output(dict(base, client_cert=str(tmp_path / "client.pem"),
                                client_key=str(tmp_path / "client.key"),
                                syslog_format="rfc3164", syslog_facility="auth"))
        assert out.send_batch([alert(7, "critical")]).outcome == OK
        out.close()
        wait_for(lambda: any("a-00007" in ln[5] for ln in rs.lines()), "the RFC 3164 message")
    finally:
        rs.stop()
    line = [ln for ln in rs.lines() if "a-00007" in ln[5]][0]
    sev, fac, host, app, _mid, msg = line
    assert (sev, fac, host, app) == ("2", "4", "host_one", "etw-sensor")
    assert json.loads(msg)["event"]["id"] == "a-00007"
    assert not any("a-00001" in ln[5] for ln in rs.lines())


# -- the connection's checks, against small collectors made here ------------------------------

import ssl as _ssl
import threading as _threading


def test_framing_follows_the_option_whatever_the_format():
    a = alert(1)
    for fmt, framing, octet in (("rfc5424", "", True), ("rfc5424", "lf", False),
                                ("rfc3164", "", False), ("rfc3164", "octet-counting", True)):
        out = build_output({"format": "syslog", "url": "tcp://127.0.0.1:9", "allow_http": True,
                            "syslog_format": fmt, "syslog_framing": framing})
        frame = out.encode_one(a)
        head, _, rest = frame.partition(b" ")
        if octet:
            assert head.isdigit() and int(head) == len(rest) and not frame.endswith(b"\n"), (fmt, framing)
        else:
            assert not head.isdigit() and frame.endswith(b"\n") and frame.count(b"\n") == 1, (fmt, framing)


def test_header_fields_keep_every_printable_ascii_character_and_only_those():
    # RFC 5424 PRINTUSASCII is %d33-126: "!" and "~" are kept, a space or DEL is not
    msg = format_5424(alert(1), b"{}", facility=16, app_name="a!p~p", hostname="h!o~st x\x7fy")
    assert msg.startswith(b"<131>1 2024-05-01T12:00:00.123Z h!o~st_x_y a!p~p - alert - ")


class _Collector:
    """A TCP (or TLS) listener on localhost that records what each connection sent; with
    ``close_after_first`` it closes the first connection once it read something, and with
    ``refuse`` it closes every TLS connection right after the handshake (a refused client)."""

    def __init__(self, ctx=None, close_after_first=False, refuse=False, banner=b"", reset=False):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx, self.close_after_first, self.refuse = ctx, close_after_first, refuse
        self.banner, self.reset = banner, reset
        self.received: list[bytes] = []
        self.first_closed = _threading.Event()
        self.connections = 0
        self.thread = _threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                self._serve(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _serve(self, conn):
        if self.ctx is not None:
            conn = self.ctx.wrap_socket(conn, server_side=True)
            try:
                if self.refuse:
                    conn.unwrap().close()
                    return
                self._read(conn)
            finally:
                conn.close()
        else:
            if self.banner:
                conn.sendall(self.banner)
            self._read(conn)

    def _read(self, conn):
        conn.settimeout(WAIT)
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:   # the client closed with our banner unread: RST, not FIN
                break
            if not chunk:
                break
            data += chunk
            if self.close_after_first and self.connections == 1:
                break
        self.received.append(data)
        if self.reset and self.connections == 1:       # an abortive close: RST, not FIN
            import struct
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        if self.connections == 1:
            self.first_closed.set()

    def close(self):
        self.sock.close()


def test_a_collector_that_closed_the_connection_gets_the_next_batch_on_a_new_one():
    col = _Collector(close_after_first=True)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    try:
        assert out.send_batch([alert(1)]).outcome == OK
        assert col.first_closed.wait(WAIT)
        time.sleep(0.1)                    # the FIN has reached the sensor's side
        res = out.send_batch([alert(2)])
        assert res.outcome == OK and res.delivered == ["a-00002"]
        out.close()
        wait_for(lambda: len(col.received) == 2, "the second connection's bytes")
    finally:
        out.close()
        col.close()
    assert b"a-00001" in col.received[0] and b"a-00002" in col.received[1]
    assert out.connects == 2


def test_a_tls_collector_that_closes_right_after_the_handshake_is_not_sent_to(tmp_path, pki):
    # A collector refusing the client (TLS 1.3 checks a client certificate after the client's
    # side of the handshake) closes the connection at once: the batch must not count as
    # delivered, since the bytes written into that connection are lost.
    ca, cert = pki
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    col = _Collector(ctx=ctx, refuse=True)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    out = build_output({"format": "syslog", "url": f"tls://127.0.0.1:{col.port}",
                        "ca_file": str(tmp_path / "ca.pem")})
    try:
        res = out.send_batch([alert(1)])
        assert res.outcome != OK and res.delivered == [], res
        assert "closed the TLS connection right after the handshake" in (res.error or ""), res
    finally:
        out.close()
        col.close()


def test_severity_of_every_rule_level():
    # docs/delivery.md: severity from the rule level (RFC 5424 6.2.1: 2 critical .. 6 informational)
    for level, sev in (("critical", 2), ("high", 3), ("medium", 4), ("low", 5), ("informational", 6),
                       ("HIGH", 3), (None, 4)):
        assert severity({"rule": {"level": level}}) == sev, level
        pri = int(format_5424({"rule": {"level": level}}, b"", facility=16, app_name="a")[1:4])
        assert pri == 16 * 8 + sev


def test_header_fields_are_cut_at_their_rfc_lengths():
    for n, kept in ((255, 255), (256, 255)):
        msg = format_5424(alert(1), b"{}", facility=16, app_name="a", hostname="h" * n)
        assert msg.split(b" ")[2] == b"h" * kept
        msg = format_3164(alert(1), b"{}", facility=16, app_name="a", hostname="h" * n)
        assert msg.split(b" ")[4] == b"h" * kept
    for n, kept in ((48, 48), (49, 48)):
        msg = format_5424(alert(1), b"{}", facility=16, app_name="a" * n)
        assert msg.split(b" ")[3] == b"a" * kept


def test_a_timestamp_that_is_not_iso_8601_is_left_out_or_taken_as_now():
    odd = dict(alert(1), timestamp="yesterday")
    assert format_5424(odd, b"{}", facility=16, app_name="a").split(b" ")[1] == b"-"
    assert format_5424(dict(alert(1), timestamp=5), b"{}", facility=16, app_name="a").split(b" ")[1] == b"-"
    msg = format_3164(odd, b"{}", facility=16, app_name="a")
    assert msg.startswith(b"<131>") and b"host_one a: {}" in msg      # a BSD stamp of the sending time


def test_urls_ports_and_the_plain_tcp_opt_in(caplog):
    from sensor.deliver.syslog import SyslogOutput
    from sensor.deliver.tls import ConfigError
    assert SyslogOutput("tls://127.0.0.1").url == "tls://127.0.0.1:6514"
    assert SyslogOutput("tls://127.0.0.1:7000").port == 7000
    with pytest.raises(ConfigError, match="clear text"):
        SyslogOutput("tcp://127.0.0.1")                  # plain TCP needs the explicit opt-in
    import logging
    with caplog.at_level(logging.WARNING, logger="sensor.outputs.syslog"):
        out = SyslogOutput("tcp://127.0.0.1", allow_plaintext=True)
    assert out.url == "tcp://127.0.0.1:514" and not out.use_tls
    assert "alerts to tcp://127.0.0.1:514 travel as plain TCP syslog" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sensor.outputs.syslog"):
        SyslogOutput("tls://127.0.0.1")
    assert "plain TCP" not in caplog.text
    for bad in ("tls://127.0.0.1:99999", "tls://127.0.0.1:x", "tls://[::1"):
        with pytest.raises(ConfigError, match="url must be|syslog url"):
            SyslogOutput(bad)


def test_host_and_app_name_defaults():
    from sensor.deliver.syslog import SyslogOutput
    out = SyslogOutput("tcp://127.0.0.1:9", allow_plaintext=True, app_name="", hostname="")
    frame = out.encode_one(alert(1))
    assert b" host_one etw-sensor - alert - " in frame       # the alert's own host, the default app
    out = SyslogOutput("tcp://127.0.0.1:9", allow_plaintext=True, app_name="edr", hostname="fixed")
    assert b" fixed edr - alert - " in out.encode_one(alert(1))


@pytest.mark.parametrize("key,value", [("connect_timeout", 0), ("connect_timeout", -1),
                                       ("connect_timeout", 600.5), ("read_timeout", 0),
                                       ("read_timeout", -0.5), ("read_timeout", 3600.5),
                                       ("connect_timeout", float("nan")), ("read_timeout", float("inf"))])
def test_syslog_timeouts_out_of_range_are_configuration_errors(key, value):
    # docs/delivery.md: connect_timeout 0.01-600 s, read_timeout 0.01-3600 s (a negative one
    # used to fail every send instead of the configuration)
    with pytest.raises(ConfigError, match=f"^{key} must be a number of seconds above 0"):
        build_output({"format": "syslog", "url": "tls://127.0.0.1:6514", key: value})


def test_syslog_timeouts_at_their_bounds_are_taken():
    from sensor.deliver.syslog import SyslogOutput
    for connect, read in ((600, 3600), (0.01, 0.01), (600.0, 3600.0)):
        out = SyslogOutput.from_options({"url": "tls://127.0.0.1:6514", "connect_timeout": connect,
                                         "read_timeout": read})
        assert (out.connect_timeout, out.send_timeout) == (connect, read)
        out.close()


def test_syslog_options_of_the_wrong_type_are_configuration_errors_naming_the_key():
    from sensor.deliver.syslog import SyslogOutput
    for key, value in (("syslog_facility", 5), ("allow_http", "yes"), ("connect_timeout", "5"),
                       ("ca_file", 5), ("syslog_app_name", ["a"])):
        with pytest.raises(ConfigError, match=f"^{key}: must be"):
            SyslogOutput.from_options({"url": "tls://127.0.0.1:6514", key: value})


def _deep(levels: int = 2000) -> list:
    """A value nested past any encoder's recursion limit (Python's is 1000 frames)."""
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("syslog_format", ["rfc5424", "rfc3164"])
@pytest.mark.parametrize("document", ["ecs", "alert"])
def test_a_lone_surrogate_is_sent_and_an_alert_too_deep_to_encode_rejected_alone(document, syslog_format, caplog):
    """docs/delivery.md "Formats": a lone UTF-16 surrogate (legal in a Windows command line)
    goes out as U+FFFD; an alert the encoder cannot write, whatever it raised, is rejected
    alone with the reason and the rest of its batch is sent, with no traceback in the log."""
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True,
                        "document": document, "syslog_format": syslog_format})
    try:
        batch = [alert(1), alert(2, cmd=_deep()), alert(3, cmd="x.exe \ud800 y\udfff"), alert(4)]
        with caplog.at_level(logging.DEBUG):
            res = out.send_batch(batch)
        assert res.outcome == OK and res.delivered == ["a-00001", "a-00003", "a-00004"]
        assert list(res.rejected) == ["a-00002"]
        assert res.rejected["a-00002"].startswith("cannot encode: RecursionError: ")
        out.close()
        wait_for(lambda: col.received, "the collector's bytes")
    finally:
        out.close()
        col.close()
    got = b"".join(col.received)
    assert b"a-00001" in got and b"a-00004" in got and b"a-00002" not in got
    assert "x.exe \ufffd y\ufffd".encode() in got
    assert not [r for r in caplog.records if r.exc_info] and "Traceback" not in caplog.text


def test_alerts_that_cannot_be_encoded_are_rejected_alone():
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True,
                        "document": "alert"})
    try:
        bad = dict(alert(1), extra=_deep())                   # past the encoder's recursion limit
        res = out.send_batch([bad, alert(2)])
        assert res.outcome == OK and res.delivered == ["a-00002"]
        assert list(res.rejected) == ["a-00001"]
        assert res.rejected["a-00001"].startswith("cannot encode: RecursionError: ")
        ecs = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
        res = ecs.send_batch([dict(alert(3), rule=5), alert(4)])   # no ECS document for that rule
        assert res.delivered == ["a-00004"] and res.rejected["a-00003"].startswith("cannot encode: AttributeError")
        # the reason kept is at most 300 characters (docs/delivery.md: item errors are cut there)
        class Talkative(dict):
            def get(self, *args):
                raise AttributeError("x" * 1000)
        res = ecs.send_batch([dict(alert(5), rule=Talkative())])
        assert len(res.rejected["a-00005"]) == 300 and res.rejected["a-00005"].startswith("cannot encode: ")
        ecs.close()
        assert out.send_batch([bad]).delivered == []         # nothing to write: nothing sent
        out.close()
        wait_for(lambda: col.received, "the collector's bytes")
    finally:
        out.close()
        col.close()
    got = b"".join(col.received)
    assert b"a-00002" in got and b"a-00004" in got and b"a-00001" not in got and b"a-00003" not in got


def _tls13_collector(tmp_path, pki):
    """A TLS 1.3 collector made here and an output that trusts its CA."""
    ca, cert = pki
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _ssl.TLSVersion.TLSv1_3
    cert.configure_cert(ctx)
    col = _Collector(ctx=ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return col, build_output({"format": "syslog", "url": f"tls://127.0.0.1:{col.port}",
                              "ca_file": str(tmp_path / "ca.pem")})


def test_a_tls_1_3_collector_keeps_one_connection_across_batches(tmp_path, pki):
    # TLS 1.3 sends session tickets after the handshake, so a fresh connection is readable with
    # nothing for the application: neither the refusal check nor the liveness check may take
    # that for a refusal or a close.
    col, out = _tls13_collector(tmp_path, pki)
    try:
        for i in (1, 2, 3):
            res = out.send_batch([alert(i)])
            assert res.outcome == OK and res.delivered == [f"a-{i:05d}"], res
        assert out.connects == 1
        out.close()
        wait_for(lambda: col.received, "the collector's bytes")
    finally:
        out.close()
        col.close()
    assert all(f"a-{i:05d}".encode() in col.received[0] for i in (1, 2, 3))


def test_closing_after_the_collector_went_away_raises_nothing():
    col = _Collector(close_after_first=True)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    assert out.send_batch([alert(1)]).outcome == OK
    assert col.first_closed.wait(WAIT)
    col.close()
    out.close()
    out.close()


def _second_batch_after(col, out, upset) -> None:
    """Send a batch, let ``upset`` break the connection, then a second batch: it must arrive."""
    try:
        assert out.send_batch([alert(1)]).outcome == OK
        upset()
        res = out.send_batch([alert(2)])
        assert res.outcome == OK and res.delivered == ["a-00002"], res
        out.close()
        wait_for(lambda: any(b"a-00002" in r for r in col.received), "the second batch")
    finally:
        out.close()
        col.close()


def test_a_connection_the_collector_reset_is_made_again():
    col = _Collector(close_after_first=True, reset=True)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})

    def upset():
        assert col.first_closed.wait(WAIT)
        time.sleep(0.1)                           # the RST has reached the sensor's side
    _second_batch_after(col, out, upset)
    assert out.connects == 2


def test_a_connection_closed_under_the_output_is_made_again():
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    _second_batch_after(col, out, lambda: out._sock.close())
    assert out.connects == 2


def test_a_plain_tcp_collector_that_talks_still_gets_its_alerts():
    # The refusal check after connecting is for TLS (a refused client certificate); on plain
    # TCP there is no handshake to refuse, and a banner is no refusal.
    col = _Collector(banner=b"hello\n")
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    try:
        res = out.send_batch([alert(1)])
        assert res.outcome == OK, res
        out.close()
        wait_for(lambda: col.received, "the collector's bytes")
    finally:
        out.close()
        col.close()


def test_tls_records_without_data_arriving_later_are_no_close(tmp_path, pki):
    # Session tickets that arrive after the refusal check (here: no check at all) make the
    # stream readable with nothing for the application: the connection is alive and kept.
    col, out = _tls13_collector(tmp_path, pki)
    out.settle = 0
    try:
        assert out.send_batch([alert(1)]).outcome == OK
        time.sleep(0.2)                           # the tickets are in
        assert out.send_batch([alert(2)]).outcome == OK
        assert out.connects == 1
    finally:
        out.close()
        col.close()


# -- what the mutation run of syslog.py found unchecked --------------------------------------------

def test_rfc3164_tag_is_at_most_32_ascii_letters_and_digits():
    # RFC 3164 4.1.3: the TAG is alphanumeric and MUST NOT exceed 32 characters; the header is
    # ASCII, so a configured app name with other letters must still give a message, not a
    # rejection of every alert.
    for name, tag in (("a" * 32, b"a" * 32), ("b" * 33, b"b" * 32), ("c" * 40, b"c" * 32),
                      ("sens\u00f6r-1", b"sensr-1"), ("\u00e9\u00e9", b"etw-sensor")):
        msg = format_3164(alert(1), b"{}", facility=16, app_name=name)
        assert msg.split(b" ")[5] == tag + b":", (name, msg)
    from sensor.deliver.syslog import SyslogOutput
    out = SyslogOutput("tcp://127.0.0.1:9", allow_plaintext=True, syslog_format="rfc3164",
                       app_name="d\u00e9tecteur")
    assert b" dtecteur: {" in out.encode_one(alert(1))


def test_timeouts_settle_time_and_keep_alive_are_the_documented_ones():
    # docs/delivery.md: connect_timeout 5 s and read_timeout 30 s by default (the constructor's
    # defaults and the options' alike); after a TLS handshake the output waits up to 1 s (never
    # longer than connect_timeout) for a refusal; the connection has TCP keep-alive on and its
    # writes are bounded by read_timeout.
    from sensor.deliver.syslog import SyslogOutput
    for out in (SyslogOutput("tls://127.0.0.1"), build_output({"format": "syslog", "url": "tls://127.0.0.1"})):
        assert (out.connect_timeout, out.send_timeout, out.settle) == (5.0, 30.0, 1.0)
    assert SyslogOutput("tls://127.0.0.1", connect_timeout=0.25).settle == 0.25
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    try:
        assert out.send_batch([alert(1)]).outcome == OK
        assert out._sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert out._sock.gettimeout() == 30.0
    finally:
        out.close()
        col.close()


class _Parting(_Collector):
    """Reads the first connection's batch, then sends ``parting`` (as urgent data with
    ``urgent``) and closes that connection; later connections are read as usual."""

    def __init__(self, parting: bytes, urgent: bool = False):
        self.parting, self.urgent = parting, urgent
        super().__init__(close_after_first=True)

    def _read(self, conn):
        if self.connections == 1:
            conn.settimeout(WAIT)
            self.received.append(conn.recv(65536))
            conn.send(self.parting, socket.MSG_OOB if self.urgent else 0)
            conn.close()
            self.first_closed.set()
            return
        super()._read(conn)


@pytest.mark.parametrize("parting, urgent", [(b"bye\n", False), (b"x" * 3000, False), (b"!", True)],
                         ids=["a-line", "more-than-one-read", "urgent-byte"])
def test_a_collector_that_said_something_then_closed_gets_the_next_batch_on_a_new_one(parting, urgent):
    # docs/delivery.md: the connection is checked before each batch, so a collector that closed
    # it is noticed, whatever it sent before its close; the next batch goes out on a new
    # connection, not into the closed one (where its bytes would be lost).
    col = _Parting(parting, urgent)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})

    def upset():
        assert col.first_closed.wait(WAIT)
        time.sleep(0.1)                           # the FIN has reached the sensor's side
    _second_batch_after(col, out, upset)
    assert out.connects == 2


def test_a_collector_that_greets_keeps_its_one_connection():
    # What a collector sends without closing is no close: one connection for every batch.
    col = _Collector(banner=b"hello\n" * 100)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    try:
        for i in (1, 2, 3):
            assert out.send_batch([alert(i)]).outcome == OK
            time.sleep(0.05)                      # (the greeting is in before the next check)
        assert out.connects == 1
    finally:
        out.close()
        col.close()


@pytest.mark.parametrize("said, connects", [(0, 1), (1, 1), (None, 1), (None, 2)],
                         ids=["nothing", "a-byte", "exactly-the-bound", "one-byte-past-the-bound"])
def test_a_collector_that_talks_keeps_its_connection_up_to_what_a_check_reads(said, connects):
    # docs/delivery.md: what a collector sends on the stream without closing it is read and
    # dropped, at most DRAIN_BYTES per check: up to that the connection is kept; past it a check
    # cannot see a close behind the chatter, so the connection is made afresh (nothing is lost).
    fcntl = pytest.importorskip("fcntl")
    import struct
    import termios
    from sensor.deliver.syslog import DRAIN_BYTES
    assert DRAIN_BYTES == 64 * 1024                      # the bound docs/delivery.md states
    if said is None:
        said = DRAIN_BYTES + (connects - 1)
    col = _Collector(banner=b"z" * said)
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})

    def waiting() -> int:
        return struct.unpack("i", fcntl.ioctl(out._sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    try:
        assert out.send_batch([alert(1)]).outcome == OK
        # room for all of it on the sensor's side (a kernel's first window may be 64 KiB)
        out._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        wait_for(lambda: waiting() == said or said == 0, "the collector's words")   # all in
        res = out.send_batch([alert(2)])
        assert res.outcome == OK and res.delivered == ["a-00002"], res
        assert out.connects == connects
    finally:
        out.close()
        col.close()


def test_a_connection_whose_descriptor_went_bad_is_made_again():
    # The check before a batch finds a broken connection (here its descriptor closed under the
    # output: the check's select and the close of the old socket both fail) and the batch goes
    # out on a new connection in the same call.
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True})
    _second_batch_after(col, out, lambda: os.close(out._sock.fileno()))
    assert out.connects == 2


@pytest.mark.parametrize("document, odd, error", [
    ("ecs", {"type": "metric", "health": 5}, "TypeError"),                  # no health mapping
    ("ecs", {"type": "metric", "health": "ab"}, "ValueError"),
    ("alert", {"timestamp": "0001-01-01T00:00:00+01:00"}, "OverflowError"),  # before year 1 in UTC
])
def test_an_alert_of_a_shape_the_sensor_never_writes_is_rejected_alone(document, odd, error):
    # docs/delivery.md: an alert that cannot be encoded is rejected with the reason, the rest of
    # its batch is delivered (a damaged or hostile spool row must not hold the others).
    col = _Collector()
    out = build_output({"format": "syslog", "url": f"tcp://127.0.0.1:{col.port}", "allow_http": True,
                        "document": document})
    try:
        res = out.send_batch([dict(alert(1), **odd), alert(2)])
        assert res.outcome == OK and res.delivered == ["a-00002"], res
        assert res.rejected["a-00001"].startswith(f"cannot encode: {error}"), res.rejected
        out.close()
        wait_for(lambda: col.received, "the collector's bytes")
    finally:
        out.close()
        col.close()
    assert b"a-00002" in col.received[0] and b"a-00001" not in col.received[0]
