"""Stop time: from SIGTERM to the end of the `etw-sensor run` process, in situations that used to
hold it.

Each scenario starts the real sensor (`python -m sensor run -c CONFIG`, a replay source paced in
real time so it stays up like a live one, the local HTTPS receiver as the SIEM), waits until it
runs, brings the situation about, sends SIGTERM and times the exit. The drain budget
(`sensor.drain_timeout_s`) is 1 s in every scenario, so the numbers read as "drain budget +
what the stop itself costs":

- `idle`: nothing in flight (the baseline of the same run; the other rows are printed as a
  ratio of it);
- `hung`: the receiver took a request and never answers (its read timeout is 30 s);
- `reload`: a SIGHUP started a reload of the SigmaHQ process-creation rules (seconds of load
  and compile) just before the SIGTERM;
- `full` (only with `--full-dir`): the data folder is on a small file system that is filled up
  before the SIGTERM, and the receiver does not answer. Give it a folder on a file system of a
  few MiB you may fill (e.g. a tmpfs: `mount -t tmpfs -o size=1m tmpfs /mnt/small`).

    python bench/stop_time.py                    # idle, hung, reload; 2 rounds
    python bench/stop_time.py --rounds 3 --full-dir /mnt/small
    PYTHONPATH=/some/other/checkout python bench/stop_time.py   # the same for another tree
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

from sensor.testing.receiver import Receiver  # noqa: E402

SIGMA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sigma-rules" / "rules" / \
    "windows" / "process_creation"
MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe"}


def _recording(d: Path) -> Path:
    # starts an hour apart in event time: replayed at speed 1 the source stays up like a live one
    p = d / "rec.jsonl"
    p.write_text("".join(json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof",
                                         UtcTime=f"2026-01-01 {i:02d}:00:00.000")) + "\n" for i in range(3)))
    return p


def _fill(d: Path) -> None:
    """Fill the file system of ``d`` (the spool's reserve file included)."""
    for name, chunk in (("filler", 65536), ("filler2", 512)):
        with open(d / name, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
        for f in (d / "state").glob("*.reserve"):
            f.unlink()


def scenario(name: str, base: str | None = None) -> float:
    d = Path(tempfile.mkdtemp(prefix="stop-", dir=base))
    try:
        return _scenario(name, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _scenario(name: str, d: Path) -> float:
    rec = _recording(d)
    rules = f'[rules]\non_error = "skip"\npaths = ["{SIGMA.resolve()}"]\n' if name == "reload" else ""
    with Receiver(token="tok") as receiver:
        cfg = d / "sensor.toml"
        cfg.write_text(f'[sensor]\ndata_dir = "{d}/state"\ndrain_timeout_s = 1.0\nheartbeat_s = 60\n'
                       f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\nspeed = 1.0\n'
                       f'[output]\nformat = "ecs"\nurl = "{receiver.url}/ingest"\n'
                       f'ca_file = "{receiver.ca_file}"\ntoken = "tok"\n' + rules)
        os.chmod(cfg, 0o600)
        if name in ("hung", "full"):
            receiver.delay = 600.0
        proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)],
                                stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        status = d / "state" / "status.json"
        end = time.monotonic() + 300
        while not status.exists() and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(1.0)                         # the first alert is spooled and in flight
        if name == "reload":
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)                     # the reload thread is loading
        if name == "full":
            _fill(d)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--full-dir", help="a folder on a small file system this bench may fill")
    args = ap.parse_args()
    names = ["idle", "hung", "reload"] + (["full"] if args.full_dir else [])
    print(f"tree: {ROOT}\nload average: {os.getloadavg()[0]:.2f} (1 min), drain_timeout_s = 1.0")
    for r in range(args.rounds):
        times = {n: scenario(n, args.full_dir if n == "full" else None) for n in names}
        base = times["idle"]
        print(f"round {r + 1}: " + ", ".join(
            f"{n} {t:.2f} s" + ("" if n == "idle" else f" ({t / base:.1f}x idle)") for n, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
