"""A local HTTPS alert receiver for tests, benchmarks and the demo.

Real TLS on 127.0.0.1 with a throw-away CA and server certificate generated at start (with the
``cryptography`` package). It speaks the four wire formats of sensor.deliver.outputs:

- ``POST /services/collector/event``: Splunk HEC stacked envelopes (``GET /services/collector/health``)
- ``POST /_bulk`` or ``/<index>/_bulk``: Elasticsearch bulk ``create`` (409 for an id it already has)
- any other ``POST`` with ``application/x-ndjson``: ECS NDJSON
- any other ``POST`` with ``application/json`` ``{"alerts": [...]}``: the webhook (HMAC checked if set)

It records every alert id it accepts (duplicates included, so tests can check "each id once") and
can be told to fail: down/up, a queue of scripted statuses (429 with Retry-After, 503, 401...),
413 over N alerts, 400 on given alert ids, slow answers.

Run ``python -m sensor.testing.receiver`` to get one on a free port; it prints its URL, the CA file,
the certificate's SHA-256 pin and the control token. ``GET /_receiver/stats`` returns the counters
as JSON and ``POST /_receiver/control`` changes its behaviour; both need
``Authorization: Bearer <control token>``. Its private key is written 0600.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import gzip
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable

import msgspec

from .._files import open_private, private_dir

_loads = msgspec.json.decode  # several times faster than json.loads on 5 kB documents

__all__ = ["CertAuthority", "Receiver", "main", "sample_alert"]

_SEED = None


def sample_alert(i: int, host: str = "WS01") -> dict:
    """A real alert (the seed rule on a mofcomp.exe start) whose id differs for each ``i``."""
    global _SEED
    from ..detect.alerts import build_alert
    from ..events import ProcessEvent
    from ..detect.seed import seed_rule

    if _SEED is None:
        _SEED = seed_rule()
    event = ProcessEvent({
        "Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "OriginalFileName": "mofcomp.exe",
        "CommandLine": f"mofcomp.exe C:\\Users\\Public\\evil{i}.mof",
        "ParentImage": "C:\\Windows\\System32\\cmd.exe", "ParentCommandLine": "cmd.exe /c run.bat",
        "User": "CORP\\alice", "ProcessId": 1000 + i, "ParentProcessId": 900,
        "UtcTime": "2026-08-20 10:11:12.345", "Computer": host, "IntegrityLevel": "High",
    })
    return build_alert(_SEED, event)


# -- certificates --------------------------------------------------------------------------------

class CertAuthority:
    """A throw-away CA issuing server and client certificates (EC P-256, via ``cryptography``)."""

    def __init__(self, name: str = "etw-sensor test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1)).not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding
        return self.cert.public_bytes(Encoding.PEM)

    def issue(self, hosts: Iterable[str], *, expired: bool = False, client: bool = False) -> tuple[bytes, bytes, bytes]:
        """(cert PEM, key PEM, cert DER) for ``hosts`` (IPs or DNS names)."""
        x509, NameOID = self._x509, self._oid
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        hosts = list(hosts)
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        if expired:
            start, end = now - _dt.timedelta(days=30), now - _dt.timedelta(days=1)
        else:
            start, end = now - _dt.timedelta(hours=1), now + _dt.timedelta(days=7)
        sans: list = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "client")]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, self._hashes.SHA256())
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return cert.public_bytes(Encoding.PEM), key_pem, cert.public_bytes(Encoding.DER)


# -- payload parsing -----------------------------------------------------------------------------

def _doc_id(doc: Any) -> str | None:
    """The alert id in an ECS document (event.id) or a raw alert (id)."""
    if not isinstance(doc, dict):
        return None
    ev = doc.get("event")
    if isinstance(ev, dict) and isinstance(ev.get("id"), str) and "@timestamp" in doc:
        return ev["id"]
    return doc.get("id") if isinstance(doc.get("id"), str) else None


def _stacked_json(text: str) -> list[Any]:
    """Objects written back to back (HEC batching: no array, any whitespace between)."""
    try:  # fast path: one object per line, as sensor.deliver.splunk writes them
        return [_loads(line) for line in text.split("\n") if line.strip()]
    except msgspec.DecodeError:
        pass
    dec = json.JSONDecoder()
    out, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


# -- server --------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], owner: "Receiver") -> None:
        self.owner = owner
        super().__init__(addr, _Handler)

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        owner = self.owner
        request.settimeout(30)
        try:  # answer small responses at once (Nagle + delayed ACK would add ~40 ms per request)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if owner.ssl_context is not None:
            try:
                request = owner.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                owner._count("tls_failures")
                request.close()
                return
        with owner._lock:
            owner._conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with owner._lock:
                owner._conns.discard(request)
            if owner.ssl_context is not None:
                try:  # the wrapped socket is a new object: shutdown_request() only sees the raw one
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                request.close()

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner._count("connection_errors")  # clients killed mid-request are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any = None, headers: dict | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self._headers_buffer.append(b"\r\n" + data)  # headers and body in one write
        self.flush_headers()

    def _control_ok(self) -> bool:
        got = self.headers.get("Authorization") or ""
        if hmac.compare_digest(got.encode(), f"Bearer {self.server.owner.control_token}".encode()):
            return True
        self._reply(401, {"error": "the control endpoints need Authorization: Bearer <control token>"})
        return False

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        if self.path.startswith("/services/collector/health"):
            self._reply(200, {"text": "HEC is healthy", "code": 17})
        elif self.path.startswith("/_receiver/stats"):
            if self._control_ok():
                self._reply(200, owner.stats())
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 256 * 1024 * 1024:
            self._reply(400, {"error": "bad Content-Length"})
            return
        raw = self.rfile.read(length)
        if self.path.startswith("/_receiver/control"):
            if not self._control_ok():
                return
            try:
                owner.control(json.loads(raw or b"{}"))
            except (ValueError, TypeError, AttributeError) as exc:
                self._reply(400, {"error": f"bad control command: {exc}"})
                return
            self._reply(200, {"ok": True})
            return
        owner._count("requests")
        owner._in_flight(+1)
        try:
            status, body, headers = owner._handle(self.path, dict(self.headers), raw)
        finally:
            owner._in_flight(-1)
        self._reply(status, body, headers)


class Receiver:
    """The local receiver; use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, directory: str | Path | None = None,
                 cert_hosts: Iterable[str] = ("127.0.0.1", "localhost"), cert_expired: bool = False,
                 token: str | None = None, hmac_secret: str | None = None,
                 require_client_cert: bool = False, tls: bool = True, keep_documents: bool = False,
                 control_token: str | None = None) -> None:
        self.host = host
        self.port = port
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sensor-receiver-")
            directory = self._tmp.name
        self.dir = Path(directory)
        private_dir(self.dir)
        self.token = token
        # The control endpoints change what the receiver accepts: only who holds this may.
        self.control_token = control_token or secrets.token_urlsafe(24)
        self.hmac_secret = hmac_secret
        self._lock = threading.Lock()
        self._conns: set = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # behaviour
        self.fail_queue: list[tuple[int, dict]] = []
        self.too_large_over: int | None = None
        self.reject_ids: set[str] = set()
        self.reject_containing: str | None = None   # reject documents whose JSON holds this text
        self.delay = 0.0
        # records
        self.received: list[str] = []
        self.keep_documents = keep_documents
        self._documents: list[Any] = []  # accepted documents, when keep_documents is set
        self._meta: list[dict] = []      # for each: the format and its envelope (HEC) or action (bulk)
        self.request_log: list[dict] = []
        self.counters = {"requests": 0, "tls_failures": 0, "connection_errors": 0, "in_flight": 0}
        self._es_store: set[str] = set()
        self.ssl_context: ssl.SSLContext | None = None
        self.ca_file = self.cert_file = self.key_file = None
        self.cert_sha256 = None
        if tls:
            self.ca = CertAuthority()
            cert, key, der = self.ca.issue(cert_hosts, expired=cert_expired)
            self.ca_file = self.dir / "ca.pem"
            self.cert_file = self.dir / "server.pem"
            self.key_file = self.dir / "server.key"
            self.ca_file.write_bytes(self.ca.cert_pem())
            self.cert_file.write_bytes(cert)
            with open_private(self.key_file, "wb") as fh:   # the private key: 0600
                fh.write(key)
            self.cert_sha256 = hashlib.sha256(der).hexdigest()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            if require_client_cert:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cafile=str(self.ca_file))
            self.ssl_context = ctx

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> "Receiver":
        """Listen and serve in a background thread."""
        self.up()
        return self

    def up(self) -> None:
        """(Re)open the listening socket on the same port."""
        if self._server is not None:
            return
        last = None
        for _ in range(50):
            try:
                self._server = _Server((self.host, self.port), self)
                break
            except OSError as exc:  # the port may linger for a moment after down()
                last = exc
                time.sleep(0.02)
        else:
            raise last  # type: ignore[misc]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sensor-receiver", daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and drop open connections: clients get 'connection refused'."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def stop(self) -> None:
        self.down()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ------------------------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, headers: dict | None = None) -> None:
        """Answer the next ``count`` alert requests with ``status`` (e.g. 429 + Retry-After)."""
        with self._lock:
            self.fail_queue.extend([(status, dict(headers or {}))] * count)

    def issue_client_cert(self) -> tuple[Path, Path]:
        """A client certificate from this receiver's CA: (cert file, key file)."""
        cert, key, _ = self.ca.issue(["sensor-client"], client=True)
        c, k = self.dir / "client.pem", self.dir / "client.key"
        c.write_bytes(cert)
        with open_private(k, "wb") as fh:
            fh.write(key)
        return c, k

    def control(self, cmd: dict) -> None:
        """Apply a JSON control command (``POST /_receiver/control``)."""
        if "delay" in cmd:
            self.delay = float(cmd["delay"])
        if "too_large_over" in cmd:
            self.too_large_over = cmd["too_large_over"]
        if "reject_ids" in cmd:
            self.reject_ids = set(cmd["reject_ids"])
        if "reject_containing" in cmd:
            self.reject_containing = cmd["reject_containing"] or None
        if "fail" in cmd:
            self.fail_next(int(cmd["fail"]), int(cmd.get("count", 1)), cmd.get("headers"))
        if "down_for" in cmd:
            threading.Thread(target=self._down_for, args=(float(cmd["down_for"]),), daemon=True).start()

    def _down_for(self, seconds: float) -> None:
        time.sleep(0.05)  # let the control answer leave first
        self.down()
        time.sleep(seconds)
        self.up()

    # -- records ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _in_flight(self, n: int) -> None:
        self._count("in_flight", n)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "received": len(self.received), "unique": len(set(self.received))}

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.received)

    def documents(self, kind: str | None = None) -> list[Any]:
        """The accepted documents in arrival order (ECS, or the HEC envelope's ``event``);
        ``kind`` keeps those whose ``event.kind`` is that (``alert``, ``metric``)."""
        with self._lock:
            docs = list(self._documents)
        if kind is None:
            return docs
        return [d for d in docs if isinstance(d, dict) and (d.get("event") or {}).get("kind") == kind]

    def records(self) -> list[tuple[dict, Any]]:
        """(meta, document) for each accepted document: meta has ``format`` and, for HEC, the
        envelope's ``sourcetype``/``index``, for ``_bulk`` the action's ``_index``."""
        with self._lock:
            return list(zip(self._meta, self._documents))

    def wait_for(self, n_unique: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n_unique`` distinct ids arrived."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(set(self.received)) >= n_unique:
                    return True
            time.sleep(0.005)
        return False

    # -- request handling ----------------------------------------------------------------------

    def _auth_ok(self, headers: dict, scheme: str) -> bool:
        if not self.token:
            return True
        got = headers.get("Authorization") or headers.get("authorization") or ""
        if scheme == "ApiKey":
            want = {f"ApiKey {self.token}", f"ApiKey {base64.b64encode(self.token.encode()).decode()}"}
            return got in want
        return hmac.compare_digest(got, f"{scheme} {self.token}")

    def _handle(self, path: str, headers: dict, raw: bytes) -> tuple[int, Any, dict]:
        hdr = {k.lower(): v for k, v in headers.items()}
        if hdr.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            scripted = self.fail_queue.pop(0) if self.fail_queue else None
        kind = ("hec" if path.startswith("/services/collector") else
                "bulk" if path.split("?")[0].rstrip("/").endswith("_bulk") else
                "ndjson" if "ndjson" in hdr.get("content-type", "") else "webhook")
        entry = {"time": time.time(), "path": path, "kind": kind, "bytes": len(raw),
                 "gzip": hdr.get("content-encoding") == "gzip", "status": None, "n": 0}
        try:
            status, body, out_headers = self._dispatch(kind, hdr, raw, scripted, entry)
        except (ValueError, UnicodeDecodeError, msgspec.DecodeError) as exc:
            status, body, out_headers = 400, {"error": f"bad request: {exc}"}, {}
        entry["status"] = status
        with self._lock:
            self.request_log.append(entry)
        return status, body, out_headers

    def _dispatch(self, kind: str, hdr: dict, raw: bytes, scripted: tuple | None, entry: dict):
        text = raw.decode("utf-8")
        if kind == "hec":
            docs = _stacked_json(text)
            ids = [_doc_id(d.get("event")) if isinstance(d, dict) else None for d in docs]
        elif kind == "bulk":
            lines = [ln for ln in text.split("\n") if ln.strip()]
            if len(lines) % 2:
                raise ValueError("bulk body must hold action/source pairs")
            actions = [_loads(x) for x in lines[0::2]]
            docs = [_loads(x) for x in lines[1::2]]
            ids = [(a.get("create") or a.get("index") or {}).get("_id") for a in actions]
            entry["indexes"] = [(a.get("create") or a.get("index") or {}).get("_index") for a in actions]
        elif kind == "ndjson":
            docs = [_loads(x) for x in text.split("\n") if x.strip()]
            ids = [_doc_id(d) for d in docs]
        else:
            obj = _loads(text)
            docs = obj.get("alerts") if isinstance(obj, dict) else None
            if not isinstance(docs, list):
                raise ValueError('webhook body must be {"alerts": [...]}')
            ids = [_doc_id(d) for d in docs]
        entry["n"] = len(ids)
        if scripted is not None:
            status, headers = scripted
            return status, {"text": "scripted failure", "code": 9 if status == 503 else 8}, headers
        scheme = {"hec": "Splunk", "bulk": "ApiKey"}.get(kind, "Bearer")
        if not self._auth_ok(hdr, scheme):
            return (401, {"text": "Invalid authorization", "code": 3}, {}) if kind == "hec" else (401, {"error": "unauthorized"}, {})
        if kind == "webhook" and self.hmac_secret:
            want = "sha256=" + hmac.new(self.hmac_secret.encode(), raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(hdr.get("x-sensor-signature-256", ""), want):
                return 401, {"error": "bad signature"}, {}
        if self.too_large_over is not None and len(ids) > self.too_large_over:
            return 413, {"error": "request entity too large"}, {}
        if kind == "bulk":
            return self._bulk(ids, docs, entry.get("indexes") or [None] * len(ids))
        for i, alert_id in enumerate(ids):
            if alert_id is None or alert_id in self.reject_ids or self._poison(docs[i]):
                if kind == "hec":
                    return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": i}, {}
                return 400, {"error": f"rejected alert {alert_id}"}, {}
        with self._lock:
            self.received.extend(ids)  # type: ignore[arg-type]
            if self.keep_documents:
                self._documents.extend(d.get("event") if kind == "hec" else d for d in docs)
                self._meta.extend({"format": kind, **({k: d.get(k) for k in ("sourcetype", "index", "source")}
                                                      if kind == "hec" else {})} for d in docs)
        if kind == "hec":
            return 200, {"text": "Success", "code": 0}, {}
        return 200, {"accepted": len(ids)}, {}

    def _poison(self, doc: Any) -> bool:
        marker = self.reject_containing
        return bool(marker) and marker in json.dumps(doc)

    def _bulk(self, ids: list, docs: list, indexes: list) -> tuple[int, Any, dict]:
        items, errors = [], False
        with self._lock:
            for alert_id, doc, index in zip(ids, docs, indexes):
                if alert_id is None or alert_id in self.reject_ids or self._poison(doc):
                    errors = True
                    items.append({"create": {"_id": alert_id, "status": 400, "error": {
                        "type": "document_parsing_exception", "reason": "failed to parse field"}}})
                elif alert_id in self._es_store:
                    errors = True
                    items.append({"create": {"_id": alert_id, "status": 409, "error": {
                        "type": "version_conflict_engine_exception", "reason": "document already exists"}}})
                else:
                    self._es_store.add(alert_id)
                    self.received.append(alert_id)
                    if self.keep_documents:
                        self._documents.append(doc)
                        self._meta.append({"format": "bulk", "_index": index})
                    items.append({"create": {"_id": alert_id, "status": 201, "result": "created"}})
        return 200, {"took": 1, "errors": errors, "items": items}, {}


def main(argv: list[str] | None = None) -> int:
    """Run a receiver until interrupted, printing its URL, CA file and pin."""
    ap = argparse.ArgumentParser(prog="python -m sensor.testing.receiver", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--dir", help="where to write ca.pem/server.pem (default: a temporary directory)")
    ap.add_argument("--token", help="require this token (Bearer / Splunk / ApiKey by format)")
    ap.add_argument("--hmac-secret", help="verify webhook signatures with this secret")
    ap.add_argument("--control-token-env", metavar="VAR",
                    help="take the control token from this environment variable "
                         "(default: a random one, printed)")
    ap.add_argument("--json", action="store_true", help="print the connection details as one JSON line")
    args = ap.parse_args(argv)
    control = os.environ.get(args.control_token_env) if args.control_token_env else None
    rec = Receiver(args.host, args.port, directory=args.dir, token=args.token, hmac_secret=args.hmac_secret,
                   control_token=control)
    rec.start()
    info = {"url": rec.url, "ca_file": str(rec.ca_file), "pin_sha256": rec.cert_sha256,
            "control_token": rec.control_token}
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(f"URL: {info['url']}\nCA: {info['ca_file']}\npin_sha256: {info['pin_sha256']}\n"
              f"control token: {info['control_token']}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        rec.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
