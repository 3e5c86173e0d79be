"""forwarder.outputs._http: the generic status table, Retry-After, URLs, gzip, and the client's
behaviour on the wire (timeouts, resets, refusals, benching, redirects, cookies, TLS)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError
from yarl import URL

from forwarder.mappers.base import Record
from forwarder.outputs._http import (
    EncodedBatch,
    EncodedRequest,
    HttpAnswer,
    HttpClient,
    HttpOutputConfig,
    _wire_failure,
    classify_status,
    encode_batch,
    gzip_body,
    parse_base_url,
    parse_retry_after,
    spread_result,
)
from forwarder.outputs._tls import TlsClientConfig, TlsFilesUnusable
from forwarder.outputs.base import (
    Delivered,
    HealthcheckError,
    Output,
    Partial,
    Reject,
    Retry,
    SendResult,
    TooLarge,
)
from forwarder.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchOutput
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from tests.daemon.harness import wait_until
from tests.peers._server import FakePeer, Reset
from tests.peers.fake_es import FakeEs
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec
from tests.peers.records import make_records

NOW = datetime(2026, 5, 29, 10, 0, 0, tzinfo=UTC)


def config(url: str | list[str], **options: Any) -> HttpOutputConfig:
    return HttpOutputConfig.model_validate(
        {"name": "h", "type": "test", "url": url, "request_timeout_secs": 5, **options}
    )


# Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Fri, 29 May 2026 10:00:30 GMT", 30.0),
        ("Fri, 29 May 2026 09:00:00 GMT", 0.0),  # in the past: no extra wait
        ("-3", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


# The generic status table


@pytest.mark.parametrize(
    ("status", "expected", "operator"),
    [
        (200, Delivered, False),
        (201, Delivered, False),
        (204, Delivered, False),
        (301, Retry, True),
        (302, Retry, True),
        (307, Retry, True),
        (400, Reject, False),
        (401, Retry, True),
        (403, Retry, True),
        (404, Reject, False),
        (408, Retry, False),
        (409, Reject, False),
        (413, TooLarge, False),
        (415, Reject, False),
        (422, Reject, False),
        (429, Retry, False),
        (500, Retry, False),
        (501, Reject, False),
        (502, Retry, False),
        (503, Retry, False),
        (504, Retry, False),
        (599, Retry, False),
    ],
)
def test_generic_status_table(status: int, expected: type, operator: bool) -> None:
    result = classify_status(status, {"Retry-After": "9"}, "the server's words", where="n:1")
    assert isinstance(result, expected)
    if isinstance(result, Retry | Reject | TooLarge):
        assert result.reason.startswith(f"n:1: HTTP {status}: the server's words")
    if isinstance(result, Retry):
        assert result.operator_action is operator
        assert result.retry_after == (None if operator else 9.0)


def test_a_redirect_names_where_it_points() -> None:
    result = classify_status(301, {"Location": "https://new:8088/"}, "")
    assert isinstance(result, Retry) and "redirected to https://new:8088/" in result.reason


# Mapping results back to the batch


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Delivered(), Partial({1: Reject("refused")})),
        (
            Retry("busy"),
            Partial({0: Retry("busy"), 1: Reject("refused"), 2: Retry("busy"), 3: Retry("busy")}),
        ),
        (Partial({1: Reject("bad")}), Partial({1: Reject("refused"), 2: Reject("bad")})),
        (TooLarge("big"), TooLarge("big")),
    ],
)
def test_spread_result_maps_request_positions_to_batch_positions(
    result: SendResult, expected: SendResult
) -> None:
    assert spread_result(result, [0, 2, 3], {1: Reject("refused")}) == expected


def encode_unless_marked(record: Record) -> bytes:
    if record.body == "refuse":
        raise ValueError("refused by the encoder")
    if record.body == "unencodable":
        raise TypeError("Type is not JSON serializable: set")
    return str(record.body).encode() + b"\n"


def batch_of(*bodies: str) -> list[Record]:
    events = [record.event for record in make_records(len(bodies))]
    return [Record(event=event, body=body) for event, body in zip(events, bodies, strict=True)]


def test_encode_batch_builds_one_body_and_remembers_positions() -> None:
    encoded = encode_batch(batch_of("a", "refuse", "b", "unencodable"), encode_unless_marked, 1024)
    assert isinstance(encoded, EncodedBatch)
    assert encoded.requests == [EncodedRequest(b"a\nb\n", [0, 2])]
    assert encoded.refused == {
        1: Reject("refused by the encoder"),
        3: Reject("record cannot be encoded as JSON: Type is not JSON serializable: set"),
    }


async def test_one_request_spreads_its_result_over_the_batch() -> None:
    encoded = encode_batch(batch_of("a", "refuse", "b"), encode_unless_marked, 1024)
    assert isinstance(encoded, EncodedBatch)

    async def busy_second(request: EncodedRequest) -> SendResult:
        return Partial({1: Retry("busy")})

    assert await encoded.send(busy_second) == Partial(
        {1: Reject("refused by the encoder"), 2: Retry("busy")}
    )


def test_encode_batch_answers_when_there_is_nothing_to_send() -> None:
    assert encode_batch([], encode_unless_marked, 1024) == Delivered()
    assert encode_batch(batch_of("refuse"), encode_unless_marked, 1024) == Partial(
        {0: Reject("refused by the encoder")}
    )
    alone = encode_batch(batch_of("refuse", "a" * 2000), encode_unless_marked, 1024)
    assert alone == Partial(
        {0: Reject("refused by the encoder"), 1: Reject("record of 2001 bytes > max_request_bytes")}
    )


def test_a_batch_over_the_request_bound_is_packed_into_several_requests_in_order() -> None:
    calls: list[Record] = []

    def counting(record: Record) -> bytes:
        calls.append(record)
        return encode_unless_marked(record)

    batch = batch_of("a" * 500, "b" * 500, "c" * 2000, "d" * 500, "e")
    encoded = encode_batch(batch, counting, 1024)
    assert isinstance(encoded, EncodedBatch)
    assert [r.sent for r in encoded.requests] == [[0, 1], [3, 4]]
    assert all(len(r.body) <= 1024 for r in encoded.requests)
    assert encoded.refused == {2: Reject("record of 2001 bytes > max_request_bytes")}
    assert len(calls) == len(batch)  # each record encoded once


def packed(count: int) -> EncodedBatch:
    encoded = encode_batch(batch_of(*["x" * 600] * count), encode_unless_marked, 1024)
    assert isinstance(encoded, EncodedBatch) and len(encoded.requests) == count
    return encoded


def answering(*results: SendResult) -> tuple[list[list[int]], Callable[..., Any]]:
    seen: list[list[int]] = []
    pending = list(results)

    async def send_one(request: EncodedRequest) -> SendResult:
        seen.append(request.sent)
        return pending.pop(0)

    return seen, send_one


async def test_requests_all_delivered_deliver_the_batch() -> None:
    seen, send_one = answering(Delivered(), Delivered(), Delivered())
    assert await packed(3).send(send_one) == Delivered()
    assert seen == [[0], [1], [2]]


async def test_a_retry_stops_the_requests_after_it() -> None:
    seen, send_one = answering(Delivered(), Retry("busy", retry_after=5))
    result = await packed(3).send(send_one)
    assert seen == [[0], [1]]
    assert result == Partial({1: Retry("busy", retry_after=5), 2: Retry("busy", retry_after=5)})


async def test_a_rejected_request_does_not_stop_the_next() -> None:
    seen, send_one = answering(Reject("HTTP 400"), Partial({0: Reject("bad doc")}), Delivered())
    result = await packed(3).send(send_one)
    assert seen == [[0], [1], [2]]
    assert result == Partial({0: Reject("HTTP 400"), 1: Reject("bad doc")})


async def test_too_large_first_lets_the_dispatcher_split_later_retries_the_rest() -> None:
    _, send_one = answering(TooLarge("HTTP 413"))
    assert await packed(2).send(send_one) == TooLarge("HTTP 413")
    seen, send_one = answering(Delivered(), TooLarge("HTTP 413"))
    result = await packed(3).send(send_one)
    again = Retry("HTTP 413; sent again in smaller requests")
    assert seen == [[0], [1]] and result == Partial({1: again, 2: again})


def test_spread_result_leaves_a_whole_batch_alone() -> None:
    assert spread_result(Retry("x"), [0, 1], {}) == Retry("x")


# URLs


def test_url_takes_one_or_several_and_normalises_them() -> None:
    assert config("https://a:8088/").url == ("https://a:8088",)
    assert config(["https://a/prefix/", "http://b:9200"]).url == (
        "https://a/prefix",
        "http://b:9200",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pw@a:8088", "credentials in their own options"),
        ("https://a:8088/?token=x", "no query"),
        ("ftp://a", "http:// or https://"),
        ("a:8088", "http:// or https://"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(url)
    with pytest.raises(ValueError, match=message):
        parse_base_url(url)


def test_timeouts_and_tls_defaults() -> None:
    defaults = config("https://a")
    assert defaults.tls.verify is True
    assert (defaults.connect_timeout_secs, defaults.gzip) == (10.0, True)


# gzip


@pytest.mark.parametrize("size", [10, 1_000_000])
async def test_gzip_is_deterministic_and_round_trips(size: int) -> None:
    body = (b"canary event " * size)[:size]
    packed = await gzip_body(body)
    assert gzip.decompress(packed) == body
    assert await gzip_body(body) == packed


# The client on the wire


class EchoPeer(FakePeer):
    """Answers /echo with what it got, /wait never, /redirect with a 302, /cookie with a cookie."""

    def __init__(self) -> None:
        super().__init__()
        self.never = asyncio.Event()
        self.app.router.add_post("/echo", self._echo)
        self.app.router.add_get("/wait", self._wait)
        self.app.router.add_get("/redirect", self._redirect)
        self.app.router.add_get("/cookie", self._cookie)
        self.app.router.add_get("/status/{status}", self._status)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        scripted = await self.suffer(self.faults, request)
        if scripted is not None:
            return scripted
        body, wire = await self.read_body(request)
        self.record(request, body, wire)
        return web.Response(body=body)

    async def _wait(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"", 0)
        await self.never.wait()
        return web.Response()

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/echo")

    async def _cookie(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"", 0)
        response = web.Response(text="ok")
        response.set_cookie("AWSALB", "node-7")
        return response

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"", 0)
        return web.Response(status=int(request.match_info["status"]))


@pytest.fixture
async def echo() -> AsyncIterator[EchoPeer]:
    peer = EchoPeer()
    async with peer:
        yield peer
        peer.never.set()


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    clients: list[HttpClient] = []

    def build(urls: list[str], **options: Any) -> HttpClient:
        client = HttpClient(config(urls, **options), [URL(u) for u in urls], {"X-Test": "1"})
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.aclose()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_request_carries_the_headers_and_a_gzipped_body(
    echo: EchoPeer, client_for: Any
) -> None:
    client: HttpClient = client_for([echo.url])
    answer = await client.request("POST", "/echo", body=b"x" * 1000, compress=True)
    assert isinstance(answer, HttpAnswer) and answer.status == 200 and answer.body == b"x" * 1000
    (request,) = echo.requests
    assert request.headers["Content-Encoding"] == "gzip" and request.wire_bytes < 100
    assert request.headers["X-Test"] == "1"
    assert request.headers["User-Agent"].startswith("canary-forwarder/")


async def test_a_path_prefix_of_the_base_url_is_kept(echo: EchoPeer, client_for: Any) -> None:
    # The prefix is not routed: the peer answers 404, proving the path it was sent.
    client: HttpClient = client_for([echo.url + "/proxy"])
    answer = await client.request("POST", "/echo", body=b"")
    assert isinstance(answer, HttpAnswer) and answer.status == 404


async def test_the_request_timeout_becomes_a_retry(echo: EchoPeer, client_for: Any) -> None:
    client: HttpClient = client_for([echo.url], request_timeout_secs=0.2)
    answer = await client.request("GET", "/wait")
    assert isinstance(answer, Retry) and "no answer within 0.2 s" in answer.reason
    shorter = await client.request("GET", "/wait", timeout_secs=0.05)
    assert isinstance(shorter, Retry) and "no answer within" in shorter.reason


async def test_a_reset_becomes_a_retry(echo: EchoPeer, client_for: Any) -> None:
    echo.faults.push(Reset())
    answer = await client_for([echo.url]).request("POST", "/echo", body=b"x")
    assert isinstance(answer, Retry) and not answer.operator_action


async def test_a_refused_connection_becomes_a_retry(client_for: Any) -> None:
    answer = await client_for([closed_port_url()]).request("GET", "/")
    assert isinstance(answer, Retry) and "cannot connect" in answer.reason


async def test_a_node_that_fails_is_benched_and_one_that_answers_is_not(
    echo: EchoPeer, client_for: Any
) -> None:
    dead = closed_port_url()
    client: HttpClient = client_for([dead, echo.url])
    assert isinstance(await client.request("GET", "/", endpoint=URL(dead)), Retry)
    assert [client.pick() for _ in range(3)] == [URL(echo.url)] * 3
    answer = await client.request("GET", "/status/503", endpoint=URL(echo.url))
    assert isinstance(answer, HttpAnswer) and answer.status == 503
    # Both are benched now: the one whose cooldown ends first is used.
    assert client.pick() in (URL(dead), URL(echo.url))
    fine = await client.request("GET", "/status/400", endpoint=URL(echo.url))
    assert isinstance(fine, HttpAnswer)
    assert client.pick() == URL(echo.url)


async def test_redirects_are_not_followed(echo: EchoPeer, client_for: Any) -> None:
    answer = await client_for([echo.url]).request("GET", "/redirect")
    assert isinstance(answer, HttpAnswer) and answer.status == 302
    result = classify_status(answer.status, answer.headers, "")
    assert isinstance(result, Retry) and result.operator_action
    assert echo.requests == []


async def test_cookies_are_kept_for_load_balancer_stickiness(
    echo: EchoPeer, client_for: Any
) -> None:
    client: HttpClient = client_for([echo.url])
    await client.request("GET", "/cookie")
    await client.request("GET", "/cookie")
    assert "Cookie" not in echo.requests[0].headers
    assert echo.requests[1].headers["Cookie"] == "AWSALB=node-7"


async def test_a_reopen_keeps_the_cookies(echo: EchoPeer, client_for: Any) -> None:
    """A SIGHUP dropped them: indexer acks still awaited were then polled on another indexer
    behind the load balancer, which knew none of them, and the batch went again."""
    client: HttpClient = client_for([echo.url])
    await client.request("GET", "/cookie")
    await client.reopen()
    await client.request("GET", "/cookie")
    assert echo.requests[1].headers["Cookie"] == "AWSALB=node-7"


async def test_a_reopen_lets_a_request_under_way_finish(echo: EchoPeer, client_for: Any) -> None:
    """A SIGHUP closed the session under a send whose answer had not come: the destination
    had taken its events, the send counted as failed, and they went again (duplicates)."""
    client: HttpClient = client_for([echo.url])
    under_way = asyncio.ensure_future(client.request("GET", "/wait"))
    await wait_until(lambda: echo.requests, timeout=5, what="the request to arrive")
    await client.reopen()
    echo.never.set()
    answer = await under_way
    assert isinstance(answer, HttpAnswer) and answer.status == 200, answer
    after = await client.request("GET", "/cookie")  # on the new session
    assert isinstance(after, HttpAnswer) and after.status == 200


async def test_closing_ends_a_request_under_way_on_a_replaced_session(echo: EchoPeer) -> None:
    client = HttpClient(config([echo.url]), [URL(echo.url)], {})
    under_way = asyncio.ensure_future(client.request("GET", "/wait"))
    await wait_until(lambda: echo.requests, timeout=5, what="the request to arrive")
    await client.reopen()
    await client.aclose()  # the daemon stopping: nothing is left open behind it
    answer = await under_way
    assert isinstance(answer, Retry), answer


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (aiohttp.ConnectionTimeoutError(), "a:1: no connection within 2.0 s"),
        (TimeoutError(), "a:1: no answer within 2.0 s"),
        (aiohttp.ServerDisconnectedError(), "a:1: connection closed before an answer came"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "a:1: connection failed"),
        (aiohttp.ClientPayloadError("truncated"), "a:1: ClientPayloadError: truncated"),
        (RuntimeError("bug"), "a:1: unexpected RuntimeError: bug"),
    ],
)
def test_wire_failures_are_plain_retries_with_the_cause(error: Exception, reason: str) -> None:
    retry = _wire_failure(error, URL("http://a:1"), 2.0)
    assert retry.reason.startswith(reason) and not retry.operator_action


def test_answer_text_is_one_short_line() -> None:
    answer = HttpAnswer(
        500, CIMultiDictProxy(CIMultiDict()), b"line one\n  line two " + b"x" * 500, URL("http://a")
    )
    assert answer.text().startswith("line one line two x")
    assert len(answer.text()) == 300 and answer.json() is None


# TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("forwarder.test")
    files = {
        "ca": directory / "ca.pem",
        "other_ca": directory / "other-ca.pem",
        "server": directory / "server.pem",
        "client_cert": directory / "client-cert.pem",
        "client_key": directory / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


def server_context(files: dict[str, Path], *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files["server"]))
    if client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(files["ca"]))
    return context


@pytest.fixture
async def tls_echo(tls_files: dict[str, Path]) -> AsyncIterator[EchoPeer]:
    peer = EchoPeer()
    await peer.start(ssl_context=server_context(tls_files))
    yield peer
    await peer.stop()


async def test_tls_verification_is_on_by_default(tls_echo: EchoPeer, client_for: Any) -> None:
    answer = await client_for([tls_echo.url]).request("POST", "/echo", body=b"x")
    assert isinstance(answer, Retry) and answer.operator_action
    assert "certificate" in answer.reason


async def test_tls_with_the_ca_file_or_verification_off(
    tls_echo: EchoPeer, tls_files: dict[str, Path], client_for: Any
) -> None:
    trusted = client_for([tls_echo.url], tls={"ca_file": str(tls_files["ca"])})
    answer = await trusted.request("POST", "/echo", body=b"x")
    assert isinstance(answer, HttpAnswer) and answer.status == 200
    unverified = client_for([tls_echo.url], tls={"verify": False})
    answer = await unverified.request("POST", "/echo", body=b"x")
    assert isinstance(answer, HttpAnswer) and answer.status == 200


async def test_tls_checks_the_server_name(
    tls_echo: EchoPeer, tls_files: dict[str, Path], client_for: Any
) -> None:
    client = client_for(
        [tls_echo.url], tls={"ca_file": str(tls_files["ca"]), "server_name": "other.test"}
    )
    answer = await client.request("POST", "/echo", body=b"x")
    assert isinstance(answer, Retry) and answer.operator_action
    named = client_for(
        [tls_echo.url], tls={"ca_file": str(tls_files["ca"]), "server_name": "localhost"}
    )
    answer = await named.request("POST", "/echo", body=b"x")
    assert isinstance(answer, HttpAnswer) and answer.status == 200


async def test_tls_client_certificate(tls_files: dict[str, Path], client_for: Any) -> None:
    peer = EchoPeer()
    await peer.start(ssl_context=server_context(tls_files, client_cert=True))
    try:
        tls = {
            "ca_file": str(tls_files["ca"]),
            "cert_file": str(tls_files["client_cert"]),
            "key_file": str(tls_files["client_key"]),
        }
        answer = await client_for([peer.url], tls=tls).request("POST", "/echo", body=b"x")
        assert isinstance(answer, HttpAnswer) and answer.status == 200
        without = await client_for([peer.url], tls={"ca_file": str(tls_files["ca"])}).request(
            "POST", "/echo", body=b"x"
        )
        assert isinstance(without, Retry)
    finally:
        await peer.stop()


async def test_reopen_reads_the_certificates_again(
    tls_echo: EchoPeer, tls_files: dict[str, Path], tmp_path: Path, client_for: Any
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(tls_files["other_ca"].read_bytes())
    client: HttpClient = client_for([tls_echo.url], tls={"ca_file": str(ca_file)})
    assert isinstance(await client.request("POST", "/echo", body=b"x"), Retry)
    ca_file.write_bytes(tls_files["ca"].read_bytes())  # the operator fixes the CA file
    await client.reopen()
    answer = await client.request("POST", "/echo", body=b"x", endpoint=URL(tls_echo.url))
    assert isinstance(answer, HttpAnswer) and answer.status == 200


async def test_unreadable_tls_files_are_an_operator_retry_not_an_exception(
    tls_echo: EchoPeer, tmp_path: Path, client_for: Any
) -> None:
    missing = tmp_path / "missing.pem"
    client: HttpClient = client_for([tls_echo.url], tls={"ca_file": str(missing)})
    await client.start()
    answer = await client.request("POST", "/echo", body=b"x")
    assert isinstance(answer, Retry) and answer.operator_action
    assert answer.reason == (
        f"cannot load the TLS files: tls.ca_file {missing}: No such file or directory"
    )


def test_tls_files_that_cannot_be_loaded_are_named_with_the_reason(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cert, server = tls_files["client_cert"], tls_files["server"]
    cases = [
        # Refused before OpenSSL reads it: a FIFO or a device would block the event loop.
        ({"ca_file": "/dev/null"}, "tls.ca_file /dev/null: not a regular file (a character device"),
        ({"ca_file": str(tmp_path)}, f"tls.ca_file {tmp_path}: not a regular file (a directory)"),
        ({"ca_file": str(not_pem)}, f"tls.ca_file {not_pem}: [X509: NO_CERTIFICATE_OR_CRL_FOUND]"),
        (
            {"cert_file": str(cert), "key_file": str(server)},
            f"tls.cert_file {cert} with tls.key_file {server}: [X509: KEY_VALUES_MISMATCH]",
        ),
    ]
    for options, reason in cases:
        with pytest.raises(TlsFilesUnusable) as unusable:
            TlsClientConfig.model_validate(options).context()
        assert str(unusable.value).startswith(f"cannot load the TLS files: {reason}"), options


def hec_output(url: str, tls: dict[str, str]) -> Output[Any]:
    return SplunkHecOutput(
        SplunkHecConfig.model_validate(
            {"name": "hec", "type": "splunk_hec", "url": url, "token": DEFAULT_TOKEN, "tls": tls}
        )
    )


def es_output(url: str, tls: dict[str, str]) -> Output[Any]:
    return ElasticsearchOutput(
        ElasticsearchConfig.model_validate(
            {"name": "es", "type": "elasticsearch", "url": url, "tls": tls}
        )
    )


@pytest.mark.parametrize(
    ("peer_class", "make_output"),
    [
        pytest.param(FakeHec, hec_output, id="splunk_hec"),
        pytest.param(FakeEs, es_output, id="elasticsearch"),
    ],
)
@pytest.mark.parametrize("option", ["ca_file", "cert_file", "key_file"])
async def test_an_unreadable_tls_file_lets_the_output_start_and_keeps_its_events(
    peer_class: type[FakePeer],
    make_output: Callable[[str, dict[str, str]], Output[Any]],
    option: str,
    tls_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Like syslog: the daemon (and its webhook ingest) starts, sends are kept for an operator
    with the file named, the healthcheck says the same, and the file is read again once fixed."""
    tls = {
        "ca_file": str(tls_files["ca"]),
        "cert_file": str(tls_files["client_cert"]),
        "key_file": str(tls_files["client_key"]),
    }
    missing = tmp_path / "missing.pem"
    peer = await peer_class().start(ssl_context=server_context(tls_files))
    output = make_output(peer.url, {**tls, option: str(missing)})
    try:
        await output.start()
        result = await output.send(make_records(1))
        assert isinstance(result, Retry) and result.operator_action, result
        assert result.reason == (
            f"cannot load the TLS files: tls.{option} {missing}: No such file or directory"
        )
        with pytest.raises(HealthcheckError) as unhealthy:
            await output.healthcheck()
        assert str(unhealthy.value) == result.reason
        assert peer.requests == []
        missing.write_bytes(Path(tls[option]).read_bytes())  # the operator restores the file
        assert await output.send(make_records(1)) == Delivered()
    finally:
        await output.aclose()
        await peer.stop()
