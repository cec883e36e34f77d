"""The POSIX control channel against hostile local clients (docs/hostile-inputs.md).

A request is one line of at most ``MAX_REQUEST`` (4,096) bytes, newline included; a longer one is
refused and the channel keeps serving. Only the sensor's own user and root may use it: the
socket file is 0600 in a 0700 folder, and where the OS names the peer (Linux ``SO_PEERCRED``) a
peer of another user is refused even if those permissions were opened.
"""
from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from sensor.daemon import control

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the POSIX control socket")

WAIT = 30.0
NOBODY = 65534


class _Reloader:
    def __init__(self):
        self.calls = []

    def reload(self, trigger):
        self.calls.append(trigger)
        return {"ok": True, "trigger": trigger}


def _ask(path: str, raw: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(WAIT)
        c.connect(path)
        try:
            c.sendall(raw)
        except BrokenPipeError:          # a refused peer: the answer came before the request
            pass
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def _flood(path: str, raw: bytes) -> None:
    """Send ``raw`` and let the server cut it off (it stops reading past the cap)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(WAIT)
        c.connect(path)
        try:
            c.sendall(raw)
            while c.recv(65536):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass


def _padded(total: int) -> bytes:
    """A ping request of exactly ``total`` bytes, its newline included."""
    head, tail = b'{"cmd": "ping"', b"}\n"
    return head + b" " * (total - len(head) - len(tail)) + tail


@pytest.fixture
def server():
    # Under /tmp itself rather than pytest's 0700 folder, so that another user could reach the
    # socket but for the sensor's own permissions (the data folder 0700, the socket 0600).
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="ctl-", dir="/tmp")
    os.chmod(top, 0o711)
    srv = control.UnixControlServer(os.path.join(top, "data", "control.sock"), _Reloader())
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(top, ignore_errors=True)


def test_the_request_cap_is_the_documented_4096_bytes():
    assert control.MAX_REQUEST == 4096


def test_a_request_at_the_cap_is_served_and_one_byte_over_is_refused(server):
    at = _padded(4096)
    assert len(at) == 4096
    assert _ask(server.path, at) == {"ok": True, "pid": os.getpid()}
    over = _padded(4097)
    answer = _ask(server.path, over)
    assert answer["ok"] is False and "larger than 4096 bytes" in answer["error"]
    # A far larger request (the client writes more than the server ever reads) is cut off
    # unread, and the channel goes on serving the next client.
    _flood(server.path, b'{"cmd": "reload"' + b" " * 1_000_000 + b"}\n")
    assert server.reloader.calls == []
    assert _ask(server.path, b'{"cmd": "reload"}\n')["ok"] is True
    assert server.reloader.calls == ["control"]


def _as_nobody(path: str, raw: bytes) -> tuple[str, object]:
    """Connect as another user (a forked child that drops to ``nobody``); what it got."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: no pytest machinery from here
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out = ("answer", _ask(path, raw))
            except OSError as exc:
                out = ("oserror", exc.errno)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    kind, value = json.loads(data)
    return kind, value


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root, to run a client as another user (nobody)")
def test_another_user_cannot_reach_the_socket_and_is_refused_if_the_permissions_were_opened(server):
    import errno
    import stat
    # The files as the sensor makes them: another user cannot even connect.
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o700
    kind, value = _as_nobody(server.path, b'{"cmd": "reload"}\n')
    assert (kind, value) == ("oserror", errno.EACCES)
    # Permissions opened by mistake (or by an operator): the peer's user id still refuses it.
    os.chmod(os.path.dirname(server.path), 0o755)
    os.chmod(server.path, 0o666)
    kind, value = _as_nobody(server.path, b'{"cmd": "reload"}\n')
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("this OS does not name a Unix socket's peer: the file permissions are the only check")
    assert (kind, value) == ("answer", {"ok": False, "error": "not allowed"})
    assert server.refused == 1 and server.reloader.calls == []
    # Root and the sensor's own user still can.
    assert _ask(server.path, b'{"cmd": "reload"}\n')["ok"] is True
