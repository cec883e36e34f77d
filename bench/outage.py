"""A short receiver outage with two workers: how long delivery stalls after the receiver is back.

With the defaults (``backoff_base_s = 1``, ``backoff_cap_s = 300``, ``concurrency = 2``) the
receiver is down for ``--outage`` seconds while 40 alerts wait in the spool; the run prints the
failures the back-off counted (rounds) against the failed requests, and the time from the
receiver coming back to the spool being drained. The back-off has full jitter, so run several
trials. Local HTTPS receiver on 127.0.0.1 only.

    python bench/outage.py                 # 6 trials of a 3 s outage
    python bench/outage.py --trials 10 --outage 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("SENSOR_TREE") or str(Path(__file__).resolve().parents[1]))

from sensor.deliver.forwarder import DeliveryConfig, Forwarder  # noqa: E402
from sensor.deliver.outputs import build_output  # noqa: E402
from sensor.deliver.spool import Spool  # noqa: E402
from sensor.testing.receiver import Receiver, sample_alert  # noqa: E402


def trial(outage: float) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as d, Receiver() as rec:
        sp = Spool(os.path.join(d, "spool.sqlite"))
        out = build_output({"url": rec.url, "ca_file": str(rec.ca_file), "connect_timeout": 1})
        fwd = Forwarder(sp, out, DeliveryConfig(batch_size=5, linger=0.0, concurrency=2,
                                                backoff_base=1.0, backoff_cap=300.0))
        fwd.start()
        try:
            rec.down()
            sp.put_many([sample_alert(i) for i in range(40)])
            time.sleep(outage)
            rec.up()
            back = time.monotonic()
            st = fwd.stats()
            if not fwd.wait_drained(900):
                raise SystemExit("not drained in 900 s")
            stall = time.monotonic() - back
        finally:
            fwd.stop()
            sp.close()
        counted = st.get("consecutive_failures", st["failed_attempts"])
        return counted, st["failed_attempts"], stall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--outage", type=float, default=3.0)
    args = ap.parse_args()
    import logging
    logging.disable(logging.WARNING)
    stalls = []
    for i in range(args.trials):
        counted, failed, stall = trial(args.outage)
        stalls.append(stall)
        print(f"trial {i}: back-off failures {counted} (failed requests {failed}); "
              f"stall after the receiver was back {stall:.1f} s", flush=True)
    print(f"{args.outage:g} s outage, {args.trials} trials: stall mean {statistics.mean(stalls):.1f} s, "
          f"max {max(stalls):.1f} s")


if __name__ == "__main__":
    main()
