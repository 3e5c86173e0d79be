"""`send-test` as an operator meets it: odd answers, hung servers, mistyped arguments and
credentials, which it must never print."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.cli.test_commands import run_cli


@contextlib.contextmanager
def raw_server(answer: bytes, *, trickle: bool = False) -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server on 127.0.0.1 that reads each request's head and writes `answer` (with
    `trickle`, one byte of it every 0.1 s): (its base URL, the request heads so far)."""
    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                heads.append(head)
                # Read the body too: closing with unread data would reset the connection.
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")[1:]
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                with contextlib.suppress(OSError):
                    while len(body) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        body += chunk
                with contextlib.suppress(OSError):
                    if not trickle:
                        conn.sendall(answer)
                        continue
                    for byte in answer:
                        if stop.is_set():
                            break
                        conn.sendall(bytes([byte]))
                        time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"not http at all\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", id="truncated"),
    ],
)
def test_send_test_reports_a_malformed_answer_without_a_traceback(
    capsys: pytest.CaptureFixture[str], answer: bytes
) -> None:
    with raw_server(answer) as (url, _):
        code, out, err = run_cli(capsys, "send-test", "--url", f"{url}/canary", "--timeout", "5")
    assert code == 1
    assert out == ""
    assert err.startswith(f"no valid HTTP answer from {url}:")


def test_send_test_prints_a_non_json_non_utf8_answer(capsys: pytest.CaptureFixture[str]) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 8\r\n\r\n<b>\xff</b>"
    with raw_server(answer) as (url, _):
        code, out, err = run_cli(capsys, "send-test", "--url", f"{url}/canary")
    assert (code, out, err) == (0, "200 <b>\ufffd</b>\n", "")


def test_send_test_prints_a_5xx_answer_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfull"
    with raw_server(answer) as (url, _):
        code, out, err = run_cli(capsys, "send-test", "--url", f"{url}/canary")
    assert (code, out, err) == (1, "503 full\n", "")


def test_send_test_gives_up_on_a_trickling_answer_at_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Each byte comes well within the timeout, so only a deadline for the whole exchange ends it.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"x" * 500
    with raw_server(answer, trickle=True) as (url, _):
        started = time.monotonic()
        code, out, err = run_cli(capsys, "send-test", "--url", f"{url}/canary", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 3
    assert out == ""
    assert err.strip() == f"no answer from {url} within 1 s"


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:8080/canary", "ftp://127.0.0.1/canary", "http://[::1/canary", "http://h:x/c"],
)
def test_send_test_refuses_a_url_it_cannot_post_to_as_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, out, err = run_cli(capsys, "send-test", "--url", url)
    assert code == 2
    assert out == ""
    assert "argument --url: expected http://HOST[:PORT]/PATH or https://" in err
    assert "Traceback" not in err


def test_send_test_never_prints_a_malformed_header_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "send-test", "--header", "X-Canary-Token=s3cr3t-value")
    assert code == 2
    assert "s3cr3t" not in out + err
    assert "argument --header: expected NAME:VALUE" in err


def test_send_test_sends_url_credentials_as_basic_auth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    with raw_server(answer) as (url, heads):
        host = url.removeprefix("http://")
        code, out, _ = run_cli(
            capsys, "send-test", "--url", f"http://canary:p%40ss@{host}/canary/s3cr3t-path"
        )
    assert (code, out) == (0, "200 ok\n")
    [head] = heads
    assert head.startswith(b"POST /canary/s3cr3t-path HTTP/1.1\r\n")
    token = base64.b64encode(b"canary:p@ss").decode()
    assert f"\r\nAuthorization: Basic {token}\r\n".encode() in head
    assert f"\r\nHost: {host}\r\n".encode() in head


def test_send_test_never_prints_url_credentials_or_secret_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        capsys, "send-test", "--url", "http://canary:hunter2@127.0.0.1:9/canary/s3cr3t-path"
    )
    assert code == 1
    assert err.startswith("cannot reach http://127.0.0.1:9: ")
    assert "hunter2" not in out + err and "s3cr3t" not in out + err


def test_send_test_refuses_a_header_with_a_control_character_without_printing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "send-test", "--header", "X-Canary-Token: s3cr3t\r\nX: y")
    assert code == 2
    assert "s3cr3t" not in out + err
    assert "Traceback" not in err


def test_send_test_prints_a_redirect_instead_of_following_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Followed, the POST would become a GET without the event, and a 200 from elsewhere would
    # read as the daemon's.
    answer = (
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nmoved"
    )
    with raw_server(answer) as (url, heads):
        code, out, err = run_cli(capsys, "send-test", "--url", f"{url}/canary")
    assert (code, out, err) == (1, "302 moved\n", "")
    assert len(heads) == 1 and heads[0].startswith(b"POST /canary ")


def test_send_test_ignores_proxy_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    with raw_server(answer) as (url, heads):
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")
        # urlopen's shared opener reads the variables once, when first built.
        monkeypatch.setattr(urllib.request, "_opener", None)
        code, out, _ = run_cli(capsys, "send-test", "--url", f"{url}/canary")
    assert (code, out) == (0, "200 ok\n")
    assert heads[0].startswith(b"POST /canary ")
