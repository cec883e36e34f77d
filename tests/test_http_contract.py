"""HTTP delivery's promises (docs/delivery.md) at their edges: option ranges, how each status and
each transport failure is classified, the defaults, and the one retry on a dropped keep-alive
connection. Real sockets, no mocks of urllib3."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import urllib3.exceptions as u3

from sensor.deliver.http import (HttpResponse, HttpTransport, TransportFailure, classify_exception,
                                  classify_status)
from sensor.deliver.outputs import build_output
from sensor.deliver.protocol import BISECT, OK, PARK, RETRY, SPLIT
from sensor.deliver.tls import ConfigError

URL = "https://127.0.0.1:9/in"


def _build(**opts):
    out = build_output({"url": URL, **opts})
    out.close()
    return out


@pytest.mark.parametrize("level", [0, 1, 9])
def test_gzip_levels_zero_to_nine_are_accepted(level):
    _build(gzip_level=level)


@pytest.mark.parametrize("level", [-1, 10, True, 1.0, "1"])
def test_gzip_levels_outside_zero_to_nine_are_refused_by_name(level):
    with pytest.raises(ConfigError, match="gzip_level"):
        _build(gzip_level=level)


@pytest.mark.parametrize("key,top", [("connect_timeout", 600), ("read_timeout", 3600)])
def test_timeouts_are_above_zero_and_at_most_their_top(key, top):
    _build(**{key: top})
    _build(**{key: 0.01})
    for bad in (0, -1, top + 0.5, True, "5"):
        with pytest.raises(ConfigError, match=key):
            _build(**{key: bad})


@pytest.mark.parametrize("value", ["a\tb", "~x~", "é", "team blue", " "])
def test_header_values_with_tab_and_printable_text_are_accepted(value):
    # a space is printable text (an ordinary header value: "team blue"), not a control character
    _build(headers={"X-Tag": value})


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x1fb", "a\x7fb"])
def test_header_values_with_line_breaks_or_control_characters_are_refused(value):
    with pytest.raises(ConfigError, match="control character"):
        _build(headers={"X-Tag": value})


def test_every_status_class_gets_its_documented_outcome():
    def outcome(s):
        return classify_status(HttpResponse(s, {}, b""))
    assert all(outcome(s) == OK for s in range(200, 300))
    assert outcome(409) == OK                                   # the receiver has this id already
    assert outcome(499) == PARK                                 # not a server error
    for s in (408, 425, 429, 500, 501, 502, 503, 504, 599):
        assert outcome(s) == RETRY, s
    assert outcome(413) == SPLIT
    assert outcome(400) == BISECT and outcome(422) == BISECT
    for s in (300, 301, 302, 401, 403, 404, 405, 411, 415):
        assert outcome(s) == PARK, s


def test_transport_defaults_are_the_documented_ones():
    t = HttpTransport("https://127.0.0.1/in")
    try:
        assert t.pool.port == 443
        assert t.pool.timeout.connect_timeout == 5.0 and t.pool.timeout.read_timeout == 30.0
        assert t.gzip is True and t.gzip_level == 1
        assert t.pool.pool.maxsize == 2           # keep-alive connections kept open
    finally:
        t.close()
    from sensor.deliver.http import HttpOutput
    for out in (build_output({"url": "https://127.0.0.1/in"}), HttpOutput("https://127.0.0.1/in")):
        _check_defaults(out)


def _check_defaults(out):
    try:
        tr = out.transport
        assert tr.pool.port == 443 and tr.gzip is True and tr.gzip_level == 1
        assert tr.pool.timeout.connect_timeout == 5.0 and tr.pool.timeout.read_timeout == 30.0
        assert tr.pool.pool.maxsize == 2
    finally:
        out.close()


def test_tls_failures_that_only_configuration_can_fix_park_and_the_rest_retry():
    # A handshake the server refuses for a reason in the configuration (certificate, protocol)
    # parks; a connection cut during the handshake (EOF, reset) is retried.
    outcome, msg = classify_exception(u3.SSLError("sslv3 alert handshake failure"))
    assert outcome == PARK and msg.startswith("TLS handshake failed")
    outcome, msg = classify_exception(u3.SSLError("certificate unknown"))
    assert outcome == PARK
    outcome, msg = classify_exception(u3.SSLError("EOF occurred in violation of protocol (certificate)"))
    assert outcome == RETRY and msg.startswith("TLS connection error")
    outcome, _ = classify_exception(u3.SSLError("connection reset during handshake failure"))
    assert outcome == RETRY


def test_a_connection_error_is_not_called_a_timeout():
    outcome, msg = classify_exception(u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))
    assert outcome == RETRY and not msg.startswith("timeout")
    outcome, msg = classify_exception(u3.ReadTimeoutError(None, "/in", "read timed out"))
    assert outcome == RETRY and msg.startswith("timeout")
    outcome, msg = classify_exception(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert outcome == PARK


def test_a_connection_dropped_without_an_answer_is_retried_once_on_a_fresh_one():
    # A pooled keep-alive connection the receiver closed shows up as a connection dropped
    # without an answer: the transport retries once at once (docs/delivery.md), so that attempt
    # succeeds when the receiver answers the second connection.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    seen = []

    def serve():
        for n in range(2):
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                seen.append(n)
                if n == 0:
                    continue                    # close without a word
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    t = HttpTransport(f"http://127.0.0.1:{port}/in", allow_http=True, gzip=False)
    try:
        resp = t.request("POST", "/in", b"{}", {"Content-Type": "application/json"})
        assert resp.status == 200 and seen == [0, 1]
    finally:
        t.close()
        th.join(30)
        srv.close()


def test_a_bad_port_in_the_url_is_a_configuration_error():
    with pytest.raises(ConfigError, match="port"):
        build_output({"url": "https://127.0.0.1:99999/in"})


@pytest.mark.parametrize("exc", [TypeError, ValueError, OverflowError, KeyError, AttributeError])
def test_an_alert_a_format_cannot_encode_is_rejected_not_fatal(exc):
    # Every format renders through encode_each: one alert its renderer chokes on is rejected
    # with the reason, the others in the batch still go.
    from sensor.deliver.http import HttpOutput
    from sensor.testing.receiver import sample_alert

    class Picky(HttpOutput):
        def render(self, alert):
            if alert.get("id") == "bad":
                raise exc("cannot render this one")
            return super().render(alert)

    out = Picky(URL)
    try:
        good, bad = out.encode_each([sample_alert(1), dict(sample_alert(2), id="bad")])
        assert [a["id"] for a, _ in good] == [sample_alert(1)["id"]]
        assert list(bad) == ["bad"] and exc.__name__ in bad["bad"]
    finally:
        out.close()


# -- the answer's body is bounded (docs/delivery.md): size decoded, time as a whole -----------

def read_request(conn, data=b""):
    """One HTTP/1.1 request read from ``conn`` (``data``: bytes already received): (head, body,
    the bytes after it), or None when the client closed before its end."""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                   if h.lower().startswith(b"content-length:")), 0)
    while len(data) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return head, data[:length], data[length:]


def _answering(answer):
    """A plain-HTTP receiver on a real socket: reads each request, then ``answer(conn)``;
    serves connections until closed. Returns (url, stop)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                read_request(conn)      # answered even when the client closed early
                try:
                    answer(conn)
                except OSError:
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def stop():
        done.set()
        try:
            srv.shutdown(socket.SHUT_RDWR)      # wakes the accept() (closing alone does not)
        except OSError:
            pass
        srv.close()
        th.join(30)
    return f"http://127.0.0.1:{port}/in", stop


def _post(t):
    return t.request("POST", "/in", b"{}", {"Content-Type": "application/json"})


def test_an_answer_larger_than_the_bound_is_a_retry_and_the_next_request_works():
    big = 16 * 1024 * 1024 + 1
    answers = iter([big, 2])

    def answer(conn):
        n = next(answers)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        conn.sendall(b"x" * n)
    url, stop = _answering(answer)
    t = HttpTransport(url, allow_http=True, gzip=False)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY and "larger than 16 MiB" in err.value.message
        resp = _post(t)                 # the half-read connection was not reused
        assert resp.status == 200 and resp.data == b"xx"
    finally:
        t.close()
        stop()


def test_an_answer_of_exactly_the_bound_is_read_whole():
    n = 16 * 1024 * 1024

    def answer(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + b"y" * n)
    url, stop = _answering(answer)
    t = HttpTransport(url, allow_http=True, gzip=False)
    try:
        resp = _post(t)
        assert resp.status == 200 and len(resp.data) == n
    finally:
        t.close()
        stop()


def test_a_gzip_bomb_answer_stops_at_the_bound_decoded():
    # about 64 KiB on the wire, 64 MiB decoded: the bound is on what it decodes to
    import gzip
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 128 * 1024

    def answer(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                     % len(bomb) + bomb)
    url, stop = _answering(answer)
    t = HttpTransport(url, allow_http=True, gzip=False)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY and "larger than 16 MiB" in err.value.message
    finally:
        t.close()
        stop()


def test_an_answer_dripped_a_byte_at_a_time_is_bounded_by_the_read_timeout_as_a_whole():
    # each byte comes well within the read timeout, the whole answer would take 20 s
    def answer(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
        for _ in range(200):
            conn.sendall(b"z")
            time.sleep(0.1)
    url, stop = _answering(answer)
    t = HttpTransport(url, allow_http=True, gzip=False, read_timeout=1.0)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY and "took longer than 1 s to read" in err.value.message
    finally:
        t.close()
        stop()


def test_an_answer_read_to_its_end_leaves_its_connection_open_for_the_next_request():
    # docs/delivery.md, pool_maxsize: keep-alive connections are kept open to the receiver. An
    # answer read whole goes back to the pool, so the next request rides the same connection.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    accepted = []
    answered = []

    def serve_one(conn):
        with conn:
            data = b""
            while True:
                request = read_request(conn, data)
                if request is None:
                    return
                _, _, data = request
                answered.append(len(accepted))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    t = HttpTransport(f"http://127.0.0.1:{port}/in", allow_http=True, gzip=False)
    try:
        for _ in range(3):
            resp = _post(t)
            assert resp.status == 200 and resp.data == b"ok"
        assert answered == [1, 1, 1] and len(accepted) == 1
    finally:
        t.close()
        try:
            srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        srv.close()
        th.join(30)


def test_an_answer_not_read_to_its_end_closes_its_connection():
    # An answer the transport stops reading (here: it takes longer than the read timeout as a
    # whole) must not stay half read on an open connection: the transport hangs up, and the
    # receiver's next write fails instead of going on for the whole answer.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    result = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
            try:
                for _ in range(200):        # 10 s in all; the transport gives up after 0.5 s
                    conn.sendall(b"z")
                    time.sleep(0.05)
            except OSError:
                result.append("hung up")
                return
            result.append("sent the whole answer")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    t = HttpTransport(f"http://127.0.0.1:{port}/in", allow_http=True, gzip=False, read_timeout=0.5)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY
        th.join(60)                         # only guards a hang
        assert result == ["hung up"]
    finally:
        t.close()
        srv.close()


def test_a_failure_without_a_message_or_wrapped_in_another_is_classified_by_its_cause():
    # A socket error that carries no text at all is a connection error like any other (retried),
    # never a crash of the classification.
    outcome, msg = classify_exception(ConnectionResetError())
    assert outcome == RETRY and msg.startswith("connection error: ConnectionResetError")
    # urllib3 wraps the ssl module's error as its first argument (no __cause__): the park says
    # that verification failed, not that the handshake did.
    wrapped = u3.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    outcome, msg = classify_exception(wrapped)
    assert outcome == PARK and msg.startswith("TLS verification failed")
    assert "certificate verify failed" in msg             # the reason itself, for the operator
    # ... and so when the verification failure is the cause (raise ... from) or the context (an
    # error raised while handling it) of an error whose own text says nothing about it.
    cause = u3.SSLError("connection closed")
    cause.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    context = u3.SSLError("connection closed")
    context.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    for exc in (cause, context):
        outcome, msg = classify_exception(exc)
        assert outcome == PARK and msg.startswith("TLS verification failed"), exc


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/in", "https:///in", "file:///etc/passwd",
                                 "127.0.0.1:8088/in"])
def test_a_url_of_another_scheme_or_without_a_host_is_refused(url):
    with pytest.raises(ConfigError, match="url must be"):
        HttpTransport(url, allow_http=True)


@pytest.mark.parametrize("value", ["+9999 Feb 9999999999 99:99", "Wed, 21 Oct 99999 07:28:00 GMT",
                                   "soon", "Wed, 32 Oct 2015 07:28:00 GMT", "1.5", "-1"])
def test_a_retry_after_that_is_no_date_a_computer_can_hold_is_ignored(value):
    # A hostile receiver's Retry-After never breaks delivery: a value that is not a number of
    # seconds or a date (or a date past what a clock holds) is as if there were none.
    from sensor.deliver.http import parse_retry_after
    assert parse_retry_after(value) is None


def test_a_receiver_that_echoes_the_token_in_its_error_never_gets_it_into_the_result():
    # Secrets never reach a log: the error and the detail of a result are redacted, also when
    # the receiver's own error text repeats the token it was sent.
    token = "hec-s3cr3t-t0ken"

    def answer(conn):
        body = b'{"text": "Invalid token hec-s3cr3t-t0ken", "code": 4}'
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    url, stop = _answering(answer)
    out = build_output({"format": "splunk_hec", "url": url, "allow_http": True, "gzip": False,
                        "token": token})
    try:
        from sensor.testing.receiver import sample_alert
        res = out.send_batch([sample_alert(1)])
        assert res.outcome == PARK and res.status == 403
        assert "Invalid token ***" in res.error
        assert token not in res.error and token not in res.detail
    finally:
        out.close()
        stop()



def _counting(handle):
    """A receiver on a real socket that handles one connection at a time with ``handle(conn)``
    and counts them. ``finish()`` returns the count once every connection made before it was
    handled (a last connection of its own marks the end: connections are accepted in order)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    count = [0]

    def serve():
        while True:
            conn, _ = srv.accept()
            with conn:
                first = conn.recv(65536)
                if first == b"END":
                    return
                count[0] += 1
                try:
                    handle(conn, first)
                except OSError:
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def finish():
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"END")
        th.join(60)                              # only guards a hang
        srv.close()
        return count[0]
    return port, finish


def test_a_failed_tls_handshake_is_one_connection_urllib3_never_retries_on_its_own():
    # One attempt per call (docs/delivery.md: the spool and the forwarder own retrying): a
    # receiver that answers the TLS hello with plain text costs one connection, then parks.
    def handle(conn, first):
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    port, finish = _counting(handle)
    t = HttpTransport(f"https://127.0.0.1:{port}/in", gzip=False)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == PARK
    finally:
        t.close()
    assert finish() == 1


def test_a_receiver_that_drops_every_connection_gets_exactly_one_retry_then_a_retry_outcome():
    # The one immediate retry on a fresh connection (a stale keep-alive connection), no more:
    # then the request fails as a retry for the forwarder's back-off, never as a crash.
    def handle(conn, first):
        pass                                     # read the request, close without a word
    port, finish = _counting(handle)
    t = HttpTransport(f"http://127.0.0.1:{port}/in", allow_http=True, gzip=False)
    try:
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY
    finally:
        t.close()
    assert finish() == 2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_it_parks(status):
    # docs/delivery.md: 3xx parks (a configuration to fix); the alerts are not posted elsewhere.
    from sensor.testing.receiver import sample_alert
    seen = []

    def answer(conn):
        seen.append(status)
        conn.sendall(b"HTTP/1.1 %d Moved\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n" % status)
    url, stop = _answering(answer)
    out = build_output({"url": url, "allow_http": True, "gzip": False, "token": "t0ken"})
    try:
        res = out.send_batch([sample_alert(1)])
        assert res.outcome == PARK and res.status == status
        assert seen == [status]
    finally:
        out.close()
        stop()


def test_a_pool_smaller_than_the_requests_in_flight_does_not_hold_one_behind_the_other():
    # pool_maxsize is how many keep-alive connections are kept open (docs/delivery.md), not a
    # cap on requests in flight: with one kept open, two requests still go at once.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    arrived = []
    together = []                                # per request: had the other one arrived?
    both = threading.Event()

    def serve_one(conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 2:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            arrived.append(1)
            if len(arrived) >= 2:
                both.set()
            together.append(both.wait(30))       # 30 s only guards a hang
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    t = HttpTransport(f"http://127.0.0.1:{port}/in", allow_http=True, gzip=False, pool_maxsize=1)
    got = []
    senders = [threading.Thread(target=lambda: got.append(_post(t).status)) for _ in range(2)]
    try:
        for th in senders:
            th.start()
        for th in senders:
            th.join(60)                          # only guards a hang
        assert got == [200, 200]
        assert together == [True, True]          # the two were at the receiver at the same time
    finally:
        t.close()
        try:
            srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        srv.close()


# -- what the mutation run of http.py (2026-11-30, all 290 mutants) found unchecked --------------

def test_the_receivers_answer_is_kept_to_300_characters_in_the_result():
    # docs/hostile-inputs.md: MAX_DETAIL = 300 characters of what the receiver said are kept,
    # so a receiver's text cannot grow the status, the log or the spool without bound.
    from sensor.testing.receiver import sample_alert
    text = bytes(range(48, 58)) * 500                    # 5,000 characters, no two cuts alike

    def answer(conn):
        conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
    url, stop = _answering(answer)
    out = build_output({"url": url, "allow_http": True, "gzip": False})
    try:
        res = out.send_batch([sample_alert(1)])
        assert res.outcome == RETRY and res.status == 503
        assert res.detail == text[:300].decode()
    finally:
        out.close()
        stop()


def test_an_encode_rejection_reason_is_kept_to_300_characters():
    from sensor.deliver.http import HttpOutput
    from sensor.testing.receiver import sample_alert

    class Wordy(HttpOutput):
        def render(self, alert):
            raise ValueError("".join(str(i % 10) for i in range(1000)))

    out = Wordy(URL)
    try:
        good, bad = out.encode_each([sample_alert(1)])
        reason = bad[sample_alert(1)["id"]]
        assert good == [] and len(reason) == 300
        assert reason == ("cannot encode: ValueError: " + "".join(str(i % 10) for i in range(1000)))[:300]
    finally:
        out.close()


def test_an_option_error_of_the_tls_or_secret_layer_keeps_its_own_words():
    # A refused option names its key once (docs/delivery.md: a bad output option is refused at
    # start with the key that is wrong), not wrapped in a second, vaguer message.
    for opts, words in (({"ca_file": "/nonexistent/ca.pem"}, "ca_file: /nonexistent/ca.pem does not exist"),
                        ({"token_file": "/nonexistent/t"}, "token_file: cannot read /nonexistent/t")):
        with pytest.raises(ConfigError) as err:
            _build(**opts)
        assert str(err.value).startswith(words), err.value


@pytest.mark.parametrize("value", ["many", [2], None.__class__])
def test_an_option_of_the_wrong_type_is_a_configuration_error_not_a_crash(value):
    # build_output is also handed options by code, not only by the checked config file: a value
    # that is not a number is refused as a configuration error naming the key, never raised as a
    # TypeError.
    with pytest.raises(ConfigError, match="^pool_maxsize: must be an integer"):
        _build(pool_maxsize=value)


def test_an_option_the_builder_cannot_use_is_a_configuration_error_not_a_crash():
    # right type, yet unusable (a NUL in a file name): still a configuration error, naming its key
    with pytest.raises(ConfigError, match="^token_file: cannot read"):
        _build(token_file="/tmp/a\0b")


def test_abort_after_the_receiver_reset_a_pooled_connection_raises_nothing():
    # docs/threads.md: abort() (a stop) shuts down every connection of the pool; one the
    # receiver already reset cannot be shut down (ENOTCONN), and the stop goes on regardless:
    # no exception, and no request is sent after it.
    import struct
    srv = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        conn, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        held.append(conn)                               # kept open: the client pools it
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    t = HttpTransport(f"http://127.0.0.1:{srv.getsockname()[1]}/in", allow_http=True, gzip=False)
    try:
        assert _post(t).status == 200                   # its connection goes back to the pool
        th.join(30)
        conns = [c for c in t._aborter._live if getattr(c, "sock", None) is not None]
        assert len(conns) == 1 and held
        held[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        held[0].close()                                 # an abortive close: a reset
        deadline = time.monotonic() + 30                # (only guards a hang)
        while not conns[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            assert time.monotonic() < deadline, "the reset never arrived"
            time.sleep(0.01)
        t.abort()
        with pytest.raises(TransportFailure) as err:
            _post(t)
        assert err.value.outcome == RETRY and "stopping" in err.value.message
    finally:
        t.close()
        srv.close()


def test_a_cause_given_as_the_first_of_several_arguments_is_found():
    # A wrapper that passes its cause first and its own words after it (Error(cause, "while
    # ...")) is classified by the cause like a wrapper with the cause alone.
    wrapped = u3.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed"),
                          "while connecting to the receiver")
    outcome, msg = classify_exception(wrapped)
    assert outcome == PARK and msg.startswith("TLS verification failed"), msg
    outcome, msg = classify_exception(OSError(ConnectionResetError(), "while sending"))
    assert outcome == RETRY


def test_a_plain_http_url_without_a_port_goes_to_port_80():
    # RFC 9110 4.2.1: http's default port is 80 (https's 443, checked above); plain http only
    # with allow_http.
    t = HttpTransport("http://127.0.0.1/in", allow_http=True)
    try:
        assert t.pool.port == 80 and t.pool.scheme == "http"
    finally:
        t.close()
