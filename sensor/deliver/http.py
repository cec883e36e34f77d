"""HTTPS transport (urllib3 2.x) and the base of every HTTP output, plus ECS NDJSON (the default).

One attempt per call, ``retries=False``: the spool and the forwarder own retrying
(style-and-delivery.md B.3). Status classification follows B.2's table; each format refines it
where its API says which alert was at fault (HEC ``invalid-event-number``, ``_bulk`` items).
"""
from __future__ import annotations

import email.utils
import gzip as _gzip
import logging
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import msgspec
import urllib3
from urllib3.exceptions import (HTTPError, InsecureRequestWarning, NewConnectionError, ProtocolError,
                                SSLError, TimeoutError as Urllib3Timeout)

from .. import __version__
from .options import set_options
from .text import repair
from .protocol import BISECT, OK, PARK, RETRY, SPLIT, SendResult
from .ecs import to_ecs
from .tls import ConfigError, Secret, TLSConfig, load_secret

log = logging.getLogger("sensor.outputs.http")

_ENCODER = msgspec.json.Encoder(enc_hook=str)  # odd values (bytes, Path...) become text, not a crash
MAX_DETAIL = 300
# A receiver's answer, decoded (gzip included): an Elastic _bulk answer for a batch of 500 with
# every item failed is well under 1 MiB. Past it the request is retried, as when no answer came.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes (msgspec). A lone UTF-16 surrogate (Windows allows them in command
    lines; UTF-8 cannot carry one) becomes one U+FFFD: the alert is sent, never refused for it."""
    try:
        return _ENCODER.encode(obj)
    except UnicodeEncodeError:
        return _ENCODER.encode(repair(obj))


def encode_failure(exc: Exception) -> str:
    """The rejection reason of an alert whose encoding raised ``exc`` (type and message, bounded).

    Every output encodes alert by alert and catches ``Exception`` there: whatever one alert
    holds (a value nested past the encoder's recursion limit, a type it cannot write, a bug
    its content triggers) rejects that alert alone, the rest of its batch goes on. Except
    MemoryError: the process is short of memory, which is no fault of the alert; the call
    raises and the batch stays in the spool for the next attempt. KeyboardInterrupt and
    SystemExit are not ``Exception`` and pass as well.
    """
    if isinstance(exc, MemoryError):
        raise exc
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot say what it is
        text = "(no message)"
    return f"cannot encode: {type(exc).__name__}: {text}"[:MAX_DETAIL]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # (a year past a C int: Overflow)
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may hold credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number or out of range
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    data: bytes

    def text(self, limit: int = MAX_DETAIL) -> str:
        return self.data[:limit].decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.data)
        except msgspec.DecodeError:
            return None


class TransportFailure(Exception):
    """No HTTP answer: ``outcome`` is RETRY (network) or PARK (TLS verification, config)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)


_TLS_CONFIG_WORDS = ("certificate", "verify", "alert", "handshake failure", "wrong version",
                     "unsupported protocol", "no protocols", "pin mismatch")


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(RETRY or PARK, message) for an exception raised by a request."""
    for e in _chain(exc):
        if isinstance(e, (ssl.SSLCertVerificationError, ssl.CertificateError)):
            return PARK, f"TLS verification failed: {getattr(e, 'verify_message', '') or e}"
    if isinstance(exc, SSLError) or any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
        text = str(exc)
        low = text.lower()
        if "eof" not in low and "reset" not in low and any(w in low for w in _TLS_CONFIG_WORDS):
            return PARK, f"TLS handshake failed: {text}"
        return RETRY, f"TLS connection error: {text}"
    if isinstance(exc, NewConnectionError):  # (a subclass of ConnectTimeoutError in urllib3 2.x)
        return RETRY, f"cannot connect: {exc}"
    if isinstance(exc, Urllib3Timeout) or any(isinstance(e, TimeoutError) for e in _chain(exc)):
        return RETRY, f"timeout: {exc}"
    return RETRY, f"connection error: {type(exc).__name__}: {exc}"


class HttpTransport:
    """A keep-alive connection pool to one HTTPS origin."""

    def __init__(self, url: str, tls: TLSConfig | None = None, *, allow_http: bool = False,
                 gzip: bool = True, gzip_level: int = 1, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, pool_maxsize: int = 2) -> None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"url must be https://host[:port]/path with a port from 1 to 65535, "
                              f"got {safe_url(url)!r}") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"url must be https://host[:port]/path, got {safe_url(url)!r}")
        if parts.scheme == "http" and not allow_http:
            raise ConfigError("plain http:// would send alerts and tokens in clear text; "
                              "use https:// or set allow_http = true")
        self.url = url
        self.safe_url = safe_url(url)
        self.path = parts.path or "/"
        self.tls = tls or TLSConfig()
        self.gzip = gzip
        self.gzip_level = gzip_level
        self.read_timeout = read_timeout
        timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        common = dict(maxsize=pool_maxsize, block=False, retries=False, timeout=timeout)
        if parts.scheme == "https":
            if self.tls.insecure_skip_verify:
                # We warn once per start ourselves (warn_if_insecure); urllib3 would warn per request.
                urllib3.disable_warnings(InsecureRequestWarning)
            self.pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                parts.hostname, parts.port or 443, ssl_context=self.tls.ssl_context(), **common)
            self.tls.warn_if_insecure(self.safe_url)
        else:
            log.warning("alerts to %s travel over plain http (allow_http=true)", self.safe_url)
            self.pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port or 80, **common)
        # The pool's connections, so abort() can end a request blocked on a receiver that does
        # not answer (a stop must not wait for ``read_timeout``).
        self._aborter = Aborter()
        self._aborter.track(self.pool)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> HttpResponse:
        """One request; raises TransportFailure when no HTTP answer came back."""
        if self._aborter.aborted:
            raise TransportFailure(RETRY, "not sent: the sensor is stopping")
        hdrs = {"User-Agent": f"etw-sensor/{__version__}", "Accept-Encoding": "gzip"}
        hdrs.update(headers or {})
        if body is not None and self.gzip:
            body = _gzip.compress(body, self.gzip_level)
            hdrs["Content-Encoding"] = "gzip"
        for attempt in (0, 1):
            try:
                resp = self.pool.urlopen(method, path, body=body, headers=hdrs, redirect=False,
                                         assert_same_host=False, preload_content=False)
                return HttpResponse(resp.status, dict(resp.headers), self._body(resp))
            except ProtocolError as exc:
                # A pooled keep-alive connection the server already closed: one immediate retry on a
                # fresh connection (harmless: delivery is at-least-once, ids are idempotency keys).
                if attempt == 0 and not isinstance(exc, SSLError):
                    continue
                outcome, msg = classify_exception(exc)
                raise TransportFailure(outcome, msg) from None
            except (HTTPError, OSError, ssl.SSLError) as exc:
                outcome, msg = classify_exception(exc)
                raise TransportFailure(outcome, msg) from None
        raise AssertionError("unreachable")

    def _body(self, resp) -> bytes:
        """The answer's body, decoded, bounded in size (MAX_RESPONSE_BYTES: a gzip bomb stops
        there) and in time (``read_timeout`` for the whole body, not per read: a receiver that
        drips one byte at a time cannot hold the forwarder)."""
        data = read_bounded(resp, MAX_RESPONSE_BYTES, self.read_timeout)
        if data is None:
            raise TransportFailure(RETRY, f"the receiver's answer is larger than "
                                          f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB")
        return data

    def close(self) -> None:
        self.pool.close()

    def abort(self) -> None:
        """(any thread) End every request in flight now and refuse new ones (Aborter.abort):
        the request fails and its alerts stay in the spool, sent after the next start."""
        self._aborter.abort()


class Aborter:
    """The connections of a urllib3 pool, so that another thread can end the requests on them:
    abort() shuts each connection's socket down, and a read or write blocked on it (a receiver
    that does not answer) returns at once instead of after the read timeout. A connection made
    after the abort is refused."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self.aborted = False

    def track(self, pool) -> None:
        """Have ``pool`` make its connections through a class that registers them here."""
        pool.ConnectionCls = _tracking(pool.ConnectionCls, self)

    def register(self, conn) -> None:
        with self._lock:
            if self.aborted:
                raise OSError("not connecting: the sensor is stopping")
            self._live.add(conn)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            conns = list(self._live)
        for conn in conns:
            shutdown_socket(getattr(conn, "sock", None))


def shutdown_socket(sock) -> None:
    """Shut a socket down in both directions from any thread (a thread blocked on it wakes up);
    for a TLS socket the TCP socket itself, without a TLS close that would need the other thread's
    TLS state."""
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass


def _tracking(base: type, aborter: Aborter) -> type:
    """``base`` (a pool's connection class) registering each connection with ``aborter`` as it
    connects (its TCP socket exists from then on, TLS handshake included)."""
    class Tracked(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            aborter.register(self)
            super().connect()
            if aborter.aborted:        # abort() ran while the socket was being made
                self.close()
                raise OSError("not connecting: the sensor is stopping")
    Tracked.__name__ = Tracked.__qualname__ = f"Tracked{base.__name__}"
    return Tracked


def read_bounded(resp, limit: int, timeout: float, decode_content: bool = True) -> bytes | None:
    """The body of a urllib3 response opened with ``preload_content=False``: None when it holds
    more than ``limit`` bytes (decoded, when ``decode_content``), TransportFailure (RETRY) when
    reading it takes longer than ``timeout`` as a whole. One socket read per step (each bounded
    by the pool's read timeout) and at most _READ_CHUNK bytes decoded from it. A body not read
    to its end closes its connection, so it never goes back to the pool half read."""
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    size = 0
    ok = False
    try:
        while True:
            chunk = resp.read1(_READ_CHUNK, decode_content=decode_content)
            if not chunk:
                ok = True
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
            if time.monotonic() > deadline:
                raise TransportFailure(RETRY, f"the answer took longer than {timeout:g} s to read")
    finally:
        if not ok:
            resp.close()
        resp.release_conn()


def classify_status(resp: HttpResponse) -> str:
    """The generic outcome for an HTTP status (style-and-delivery.md B.2)."""
    s = resp.status
    if 200 <= s < 300 or s == 409:  # 409: the receiver already has this id
        return OK
    if s in RETRY_STATUSES or s >= 500:
        return RETRY
    if s == 413:
        return SPLIT
    if s in (400, 422):
        return BISECT
    return PARK  # 401/403 auth, 404/405 wrong url, 3xx redirect, 411/415...: configuration


def _common_kwargs(options: Mapping[str, Any]) -> dict:
    options = set_options(options)     # every value of the right type; unset ones left out
    url = options.get("url")
    if not url:
        raise ConfigError("url is required for this format")
    level = options.get("gzip_level", 1)
    if not 0 <= level <= 9:
        raise ConfigError(f"gzip_level must be an integer from 0 to 9, got {level!r}")
    for key, default, top in (("connect_timeout", 5.0, 600.0), ("read_timeout", 30.0, 3600.0)):
        value = options.get(key, default)
        if not 0 < value <= top:
            raise ConfigError(f"{key} must be a number of seconds above 0 and at most {top:g}, got {value!r}")
    for name, value in options.get("headers", {}).items():
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in f"{name}{value}"):
            raise ConfigError(f"header {name!r}: holds a line break or control character")
    return dict(
        url=str(url), tls=TLSConfig.from_options(options), token=load_secret(options, "token"),
        auth_scheme=options.get("auth_scheme"), gzip=options.get("gzip", True),
        gzip_level=level,
        connect_timeout=float(options.get("connect_timeout", 5.0)),
        read_timeout=float(options.get("read_timeout", 30.0)),
        allow_http=options.get("allow_http", False),
        pool_maxsize=options.get("pool_maxsize", 2),
        headers=dict(options.get("headers", {})),
        document=str(options.get("document") or "ecs"),
    )


class HttpOutput:
    """Shared machinery of the HTTP formats; subclasses set the wire format."""

    name = "http"
    content_type = "application/x-ndjson"
    default_auth_scheme = "Bearer"

    def __init__(self, url: str, tls: TLSConfig | None = None, *, token: Secret | None = None,
                 auth_scheme: str | None = None, gzip: bool = True, gzip_level: int = 1,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, allow_http: bool = False,
                 pool_maxsize: int = 2, headers: Mapping[str, str] | None = None,
                 document: str = "ecs") -> None:
        if document not in ("ecs", "alert"):
            raise ConfigError("document must be ecs or alert")
        self.transport = HttpTransport(url, tls, allow_http=allow_http, gzip=gzip, gzip_level=gzip_level,
                                       connect_timeout=connect_timeout, read_timeout=read_timeout,
                                       pool_maxsize=pool_maxsize)
        self.token = token
        self.auth_scheme = auth_scheme or self.default_auth_scheme
        self.extra_headers = dict(headers or {})
        self.document = document
        self._secrets: list[str] = [token.reveal()] if token else []
        self.path = self.request_path(self.transport.path)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "HttpOutput":
        """Build from the plain option dict."""
        return cls(**_common_kwargs(options))

    @property
    def url(self) -> str:
        return self.transport.safe_url

    def request_path(self, path: str) -> str:
        """The request target for the configured URL path (formats add their API path)."""
        return path

    def render(self, alert: Mapping[str, Any]) -> Any:
        """The document sent for one alert."""
        return to_ecs(alert) if self.document == "ecs" else dict(alert)

    def encode_each(self, alerts: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[Mapping, bytes]], dict[str, str]]:
        """Per-alert encoded bytes; alerts that cannot be encoded are rejected, not fatal."""
        good, bad = [], {}
        for alert in alerts:
            try:
                good.append((alert, self.encode_one(alert)))
            except Exception as exc:  # noqa: BLE001 - that alert's rejection (encode_failure)
                bad[str(alert.get("id"))] = encode_failure(exc)
        return good, bad

    def encode_one(self, alert: Mapping[str, Any]) -> bytes:
        return encode_json(self.render(alert))

    def body(self, encoded: Sequence[bytes]) -> bytes:
        """NDJSON: one document per line, final newline included."""
        return b"\n".join(encoded) + b"\n"

    def headers(self, alerts: Sequence[Mapping[str, Any]], body: bytes) -> dict[str, str]:
        h = {"Content-Type": self.content_type}
        h.update(self.extra_headers)
        if self.token:
            h["Authorization"] = f"{self.auth_scheme} {self.token.reveal()}"
        return h

    def redact(self, text: str | None) -> str | None:
        """``text`` with every configured secret masked."""
        if not text:
            return text
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """One attempt to deliver ``alerts``."""
        good, bad = self.encode_each(alerts)
        if not good:
            return SendResult(OK, rejected=bad)
        sent = [a for a, _ in good]
        body = self.body([b for _, b in good])
        try:
            resp = self.transport.request("POST", self.path, body, self.headers(sent, body))
        except TransportFailure as exc:
            return SendResult(exc.outcome, rejected=bad, error=self.redact(exc.message))
        result = self.interpret(sent, resp)
        result.status = resp.status
        if not result.detail:
            result.detail = self.redact(resp.text()) or ""
        result.rejected.update(bad)
        if result.error:
            result.error = self.redact(result.error)
        return result

    def interpret(self, alerts: Sequence[Mapping[str, Any]], resp: HttpResponse) -> SendResult:
        """Map the receiver's answer to a SendResult (generic status classes)."""
        outcome = classify_status(resp)
        ids = [str(a.get("id")) for a in alerts]
        if outcome == OK:
            return SendResult(OK, delivered=ids)
        ra = parse_retry_after(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
        return SendResult(outcome, retry_after=ra, error=f"HTTP {resp.status} from {self.url}")

    def check(self) -> SendResult | None:
        """An unauthenticated health check, where the API has one (None otherwise)."""
        return None

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        """(any thread, at stop) End the request in flight now (see HttpTransport.abort)."""
        self.transport.abort()


class EcsNdjsonOutput(HttpOutput):
    """ECS documents as NDJSON, POSTed to any HTTPS endpoint (the default output)."""

    name = "ecs"
    content_type = "application/x-ndjson"
