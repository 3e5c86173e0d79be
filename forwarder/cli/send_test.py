"""`send-test`: post the console's integration test event (or a given payload) to a running
daemon and print the answer, as the Canary console does when a webhook is saved.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

__all__ = ["configure", "main"]


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {value!r}")
    return name.strip(), content.strip()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8080/canary")
    parser.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra header, e.g. the shared secret (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECS")
    parser.add_argument(
        "payload", nargs="?", type=Path, help="JSON file to post (default: the test event)"
    )


def main(args: argparse.Namespace) -> int:
    if args.payload is None:
        body = resources.files("forwarder").joinpath("data/test_event.json").read_bytes()
    else:
        try:
            body = args.payload.read_bytes()
        except OSError as exc:
            print(f"cannot read {args.payload}: {exc}", file=sys.stderr)
            return 1
    request = urllib.request.Request(  # noqa: S310 - the operator chooses the URL
        args.url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    for name, value in args.header:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            print(response.status, response.read().decode("utf-8", "replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode("utf-8", "replace"))
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
