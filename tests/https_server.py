"""A real HTTPS server on 127.0.0.1 for tests whose handler scripts the answers (the update URL's
pack server, say): TLS with a test certificate, served from a daemon thread."""
from __future__ import annotations

import http.server
import ssl
import threading


def serve_https(handler: type, cert) -> http.server.ThreadingHTTPServer:
    """Serve ``handler`` over TLS with ``cert`` (a trustme leaf certificate) on a free port;
    the caller stops it with :func:`stop_https`."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return httpd


def stop_https(httpd: http.server.ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()
