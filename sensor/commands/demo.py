"""``etw-sensor demo`` (``make demo``): the sensor end to end on this machine.

On Linux: starts the local HTTPS receiver (real TLS, a throw-away CA), runs
``etw-sensor run`` in a separate process with the bundled demo config, which
replays a recording of real process starts through the live pipeline (enrich →
match → spool → HTTPS delivery), and prints the alerts the receiver got.

On Windows: runs ``etw-sensor run`` with the default configuration (live ETW).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from importlib import resources


def demo_dir():
    return resources.files("sensor").joinpath("data", "demo")


def run_demo(state_dir: str, out=sys.stdout, timeout: float = 120.0, health: list | None = None) -> list[dict]:
    """Run the demo; return the alert documents the receiver accepted (the sensor's health
    documents and health alerts go to ``health`` when a list is given)."""
    from ..testing.receiver import Receiver

    token = secrets.token_hex(16)
    with Receiver(token=token, directory=os.path.join(state_dir, "receiver"),
                  keep_documents=True) as rec:
        env = dict(os.environ, ETW_SENSOR_DEMO_URL=rec.url, ETW_SENSOR_DEMO_CA=str(rec.ca_file),
                   ETW_SENSOR_DEMO_TOKEN=token, ETW_SENSOR_DEMO_STATE=os.path.join(state_dir, "sensor"))
        config = str(demo_dir().joinpath("demo.toml"))
        print(f"receiver listening on {rec.url} (TLS, CA {rec.ca_file})", file=out)
        print(f"running: etw-sensor run -c {config}", file=out)
        out.flush()
        # The bundled config holds no secret (the token comes from the environment) and is
        # installed readable, like the rest of the package.
        proc = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", config,
                               "--allow-readable-config"], env=env, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"the sensor exited with status {proc.returncode}")
        docs = rec.documents()
    alerts = [d for d in docs if (d.get("event") or {}).get("dataset") == "sensor.alert"]
    if health is not None:
        health.extend(d for d in docs if (d.get("event") or {}).get("dataset") != "sensor.alert")
    return alerts


def _v(value) -> str:
    """A value for the demo's printout: ``-`` when the sensor does not know it."""
    return "-" if value is None or value == "" else str(value)


def show(docs: list[dict], out=sys.stdout, health: list[dict] | None = None) -> None:
    """Print the alerts the receiver got, one block per alert, and the health ledger."""
    print(f"\nthe receiver got {len(docs)} alert(s):", file=out)
    for d in docs:
        rule = d.get("rule", {})
        proc = d.get("process", {})
        parent = proc.get("parent", {})
        pe = proc.get("pe", {})
        print(f"- [{_v(d.get('event', {}).get('severity'))}] {_v(rule.get('name'))}  "
              f"(id {_v(d.get('event', {}).get('id'))})", file=out)
        print(f"    host {_v(d.get('host', {}).get('name'))}  user {_v(d.get('user', {}).get('name'))}", file=out)
        print(f"    process {_v(proc.get('executable'))}  OriginalFileName {_v(pe.get('original_file_name'))}",
              file=out)
        print(f"    command line {_v(proc.get('command_line'))}", file=out)
        print(f"    parent {_v(parent.get('executable'))}", file=out)
    metrics = [h for h in health or () if (h.get("event") or {}).get("kind") == "metric"]
    if metrics:
        seqs = sorted(h["event"].get("sequence") for h in metrics)
        boots = {(h.get("agent") or {}).get("ephemeral_id") for h in metrics}
        print(f"\nand {len(metrics)} health document(s) (the completeness ledger): boot "
              f"{', '.join(sorted(_v(b) for b in boots))}, sequence {seqs[0]}..{seqs[-1]}, "
              f"last: {_v(metrics[-1].get('message'))}", file=out)
    others = [h for h in health or () if (h.get("event") or {}).get("kind") == "alert"]
    for h in others:
        print(f"health alert: {_v((h.get('rule') or {}).get('name'))}: {_v(h.get('message'))}", file=out)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the sensor end to end on a bundled recording (make demo)",
                       description="Start a local HTTPS receiver, run `etw-sensor run` on the bundled "
                                   "recording and print the alerts the receiver got (Linux); run the "
                                   "sensor with the default configuration (Windows: live ETW).")
    p.set_defaults(func=main)


def main(args=None) -> int:
    if sys.platform == "win32":  # live ETW with the default configuration, as `etw-sensor run`
        import argparse

        from .run import main as run_main
        return run_main(argparse.Namespace(config=None, replay=[], speed=None,
                                           allow_readable_config=False))
    with tempfile.TemporaryDirectory(prefix="etw-sensor-demo-") as state:
        health: list[dict] = []
        docs = run_demo(state, health=health)
        show(docs, health=health)
        print("\n" + json.dumps(docs[0], indent=1) if docs else "", file=sys.stdout)
    return 0 if docs else 1
