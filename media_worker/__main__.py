"""Entry point of a media worker process (see media_worker/__init__.py)."""

from __future__ import annotations

import argparse
import sys

from .server import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m media_worker",
        description="A meeting-sfu media worker. Started by `meeting-sfu serve`, not by hand: it "
        "talks to the control plane over the inherited socket --fd.",
    )
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the control plane")
    parser.add_argument("--index", type=int, required=True, help="worker number (0..N-1)")
    args = parser.parse_args(argv)
    return run(args.fd, args.index)


if __name__ == "__main__":
    sys.exit(main())
