"""Hostile clients against the running daemon: each gets a 4xx or a closed connection, and the
daemon keeps serving everyone else (after each attack a legitimate post gets 200).

The daemon runs with authentication (a header secret, basic credentials and a secret path).
Attacks that need a valid login (bad payloads) use it: a leaked secret must not be enough to
hurt the daemon either. The slow-client timeouts are shortened to 1 s here through
tests/reliability/_boot.py; their production defaults are checked separately.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import io
import os
import resource
import statistics
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.cli import run as run_command
from forwarder.ingest import auth, handlers
from forwarder.settings import AuthConfig, BasicAuthConfig
from tests.daemon.harness import PostResults
from tests.reliability._support import (
    FaultyDaemon,
    fast_retry,
    incident_body,
    post_one,
    raise_fd_limit,
    session,
    wait_until,
)

pytestmark = pytest.mark.reliability

SECRET = "hostile-suite-secret-0123456789abcdef"
USER, PASSWORD = "console", "basic-password-for-tests-42"
PATH_SECRET = "path-secret-0123456789abcdefghij"
JSON = {"Content-Type": "application/json"}
AUTH = {"X-Canary-Token": SECRET, **JSON}
ATTACKER = "127.0.0.2"  # raw attacks come from here, so 127.0.0.1 stays a clean legit client
SLOW_SECS = 1.0  # header and body timeouts of the daemon under test
# Raw socket reads give up after this long (a daemon that never answers fails the test).
READ_SECS = 8.0


def hostile_config(workdir: Path) -> dict[str, Any]:
    return {
        "listen": {
            "auth": {
                "header": "X-Canary-Token",
                "secret": SECRET,
                "basic": {"username": USER, "password": PASSWORD},
                "secret_path": PATH_SECRET,
            }
        },
        "outputs": [
            {"name": "out", "type": "file", "path": str(workdir / "out.jsonl"), **fast_retry()}
        ],
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyDaemon]:
    """One daemon for the module, with 1 s header and body timeouts."""
    workdir = tmp_path_factory.mktemp("hostile")
    forwarder = FaultyDaemon(
        workdir,
        hostile_config(workdir),
        patches={
            "constants": {
                "forwarder.cli.run.HEADER_TIMEOUT_SECS": SLOW_SECS,
                "forwarder.ingest.handlers.BODY_TIMEOUT_SECS": SLOW_SECS,
            }
        },
        graceful_secs=2,
    )
    asyncio.run(forwarder.start())
    yield forwarder
    forwarder.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per post: a kept-alive one can be closed by the daemon's idle timeout
    # just as the next post goes out, which would test the client's pool, not the daemon.
    async with session(force_close=True) as opened:
        yield opened


async def assert_serving(daemon: FaultyDaemon, client: aiohttp.ClientSession) -> None:
    """A legitimate post from 127.0.0.1 is stored, and the daemon is still the same process."""
    assert daemon.alive(), daemon.stderr_text()[-2000:]
    results = PostResults()
    event_id = await post_one(client, daemon.webhook_url, results, headers=AUTH)
    assert event_id in results.stored, (results.other, results.unanswered)


async def raw_exchange(port: int, data: bytes, *, drip: float = 0.0) -> bytes:
    """Send `data` (a byte at a time every `drip` s if given); the answer until EOF or READ_SECS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
    try:
        if drip:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
                await asyncio.sleep(drip)  # the attack itself: a deliberately slow client
        else:
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), READ_SECS)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


def attacker_connections(port: int) -> int:
    """Established TCP connections from ATTACKER to `port`, as the kernel lists them.

    Counting the daemon's open files instead would also count its own keep-alive connections
    (the harness's readiness polls), which may close in the middle of the wait.
    """
    attacker = "".join(f"{int(part):02X}" for part in reversed(ATTACKER.split(".")))
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == port and remote.startswith(attacker) and state == "01":
            count += 1
    return count


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer; None for a closed connection."""
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


# Slow clients


async def test_slow_headers_are_cut_off_while_others_are_served(
    daemon: FaultyDaemon, client: aiohttp.ClientSession
) -> None:
    head = b"POST /canary HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: slowloris\r\n" * 200

    async def slowloris() -> tuple[bytes, float]:
        began = time.monotonic()
        answer = await raw_exchange(daemon.port, head, drip=0.02)
        return answer, time.monotonic() - began

    attacks = [asyncio.create_task(slowloris()) for _ in range(20)]
    # Served in the middle of the attack: once all 20 slow connections are established.
    await wait_until(
        lambda: attacker_connections(daemon.port) >= 20 or None, timeout=5, what="20 slow clients"
    )
    await assert_serving(daemon, client)
    for answer, took in await asyncio.gather(*attacks):
        # Cut off at the header timeout: closed (or a 4xx), long before the 80 s it would take.
        assert status_of(answer) is None or 400 <= (status_of(answer) or 0) < 500, answer
        assert took < SLOW_SECS + 3, took
    await assert_serving(daemon, client)


async def test_slow_body_gets_408(daemon: FaultyDaemon, client: aiohttp.ClientSession) -> None:
    _, body = incident_body()
    head = (
        f"POST /canary HTTP/1.1\r\nHost: x\r\nX-Canary-Token: {SECRET}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    began = time.monotonic()
    try:
        writer.write(head + body[:10])
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECS)
        # And closed with it: aiohttp went on reading the rest of the body for 10 s more.
        await asyncio.wait_for(reader.read(), READ_SECS)
    finally:
        writer.close()
    assert status_of(answer) == 408, answer
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - began < SLOW_SECS + 2
    await assert_serving(daemon, client)


def test_production_slow_client_timeouts_are_finite() -> None:
    """The defaults the patched daemon above stands in for: bounded, and not too eager."""
    assert 5 <= run_command.HEADER_TIMEOUT_SECS <= 60
    assert 5 <= handlers.BODY_TIMEOUT_SECS <= 120


# Bodies


async def test_oversized_bodies_get_413(
    daemon: FaultyDaemon, client: aiohttp.ClientSession
) -> None:
    big = b'{"Description": "' + b"x" * (2 << 20) + b'"}'
    async with client.post(daemon.webhook_url, data=io.BytesIO(big), headers=AUTH) as answer:
        assert answer.status == 413
    # Announced up front: refused from the headers alone, before the body is sent.
    head = (
        f"POST /canary HTTP/1.1\r\nHost: x\r\nX-Canary-Token: {SECRET}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
    ).encode()
    assert status_of(await raw_exchange(daemon.port, head)) == 413

    # Chunked, with no length announced: cut off once past the limit.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"Description": "'
        for _ in range(40):
            yield b"x" * 65536

    async with client.post(daemon.webhook_url, data=chunks(), headers=AUTH) as answer:
        assert answer.status == 413
    await assert_serving(daemon, client)


def gzip_bomb(expanded_mib: int) -> bytes:
    """A gzip stream of `expanded_mib` MiB of zeros, built in milliseconds: one fully flushed
    deflate block of 1 MiB repeated (each decodes on its own)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\0" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    header = gzip.compress(b"")[:10]
    return header + block * expanded_mib + compressor.flush()


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_compression_bomb_is_refused_without_inflating(
    daemon: FaultyDaemon, client: aiohttp.ClientSession
) -> None:
    bomb = gzip_bomb(1024)  # 1 GiB of zeros in about 1 MiB
    assert zlib.decompressobj(31).decompress(bomb[:100_000], 1 << 20) == b"\0" * (1 << 20)
    before = cpu_secs(daemon.pid)
    headers = {**AUTH, "Content-Encoding": "gzip"}
    async with client.post(daemon.webhook_url, data=io.BytesIO(bomb), headers=headers) as answer:
        assert answer.status == 415
        assert (await answer.json())["error"] == "content_encoding_not_supported"
    await assert_serving(daemon, client)
    # Inflating 1 GiB costs seconds of CPU; refusing it costs next to nothing.
    assert cpu_secs(daemon.pid) - before < 0.5


HOSTILE_BODIES: dict[str, bytes] = {
    "invalid UTF-8": b'{"Description": "\xff\xfe\xc3\x28"}',
    "overlong UTF-8": b'{"Description": "\xc0\xaf"}',
    "deeply nested arrays": b"[" * 100_000,
    "deeply nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nesting just past the limit": b'{"a":' + b"[" * 70 + b"]" * 70 + b"}",
    "raw NUL byte": b'{"Description": "a\x00b"}',
    "lone high surrogate": b'{"Description": "\\ud800"}',
    "lone low surrogate": b'{"Description": "\\udc00 x"}',
    "reversed surrogates": b'{"Description": "\\udc00\\ud800"}',
    "not an object": b'["CanaryIncident"]',
    "a bare string": b'"x"',
    "empty body": b"",
    "NaN": b'{"LogType": NaN}',
    "BOM": b'\xef\xbb\xbf{"Description": "x"}',
    "trailing garbage": b'{"Description": "x"} {"Description": "y"}',
    "truncated": b'{"Description": "x',
    "huge number": b'{"LogType": 1' + b"0" * 5000 + b"}",
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
async def test_hostile_payload_gets_400(
    daemon: FaultyDaemon, client: aiohttp.ClientSession, name: str
) -> None:
    async with client.post(daemon.webhook_url, data=HOSTILE_BODIES[name], headers=AUTH) as answer:
        text = await answer.text()
        assert answer.status == 400, (name, answer.status, text[:300])
        assert (await answer.json())["error"] == "invalid_payload"
    await assert_serving(daemon, client)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "",
    ],
)
async def test_wrong_content_type_gets_415(
    daemon: FaultyDaemon, client: aiohttp.ClientSession, content_type: str
) -> None:
    _, body = incident_body()
    headers = {"X-Canary-Token": SECRET, "Content-Type": content_type}
    async with client.post(daemon.webhook_url, data=body, headers=headers) as answer:
        assert answer.status == 415
    await assert_serving(daemon, client)


MALFORMED_HTTP: dict[str, bytes] = {
    "header line over 8 KiB": b"POST /canary HTTP/1.1\r\nHost: x\r\nX-A: "
    + b"a" * 20_000
    + b"\r\n\r\n",
    "thousands of headers": b"POST /canary HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(2000))
    + b"\r\n",
    "Content-Length and chunked (smuggling)": b"POST /canary HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"POST /canary HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    "negative Content-Length": b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"POST /canary HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
    "NUL in the request line": b"POST /can\x00ary HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown HTTP version": b"POST /canary HTTP/7.0\r\nHost: x\r\n\r\n",
    "bare LF line endings and obs-fold": b"POST /canary HTTP/1.1\nHost: x\n X-Folded: y\n\n",
    "path traversal": b"POST /canary/../../etc/passwd HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 0\r\n\r\n",
    "secret path guess": f"POST /canary/{'a' * 32} HTTP/1.1\r\nHost: x\r\n"
    "Content-Length: 0\r\n\r\n".encode(),
}


@pytest.mark.parametrize("name", list(MALFORMED_HTTP))
async def test_malformed_http_gets_4xx_or_closed(
    daemon: FaultyDaemon, client: aiohttp.ClientSession, name: str
) -> None:
    answer = await raw_exchange(daemon.port, MALFORMED_HTTP[name])
    status = status_of(answer)
    assert status is None or 400 <= status < 500, (name, answer[:300])
    await assert_serving(daemon, client)


# Many connections


@pytest.fixture
def low_fd_limit() -> Iterator[None]:
    """Children started in this block inherit a soft limit of 1024 open files, the common
    default (systemd's, most shells'); this process gets its own raised afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


CONNECTIONS = 2000


async def test_thousands_of_idle_connections_do_not_lock_out_a_legit_client(
    tmp_path: Path, low_fd_limit: None
) -> None:
    """2000 connections hold partial requests (production timeouts: they stay for the test);
    a legitimate post still gets 200 at once, even though the daemon started with a soft
    limit of 1024 open files (it raises its own)."""
    forwarder = FaultyDaemon(tmp_path / "daemon", hostile_config(tmp_path), graceful_secs=2)
    forwarder.spawn()  # inherits the 1024 limit
    try:
        await forwarder.wait_ready()
        assert open_files_limit(forwarder.pid) > CONNECTIONS + 100
        if raise_fd_limit(CONNECTIONS + 500) < CONNECTIONS + 500:
            pytest.fail("the hard limit on open files does not let this test open 2000 sockets")
        writers: list[asyncio.StreamWriter] = []
        try:
            for index in range(CONNECTIONS):
                # From as many addresses, each within listen.max_connections_per_client: from one,
                # all but the first 64 would be closed at accept (and the post below with them).
                source = f"127.3.{index // 250}.{index % 250 + 1}"
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", forwarder.port, local_addr=(source, 0)
                )
                writer.write(b"POST /canary HTTP/1.1\r\nHost: x\r\n")
                writers.append(writer)
            for writer in writers[-10:]:
                await writer.drain()

            def all_accepted() -> bool:
                return open_fds(forwarder.pid) >= CONNECTIONS

            await wait_until(all_accepted, timeout=10, what="the daemon to accept them all")
            async with session(timeout=5) as client:
                began = time.monotonic()
                await assert_serving(forwarder, client)
                assert time.monotonic() - began < 2.0
        finally:
            for writer in writers:
                writer.close()
        assert not [line for line in forwarder.logs() if line.get("logger") == "asyncio"]
    finally:
        forwarder.close()


# Authentication


def from_address(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from `address` (any 127.0.0.0/8 address is loopback)."""
    return session(local_addr=(address, 0))


async def test_brute_force_is_rate_limited_per_address(
    daemon: FaultyDaemon, client: aiohttp.ClientSession
) -> None:
    _, body = incident_body()
    statuses = []
    async with from_address("127.0.0.66") as attacker:
        for guess in range(30):
            wrong = {"X-Canary-Token": f"{SECRET[:-4]}{guess:04d}", **JSON}
            async with attacker.post(daemon.webhook_url, data=body, headers=wrong) as answer:
                statuses.append(answer.status)
                if answer.status == 429:
                    assert int(answer.headers["Retry-After"]) >= 1
        # Basic and the secret path are guessed through the same limiter.
        basic = base64.b64encode(f"{USER}:wrong".encode()).decode()
        headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}
        async with attacker.post(daemon.webhook_url, data=body, headers=headers) as answer:
            assert answer.status == 429
        async with attacker.post(f"{daemon.webhook_url}/{'x' * 32}", data=body) as answer:
            assert answer.status == 429
    assert statuses[:10] == [401] * 10, statuses
    assert set(statuses[10:]) == {429}, statuses
    # Everyone else is still served, by every configured method.
    await assert_serving(daemon, client)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    ok = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}
    for url, headers in ((daemon.webhook_url, ok), (f"{daemon.webhook_url}/{PATH_SECRET}", {})):
        _, body = incident_body()
        headers = {"Content-Type": "application/json", **headers}
        async with client.post(url, data=body, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
    assert not [line for line in daemon.logs() if SECRET in str(line)]


class _Request:
    """Just enough of an aiohttp request for `is_authenticated`."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_secrets_are_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what forwarder.ingest.auth calls
    config = AuthConfig(
        header="X-Canary-Token",
        secret=SECRET,  # type: ignore[arg-type]
        basic=BasicAuthConfig(username=USER, password=PASSWORD),  # type: ignore[arg-type]
        secret_path=PATH_SECRET,  # type: ignore[arg-type]
    )
    basic = base64.b64encode(f"{USER}:{PASSWORD}x".encode()).decode()
    request = _Request({"X-Canary-Token": SECRET[:-1], "Authorization": f"Basic {basic}"})
    assert not auth.is_authenticated(request, config, PATH_SECRET[:-1])  # type: ignore[arg-type]
    compared = {b for _, b in calls}
    assert compared == {SECRET.encode(), USER.encode(), PASSWORD.encode(), PATH_SECRET.encode()}
    # The password is compared even when the user name is wrong (no early exit to time).
    calls.clear()
    basic = base64.b64encode(b"nobody:x").decode()
    auth.is_authenticated(_Request({"Authorization": f"Basic {basic}"}), config, None)  # type: ignore[arg-type]
    assert {b for _, b in calls} == {USER.encode(), PASSWORD.encode()}


def test_answer_time_does_not_depend_on_the_matching_prefix() -> None:
    """A wrong secret that shares 0 or all-but-one leading characters with the real one takes
    the same time to refuse (medians of interleaved runs; a generous 1.5x margin). Measured on
    the check itself: over HTTP the noise is larger than any difference (see the bench)."""
    secret = "s" * 4096
    config = AuthConfig(header="X-Canary-Token", secret=secret)  # type: ignore[arg-type]
    far = _Request({"X-Canary-Token": "t" + "s" * 4095})
    near = _Request({"X-Canary-Token": "s" * 4095 + "t"})

    def timed(request: _Request, rounds: int = 200) -> float:
        began = time.perf_counter_ns()
        for _ in range(rounds):
            auth.is_authenticated(request, config, None)  # type: ignore[arg-type]
        return (time.perf_counter_ns() - began) / rounds

    samples: dict[str, list[float]] = {"far": [], "near": []}
    for _ in range(30):
        samples["far"].append(timed(far))
        samples["near"].append(timed(near))
    median = {name: statistics.median(values) for name, values in samples.items()}
    ratio = median["near"] / median["far"]
    print(f"\nconstant-time check: near/far = {ratio:.3f}; {median}")
    assert 1 / 1.5 < ratio < 1.5, median
