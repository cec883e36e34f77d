"""``python -m sensor.demo``: the quick-start demo on the bundled recording."""
from __future__ import annotations

import sys
from importlib import resources

from .cli import main as cli_main


def demo_dir():
    return resources.files("sensor").joinpath("data", "demo")


def main() -> int:
    recording = str(demo_dir().joinpath("recording.jsonl.gz"))
    print(f"Scanning the bundled recording {recording} with the built-in rule ...", file=sys.stderr)
    return cli_main(["scan", recording])


if __name__ == "__main__":
    raise SystemExit(main())
