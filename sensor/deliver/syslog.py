"""Syslog over TCP (TLS by default): RFC 5424 messages with octet-counting framing (RFC 6587
3.4.1, the framing of RFC 5425), or RFC 3164 messages with LF framing for older collectors.

The message body is the ECS document (or the raw alert, ``document = "alert"``) as one line of
JSON; health documents and health alerts go out the same way, with their own MSGID. The
transport is a TLS stream with the output's TLS options (CA file or the OS store, pin, client
certificate, TLS 1.2+, :mod:`sensor.deliver.tls`); plain TCP only with ``allow_http = true``.

Delivery: the forwarder's spool, batching, retries, back-off and parking apply as for HTTPS
(one ``send_batch`` = one write of the batch's frames). Syslog over TCP has no application
acknowledgment: a batch counts as delivered once the whole write returned. Before each batch
the connection is checked (a collector that closed it is noticed and the connection is made
again), so a collector that was down or restarted gets every spooled alert. What it cannot
catch: bytes the kernel accepted while the collector died mid-batch (RELP would be needed).
"""
from __future__ import annotations

import datetime as _dt
import logging
import select
import socket
import ssl
import threading
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from .ecs import to_ecs
from .http import classify_exception, encode_failure, encode_json, shutdown_socket
from .options import set_options
from .protocol import OK, PARK, RETRY, SendResult
from .tls import ConfigError, TLSConfig

log = logging.getLogger("sensor.outputs.syslog")

FACILITIES = {name: code for code, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
     "ftp", "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3",
     "local4", "local5", "local6", "local7"))}
# rule level -> syslog severity (2 crit, 3 err, 4 warning, 5 notice, 6 info)
SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "informational": 6}
DEFAULT_PORT = {"tls": 6514, "tcp": 514}
MAX_HEADER_FIELD = {"hostname": 255, "app_name": 48}   # RFC 5424 6.2.4 and 6.2.5
# What a liveness check reads of a collector's chatter: more than this and the connection is
# made afresh (a close behind it could not be seen), so the check's work is bounded.
DRAIN_BYTES = 1 << 16
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _token(text: Any, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII), or ``-``."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(text or ""))[:limit]
    return out or "-"


def severity(alert: Mapping[str, Any]) -> int:
    if alert.get("type") == "metric":
        return 6
    return SEVERITY.get(str((alert.get("rule") or {}).get("level") or "").lower(), 4)


def msgid(alert: Mapping[str, Any]) -> str:
    kind = alert.get("type")
    return "health" if kind == "metric" else "health-alert" if kind == "health" else "alert"


def _when(alert: Mapping[str, Any]) -> _dt.datetime | None:
    ts = alert.get("timestamp")
    if not isinstance(ts, str):
        return None
    try:
        return _dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_5424(alert: Mapping[str, Any], body: bytes, *, facility: int, app_name: str,
                hostname: str | None = None) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` (no structured data)."""
    when = _when(alert)
    stamp = when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") \
        if when else "-"
    host = _token(hostname or alert.get("HOSTNAME"), MAX_HEADER_FIELD["hostname"])
    pri = facility * 8 + severity(alert)
    head = f"<{pri}>1 {stamp} {host} {_token(app_name, MAX_HEADER_FIELD['app_name'])} - {msgid(alert)} - "
    return head.encode("ascii") + body


def format_3164(alert: Mapping[str, Any], body: bytes, *, facility: int, app_name: str,
                hostname: str | None = None) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG`` (BSD syslog; the time in UTC)."""
    when = (_when(alert) or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    stamp = f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"
    host = _token(hostname or alert.get("HOSTNAME"), MAX_HEADER_FIELD["hostname"])
    tag = "".join(c for c in app_name if c.isascii() and (c.isalnum() or c in "-_."))[:32] or "etw-sensor"
    pri = facility * 8 + severity(alert)
    return f"<{pri}>{stamp} {host} {tag}: ".encode("ascii") + body


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 3.4.1: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def frame_lf(message: bytes) -> bytes:
    """RFC 6587 3.4.2 (non-transparent framing): the message and a LF. JSON bodies hold no
    raw LF; any other LF or NUL is replaced, so a frame never splits."""
    return message.replace(b"\n", b" ").replace(b"\0", b" ") + b"\n"


class SyslogOutput:
    """Alerts as syslog messages over one TCP/TLS connection to a collector."""

    name = "syslog"

    def __init__(self, url: str, tls: TLSConfig | None = None, *, allow_plaintext: bool = False,
                 syslog_format: str = "rfc5424", framing: str = "", facility: str = "local0",
                 app_name: str = "etw-sensor", hostname: str = "", document: str = "ecs",
                 connect_timeout: float = 5.0, send_timeout: float = 30.0) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError("url must be tls://host:port or tcp://host:port (port 1-65535)") from None
        if parts.scheme not in ("tls", "tcp") or not parts.hostname:
            raise ConfigError("a syslog url is tls://host[:port] (default port 6514) or, with "
                              "allow_http = true, tcp://host[:port]")
        if parts.scheme == "tcp" and not allow_plaintext:
            raise ConfigError("plain tcp:// would send alerts in clear text; use tls:// or set "
                              "allow_http = true")
        if syslog_format not in ("rfc5424", "rfc3164"):
            raise ConfigError("syslog_format must be rfc5424 or rfc3164")
        framing = framing or ("octet-counting" if syslog_format == "rfc5424" else "lf")
        if framing not in ("octet-counting", "lf"):
            raise ConfigError("syslog_framing must be octet-counting or lf")
        if facility not in FACILITIES:
            raise ConfigError(f"syslog_facility must be one of {', '.join(FACILITIES)}")
        if document not in ("ecs", "alert"):
            raise ConfigError("document must be ecs or alert")
        self.host = parts.hostname
        self.port = port or DEFAULT_PORT[parts.scheme]
        self.use_tls = parts.scheme == "tls"
        self.tls = tls or TLSConfig()
        self._ctx = self.tls.ssl_context() if self.use_tls else None
        if self.use_tls:
            self.tls.warn_if_insecure(self.url)
        else:
            log.warning("alerts to %s travel as plain TCP syslog (allow_http = true)", self.url)
        self.format = syslog_format
        self.framing = framing
        self.facility = FACILITIES[facility]
        self.app_name = app_name or "etw-sensor"
        self.hostname = hostname or None
        self.document = document
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._aborted = False
        self.connects = 0
        self.settle = min(1.0, connect_timeout)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "SyslogOutput":
        options = set_options(options)     # every value of the right type; unset ones left out
        url = options.get("url")
        if not url:
            raise ConfigError("format syslog needs url (tls://host:port)")
        for key, top in (("connect_timeout", 600.0), ("read_timeout", 3600.0)):
            value = options.get(key)
            if value is not None and not 0 < value <= top:
                raise ConfigError(f"{key} must be a number of seconds above 0 and at most {top:g}, "
                                  f"got {value!r}")
        return cls(str(url), TLSConfig.from_options(options),
                   allow_plaintext=options.get("allow_http", False),
                   syslog_format=str(options.get("syslog_format") or "rfc5424"),
                   framing=str(options.get("syslog_framing") or ""),
                   facility=str(options.get("syslog_facility") or "local0"),
                   app_name=str(options.get("syslog_app_name") or "etw-sensor"),
                   hostname=str(options.get("host") or ""),
                   document=str(options.get("document") or "ecs"),
                   connect_timeout=float(options.get("connect_timeout", 5.0)),
                   send_timeout=float(options.get("read_timeout", 30.0)))

    @property
    def url(self) -> str:
        return f"{'tls' if self.use_tls else 'tcp'}://{self.host}:{self.port}"

    # -- messages ------------------------------------------------------------------------------
    def encode_one(self, alert: Mapping[str, Any]) -> bytes:
        body = encode_json(to_ecs(alert) if self.document == "ecs" else dict(alert))
        fmt = format_5424 if self.format == "rfc5424" else format_3164
        msg = fmt(alert, body, facility=self.facility, app_name=self.app_name, hostname=self.hostname)
        return frame_octet_counting(msg) if self.framing == "octet-counting" else frame_lf(msg)

    # -- the connection --------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = self._ctx.wrap_socket(raw, server_hostname=self.host) if self._ctx else raw
        except BaseException:
            raw.close()
            raise
        try:
            self._settle(sock)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.send_timeout)
        self.connects += 1
        return sock

    def _settle(self, sock: socket.socket) -> None:
        """Give the collector a moment to refuse the new connection. With TLS 1.3 a server
        checks the client certificate after the client's handshake is done; a refusal then
        arrives as an alert or a close, and bytes written before it would be lost while the
        write itself succeeded. A syslog collector never sends anything, so any answer here
        is a refusal."""
        if not self.use_tls or self.settle <= 0:
            return
        readable, _, _ = select.select([sock], [], [], self.settle)
        if not readable:
            return
        sock.settimeout(self.settle)
        try:
            data = sock.recv(1)
        except ssl.SSLWantReadError:
            return
        except socket.timeout:
            return
        if not data:
            raise ssl.SSLError("the collector closed the TLS connection right after the handshake "
                               "(it refused the client certificate, or its TLS settings)")
        raise ssl.SSLError("the collector sent data on a syslog stream (not a syslog collector?)")

    def _alive(self, sock: socket.socket) -> bool:
        """False when the collector closed the connection or it broke. A collector has nothing
        to say on a syslog stream; what one sent anyway (a banner) is read and dropped here, so
        a close behind it is seen: a connection is alive only when its end of stream is not in."""
        try:
            readable, _, errored = select.select([sock], [], [sock], 0)
        except (OSError, ValueError):
            return False
        if errored:                # urgent data: no syslog collector sends that; start afresh
            return False
        if not readable:
            return True
        try:
            sock.setblocking(False)
            try:
                left = DRAIN_BYTES
                while left >= 0:
                    data = sock.recv(65536)
                    if not data:
                        return False        # the end of the stream, after what it sent
                    left -= len(data)
            finally:
                sock.setblocking(True)
                sock.settimeout(self.send_timeout)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True                     # all it sent is read, and no end of stream
        except (OSError, ssl.SSLError):
            return False
        return False                        # it said more than a check reads: start afresh

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """Write the batch's frames on the connection (made or made again as needed)."""
        frames, ids, rejected = [], [], {}
        for a in alerts:
            try:
                frames.append(self.encode_one(a))
                ids.append(str(a.get("id")))
            except Exception as exc:  # noqa: BLE001 - that alert's rejection (encode_failure)
                rejected[str(a.get("id"))] = encode_failure(exc)
        if not frames:
            return SendResult(OK, rejected=rejected)
        data = b"".join(frames)
        with self._lock:
            if self._aborted:
                return SendResult(RETRY, rejected=rejected, error="not sent: the sensor is stopping")
            try:
                if self._sock is not None and not self._alive(self._sock):
                    self._drop()
                if self._sock is None:
                    self._sock = self._connect()
                if self._aborted:          # abort() set the flag before it read ``_sock``
                    raise OSError("not sent: the sensor is stopping")
                self._sock.sendall(data)
            except ConfigError as exc:
                self._drop()
                return SendResult(PARK, rejected=rejected, error=str(exc))
            except (OSError, ssl.SSLError) as exc:
                self._drop()
                outcome, message = classify_exception(exc)
                if isinstance(exc, ConnectionRefusedError):
                    outcome, message = RETRY, f"cannot connect to {self.url}: connection refused"
                return SendResult(outcome, rejected=rejected, error=f"syslog {self.url}: {message}")
        return SendResult(OK, delivered=ids, rejected=rejected)

    def abort(self) -> None:
        """(any thread, at stop) End a write blocked on a collector that does not read: the
        connection is shut down (the batch is retried after the next start) and no new one made."""
        self._aborted = True
        shutdown_socket(self._sock)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and self.use_tls:
                try:
                    self._sock.unwrap()       # close_notify: the collector sees a clean end
                except (OSError, ssl.SSLError, ValueError):
                    pass
            self._drop()
