"""`send-test`: post the console's integration test event (or a given payload) to a running
daemon and print the answer, as the Canary console does when a webhook is saved.

Credentials in the URL (`https://user:password@host/...`) are sent as HTTP basic auth, as the
console sends them. Neither they, the path (which may hold a `secret_path`) nor a `--header`
value are ever printed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path

__all__ = ["configure", "main"]

_DEFAULT_URL = "http://127.0.0.1:8080/canary"


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    # Never echo `value`: it is most likely the shared secret.
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected NAME:VALUE (the value is not shown)")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise argparse.ArgumentTypeError("a control character in NAME:VALUE (not shown)")
    return name.strip(), content.strip()


def _url(value: str) -> urllib.parse.SplitResult:
    # The message never echoes `value`: it may hold credentials or a secret path.
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("expected http://HOST[:PORT]/PATH or https://...")
    return parts


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=_url,
        default=_DEFAULT_URL,
        help=f"the daemon's webhook URL; USER:PASSWORD@ in it is sent as basic auth"
        f" (default: {_DEFAULT_URL})",
    )
    parser.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra header, e.g. the shared secret (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECS",
        help="give up when the whole exchange has not ended in SECS (default: 10)",
    )
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
    parts: urllib.parse.SplitResult = args.url  # argparse passes the default through _url
    hostport = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{hostport}"
    request = urllib.request.Request(  # noqa: S310 - the operator chooses the URL
        urllib.parse.urlunsplit(parts._replace(netloc=hostport)),
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    for name, value in args.header:
        request.add_header(name, value)

    # A server can answer a byte at a time, each within urlopen's per-read timeout: the whole
    # exchange runs in a daemon thread that is abandoned at the deadline.
    outcome: list[tuple[int, bytes] | Exception] = []

    def exchange() -> None:
        try:
            outcome.append(_exchange(request, args.timeout))
        except Exception as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=exchange, name="send-test", daemon=True)
    worker.start()
    worker.join(args.timeout)
    if not outcome:
        print(f"no answer from {shown} within {args.timeout:g} s", file=sys.stderr)
        return 1
    result = outcome[0]
    if isinstance(result, tuple):
        status, answer = result
        print(status, answer.decode("utf-8", "replace"))
        return 0 if 200 <= status < 300 else 1
    if isinstance(result, urllib.error.URLError):
        print(f"cannot reach {shown}: {result.reason}", file=sys.stderr)
    elif isinstance(result, http.client.HTTPException):
        print(f"no valid HTTP answer from {shown}: {result!r}", file=sys.stderr)
    elif isinstance(result, OSError):
        print(f"cannot reach {shown}: {result}", file=sys.stderr)
    elif isinstance(result, ValueError):  # its message may quote a header value
        print(f"cannot send to {shown}: the request is malformed", file=sys.stderr)
    else:
        raise result
    return 1


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a redirect instead of following it: urllib would repeat the POST as a GET without
    its body, and the redirect target's answer would read as the daemon's."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# No proxy from the environment either: the test is meant for the daemon named in --url.
_OPENER = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def _exchange(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    """The answer's status and body, whatever the status."""
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
