"""The local control channel: how ``etw-sensor reload`` reaches the running sensor.

POSIX: a Unix socket ``control.sock`` in the data folder (a 0700 folder), created 0600, that
accepts only peers running as the sensor's own user or root (``SO_PEERCRED`` where the OS has
it). Windows: a named pipe whose ACL admits SYSTEM and Administrators only
(``control_windows.py``), and the service's custom control code (``SERVICE_CONTROL_RELOAD``).

The protocol is one JSON object per connection each way, at most :data:`MAX_REQUEST` bytes:
``{"cmd": "reload"}`` -> the reload's result; ``{"cmd": "ping"}`` -> ``{"ok": true, "pid": N}``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from typing import Any, Callable

log = logging.getLogger("sensor.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096
STOP_WAIT = 1.0         # stop() waits this long for the thread (it is a daemon)
IO_TIMEOUT = 5.0
COMMANDS = ("reload", "ping")
# AF_UNIX path limit (sun_path): 108 bytes on Linux, 104 on the BSDs and macOS
MAX_SOCKET_PATH = 104


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_NAME)


def handle_request(raw: bytes, reload: Callable[[str], Any]) -> dict:
    """The answer to one request (a pure function of the request and the reload callable)."""
    try:
        req = json.loads(raw.decode("utf-8"))
        if not isinstance(req, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        return {"ok": False, "error": "not a JSON object"}
    cmd = req.get("cmd")
    if cmd == "ping":
        return {"ok": True, "pid": os.getpid()}
    if cmd == "reload":
        res = reload("control")
        return res.as_dict() if hasattr(res, "as_dict") else dict(res)
    return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})"}


def _peer_uid(conn: socket.socket) -> int | None:
    """The peer's user id, where the OS tells it (Linux SO_PEERCRED); None when unknown."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid
    except OSError:
        return None


def peer_allowed(uid: int | None, own_uid: int) -> bool:
    """Only the sensor's own user and root may control it (unknown: the 0600 socket decides)."""
    return uid is None or uid == own_uid or uid == 0


class UnixControlServer:
    """Serves the control protocol on a Unix socket, one connection at a time."""

    def __init__(self, path: str, reloader) -> None:
        self.path = path
        self.reloader = reloader
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn: socket.socket | None = None   # the connection being served (stop ends it)
        self.refused = 0

    def start(self) -> None:
        from .._files import private_dir
        private_dir(os.path.dirname(self.path))
        if os.path.lexists(self.path):
            # a socket left by a sensor that died (the instance lock keeps a live one unique)
            if not _is_socket(self.path):
                raise OSError(f"{self.path} exists and is not a socket")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)            # the socket file is born 0600
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(4)          # accept() blocks: stop() wakes it (no polling at rest)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control channel: %s (etw-sensor reload)", self.path)

    def _serve(self) -> None:
        own = os.geteuid()
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                self._stop.wait(0.1)    # e.g. out of descriptors: not a busy loop
                continue
            self._conn = conn
            if self._stop.is_set():          # stop() ran before the connection was published
                conn.close()
                return
            with conn:
                try:
                    if not peer_allowed(_peer_uid(conn), own):
                        self.refused += 1
                        _send(conn, {"ok": False, "error": "not allowed"})
                        continue
                    conn.settimeout(IO_TIMEOUT)
                    raw = _recv(conn)
                    conn.settimeout(IO_TIMEOUT)     # the answer gets its own
                    if raw is None:
                        _send(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
                        continue
                    _send(conn, handle_request(raw, lambda trig: self.reloader.reload(trig)))
                except OSError:
                    continue
                except Exception:  # noqa: BLE001 - one bad request must not end the channel
                    log.exception("control request failed")
                finally:
                    self._conn = None

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Stop serving. A client that connected and sends nothing is cut off (it would hold
        the thread for IO_TIMEOUT); a reload it asked for is abandoned by the reloader's stop."""
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)   # wakes the accept() (closing does not)
            except OSError:
                pass
            self._sock.close()
        conn = self._conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)        # wakes a recv() waiting on the client
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        try:
            if _is_socket(self.path):
                os.unlink(self.path)
        except OSError:
            pass


def _is_socket(path: str) -> bool:
    import stat
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _recv(conn: socket.socket) -> bytes | None:
    """One request line (None: too large). IO_TIMEOUT bounds the whole request, not each
    read: the server answers one connection at a time, and a client sending a byte at a time
    must not hold it (socket.timeout past the deadline)."""
    import time
    deadline = time.monotonic() + IO_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the request took longer than the I/O timeout")
        conn.settimeout(left)
        chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            return None
    return buf.split(b"\n", 1)[0]


def _send(conn: socket.socket, obj: dict) -> None:
    conn.sendall(json.dumps(obj, default=str).encode("utf-8") + b"\n")


def control_server(data_dir: str, reloader):
    """The POSIX control server, or None (logged) when it cannot be had. (Windows:
    ``control_windows.PipeControlServer``, chosen by ``assemble``.)"""
    path = socket_path(data_dir)
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        log.warning("control channel off: the socket path %s is longer than the OS allows; "
                    "use SIGHUP (kill -HUP) to reload", path)
        return None
    return UnixControlServer(path, reloader)


def send_command(data_dir: str, cmd: str, timeout: float = 60.0) -> dict:
    """Send ``cmd`` to the sensor that owns ``data_dir`` (POSIX); OSError when none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path(data_dir))
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 16 * 1024 * 1024:
                raise OSError("answer too large")
    try:
        return json.loads(buf.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OSError("the sensor's answer is not JSON") from None
