"""``etw-sensor output test``: send one test alert through an output and print the answer.

The output is the ``[output]`` table of the config file (``-c``); command-line options map one
to one onto the option keys of :func:`sensor.deliver.outputs.build_output` (documented in
docs/delivery.md) and override the file's values.
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import uuid
from typing import Any

from .. import __version__
from ..detect.alerts import utcnow
from ..deliver.protocol import OK
from ..deliver.tls import ConfigError
from ..deliver.outputs import build_output

__all__ = ["register", "build_output", "options_from_args", "test_alert", "run_test"]


def test_alert() -> dict:
    """A harmless alert shaped like build_alert()'s, marked as a test."""
    now = utcnow()
    host = socket.gethostname()
    return {
        "id": str(uuid.uuid4()), "timestamp": now, "event_time": now,
        "rule": {"id": "6b1b6f8e-0000-4000-8000-000000000000", "title": "etw-sensor output test",
                 "level": "informational", "description": "Test alert sent by `etw-sensor output test`; no action needed.",
                 "tags": ["test"], "mitre": [], "author": "etw-sensor", "references": [],
                 "falsepositives": [], "source": "builtin", "origin": "output-test"},
        "HOSTNAME": host, "MESSAGE": "etw-sensor output test", "COMMANDLINE": None, "FILE_NAME": None,
        "PROCESSNAME": None, "USERNAME": None, "PARENTPROCESSNAME": None,
        "event": {"Computer": host, "UtcTime": now.replace("T", " ").rstrip("Z")},
        "sensor": {"host": host, "version": __version__},
    }


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The build_output() option dict for the parsed command line."""
    keys = ("format", "url", "path", "token", "token_env", "token_file", "hmac_secret_env",
            "hmac_secret_file", "ca_file", "pin_sha256", "client_cert", "client_key", "index",
            "sourcetype", "connect_timeout", "read_timeout")
    opts: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k, None) not in (None, "")}
    if args.insecure_skip_verify:
        opts["insecure_skip_verify"] = True
    if args.allow_http:
        opts["allow_http"] = True
    if args.no_gzip:
        opts["gzip"] = False
    return opts


def run_test(options: dict[str, Any], out: Any = None, as_json: bool = False) -> int:
    """Build the output, run its health check (if any), send one test alert; print what came back."""
    out = out or sys.stdout
    try:
        output = build_output(options)
    except ConfigError as exc:
        print(f"etw-sensor output test: configuration error: {exc}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"format": output.name, "url": getattr(output, "url", None)}
    try:
        check = getattr(output, "check", None)
        health = check() if check else None
        if health is not None:
            report["health"] = {"outcome": health.outcome, "status": health.status,
                                "answer": health.detail, "error": health.error}
        alert = test_alert()
        result = output.send_batch([alert])
    finally:
        output.close()
    report.update({"alert_id": alert["id"], "outcome": result.outcome, "status": result.status,
                   "answer": result.detail, "error": result.error,
                   "retry_after": result.retry_after, "rejected": result.rejected or None})
    ok = result.outcome == OK and alert["id"] in result.delivered
    report["delivered"] = ok
    if as_json:
        print(json.dumps(report), file=out)
    else:
        if "health" in report:
            h = report["health"]
            print(f"health check: {h['outcome']} (HTTP {h['status']}) {h['answer'] or h['error'] or ''}".rstrip(), file=out)
        print(f"output: {report['format']} {report['url'] or ''}".rstrip(), file=out)
        print(f"test alert {alert['id']}: {'DELIVERED' if ok else 'NOT delivered'} "
              f"({result.outcome}, HTTP {result.status if result.status is not None else '-'})", file=out)
        if result.detail:
            print(f"answer: {result.detail}", file=out)
        if result.error:
            print(f"error: {result.error}", file=out)
    return 0 if ok else 1


def _cmd_test(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {}
    if args.config:
        from ..daemon.config import ConfigError as FileConfigError, load
        try:
            options = load(args.config).output.options()
        except FileConfigError as exc:
            print(f"etw-sensor output test: config error: {exc}", file=sys.stderr)
            return 2
    options.update(options_from_args(args))   # --format etc. override the file
    options.setdefault("format", "ecs")
    return run_test(options, as_json=args.json)


def register(subparsers: Any) -> None:
    """Add the ``output`` command."""
    p = subparsers.add_parser("output", help="alert outputs: send a test alert",
                              description="Work with the alert output.")
    sub = p.add_subparsers(dest="output_command", metavar="ACTION")
    t = sub.add_parser("test", help="send one test alert and print the receiver's answer",
                       description="Send one test alert through the output and print the answer. "
                                   "Exit 0 when the receiver confirmed it, 1 when not, 2 on a configuration error.")
    t.add_argument("--format", default=None,
                   help="ecs (NDJSON, default), splunk_hec, elasticsearch, webhook, jsonl")
    t.add_argument("--url", help="https://host:port/path of the receiver")
    t.add_argument("--path", help="file for --format jsonl")
    tok = t.add_mutually_exclusive_group()
    tok.add_argument("--token", help="token (visible in the process list: prefer --token-env/--token-file)")
    tok.add_argument("--token-env", help="environment variable holding the token")
    tok.add_argument("--token-file", help="file holding the token")
    hm = t.add_mutually_exclusive_group()
    hm.add_argument("--hmac-secret-env", help="webhook: environment variable holding the HMAC secret")
    hm.add_argument("--hmac-secret-file", help="webhook: file holding the HMAC secret")
    t.add_argument("--ca-file", help="PEM CA bundle to trust instead of the OS store")
    t.add_argument("--pin-sha256", help="SHA-256 (hex) of the receiver's leaf certificate, checked in addition")
    t.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    t.add_argument("--client-key", help="PEM key of the client certificate")
    t.add_argument("--insecure-skip-verify", action="store_true", help="do not verify the certificate (unsafe)")
    t.add_argument("--allow-http", action="store_true", help="allow a plain http:// url (unsafe)")
    t.add_argument("--index", help="Elasticsearch data stream / Splunk index")
    t.add_argument("--sourcetype", help="Splunk sourcetype")
    t.add_argument("--no-gzip", action="store_true", help="send the body uncompressed")
    t.add_argument("--connect-timeout", type=float)
    t.add_argument("--read-timeout", type=float)
    t.add_argument("--json", action="store_true", help="print the answer as JSON")
    t.add_argument("-c", "--config", metavar="FILE",
                   help="use the [output] of this config file (options given here override it)")
    t.set_defaults(func=_cmd_test)

    def _usage(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=_usage)
