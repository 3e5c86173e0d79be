"""HTTP plumbing shared by the HTTP outputs (Splunk HEC, Elasticsearch): one place for it all.

- `HttpOutputConfig`: URLs, TLS, timeouts, gzip and the request size cap every HTTP output has.
- `HttpClient`: one aiohttp session per output (TLS context, timeouts, a cookie jar so load
  balancer stickiness survives, redirects never followed) over `Endpoints` failover. A request
  returns an `HttpAnswer` or a `Retry` saying what went wrong on the wire; it never raises.
- `classify_status`: the generic status table (2xx delivered; 408, 429 and 5xx but 501 retried
  with Retry-After; 401 and 403 need an operator; 413 too large; other 4xx rejected), and
  `classify_refusal`, which keeps the events of a refusal that did not come from the server.
- `encode_batch` / `spread_result`: a batch into one request body (refusing what cannot be
  encoded, checking the size), and the result for the records sent back onto the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp.abc import AbstractCookieJar
from multidict import CIMultiDictProxy
from pydantic import Field, field_validator
from yarl import URL

from forwarder import __version__
from forwarder.mappers.base import Record
from forwarder.outputs._failover import Endpoints, first_to_pass
from forwarder.outputs._tls import TlsClientConfig, TlsFilesUnusable
from forwarder.outputs.base import (
    Delivered,
    HealthcheckError,
    OutputConfig,
    Partial,
    Reject,
    Retry,
    SendResult,
    TooLarge,
    one_or_many,
)

__all__ = [
    "EncodedBatch",
    "EncodedRequest",
    "HttpAnswer",
    "HttpClient",
    "HttpOutputConfig",
    "answer_error_text",
    "classify_refusal",
    "classify_status",
    "encode_batch",
    "endpoint_name",
    "gzip_body",
    "is_retryable_status",
    "parse_base_url",
    "parse_retry_after",
    "send_packed",
    "spread_result",
    "wrong_url_hint",
]

log = structlog.get_logger("forwarder.outputs.http")

USER_AGENT = f"canary-forwarder/{__version__}"
# Compressing a few hundred kilobytes takes milliseconds; above this it moves off the event loop
# so ingest keeps answering the console meanwhile.
_GZIP_IN_THREAD_BYTES = 256 * 1024
_MESSAGE_CHARS = 300
# Event batches repeat the same keys and values: level 1 already shrinks them about 25 times,
# at a third of the CPU of the default level 6 for a few percent more bytes.
_GZIP_LEVEL = 1


class HttpOutputConfig(OutputConfig):
    """Options of every HTTP output. `url` takes one base URL or a list of them (a cluster)."""

    model_config = one_or_many("url")

    url: tuple[str, ...] = ()
    """Base URL(s) of the destination: scheme, host, port and an optional path prefix for a
    reverse proxy. With several, sends go round-robin and a failing node is benched for a while."""
    tls: TlsClientConfig = TlsClientConfig()
    connect_timeout_secs: float = Field(default=10.0, gt=0, le=300)
    """Most time to open a TCP and TLS connection to one node."""
    request_timeout_secs: float = Field(default=30.0, gt=0, le=600)
    """Most time for one whole request, from connecting to the last byte of the answer."""
    gzip: bool = True
    """Send request bodies with `Content-Encoding: gzip`."""
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest uncompressed request body sent; a bigger batch is split, a bigger record refused."""

    @field_validator("url", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _valid_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(str(parse_base_url(url)) for url in value)
        # Compared once normalised ([0:0::1] is [::1], :443 is https's own port): failover tells
        # nodes apart by URL, and a node listed twice was never benched with its twin, so
        # while it was down it still got every other request.
        twice = [url for index, url in enumerate(urls) if url in urls[:index]]
        if twice:
            raise ValueError(f"{twice[0]} is listed twice")
        return urls


def parse_base_url(text: str) -> URL:
    """A base URL without credentials, query or trailing slash; ValueError saying what is wrong."""
    try:
        url = URL(text.strip())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{text!r} is not an http:// or https:// URL with a host")
    if url.user is not None or url.password is not None:
        # Credentials in a URL end up in logs and error messages; they have their own options.
        raise ValueError(f"{url.with_user(None)}: put credentials in their own options")
    if url.query_string or url.fragment:
        # Not echoed: a query may hold a token.
        bare = url.with_query(None).with_fragment(None)
        raise ValueError(f"{bare}: a base URL takes no query or fragment")
    return url.with_path(url.path.rstrip("/"))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a server asked us to wait: delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx other than 501: the node may answer differently later."""
    return status in (408, 429) or (500 <= status <= 599 and status != 501)


def classify_status(
    status: int, headers: Mapping[str, str], message: str, *, where: str = ""
) -> SendResult:
    """The generic meaning of an HTTP status for a batch that was sent whole."""
    prefix = f"{where}: " if where else ""
    reason = f"{prefix}HTTP {status}" + (f": {message}" if message else "")
    if 200 <= status <= 299:
        return Delivered()
    if is_retryable_status(status):
        return Retry(reason, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status in (401, 403):
        return Retry(f"{reason} (check the credentials)", operator_action=True)
    if status == 413:
        return TooLarge(reason)
    if 300 <= status <= 399:
        # Following a redirect would replay a POST as a GET or leak the credentials to another
        # host; a moved destination is a configuration change.
        location = headers.get("Location", "?")
        return Retry(f"{reason}; redirected to {location}: fix the URL", operator_action=True)
    return Reject(reason)


def wrong_url_hint(server: str) -> str:
    """What an operator is told when something other than `server` answered a request."""
    return (
        f"wrong URL, or something other than {server} answered: check `url` "
        "(scheme, host, port and any reverse-proxy path prefix)"
    )


def classify_refusal(
    answer: HttpAnswer, message: str, *, server: str, from_server: bool
) -> SendResult:
    """`classify_status` of a whole-request answer, except for a refusal (other 4xx, 501) that
    `server` did not send itself (`from_server` false), which keeps the events for an operator.

    A server refuses a bad request in its own format; a proxy's page or another service at the
    URL refuses every request alike, so dead-lettering would lose every batch while it lasts.
    """
    where = endpoint_name(answer.endpoint)
    result = classify_status(answer.status, answer.headers, message, where=where)
    if isinstance(result, Reject) and not from_server:
        return Retry(f"{result.reason}: {wrong_url_hint(server)}", operator_action=True)
    return result


def spread_result(
    result: SendResult, sent: Sequence[int], refused: Mapping[int, Reject]
) -> SendResult:
    """Map a result about the records sent (positions 0..n-1) back onto batch positions.

    `sent[i]` is the batch position of the i-th record in the request; `refused` holds the
    records the output refused before sending (unencodable, too large alone).
    """
    if not refused and list(sent) == list(range(len(sent))):
        return result
    if isinstance(result, TooLarge):
        return result
    per_record: dict[int, Retry | Reject] = dict(refused)
    if isinstance(result, Retry | Reject):
        per_record.update(dict.fromkeys(sent, result))
    elif isinstance(result, Partial):
        per_record.update({sent[index]: item for index, item in result.results.items()})
    return Partial(per_record) if per_record else Delivered()


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One request body, and the batch positions of the records in it, in order."""

    body: bytes
    sent: list[int]


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch encoded once and packed into requests of at most `max_request_bytes`."""

    requests: list[EncodedRequest]
    refused: dict[int, Reject]

    async def send(self, send_one: Callable[[EncodedRequest], Awaitable[SendResult]]) -> SendResult:
        """Send the requests in order; the result for the whole batch.

        A request that has to be retried stops the rest (they keep their order and go after
        the backoff). A 413 on the first request is the batch's result, so the dispatcher
        splits it; on a later one, what is left is retried and then meets the 413 first.
        """
        if len(self.requests) == 1:
            only = self.requests[0]
            return spread_result(await send_one(only), only.sent, self.refused)
        per_record: dict[int, Retry | Reject] = dict(self.refused)
        for number, request in enumerate(self.requests):
            result = await send_one(request)
            if isinstance(result, TooLarge) and number == 0:
                return result
            if isinstance(result, TooLarge):
                result = Retry(f"{result.reason}; sent again in smaller requests")
            if isinstance(result, Retry):
                for unsent in self.requests[number:]:
                    per_record.update(dict.fromkeys(unsent.sent, result))
                break
            spread = spread_result(result, request.sent, {})
            if isinstance(spread, Reject):
                per_record.update(dict.fromkeys(request.sent, spread))
            elif isinstance(spread, Partial):
                per_record.update(spread.results)
        return Partial(per_record) if per_record else Delivered()


def encode_batch(
    batch: Sequence[Record], encode: Callable[[Record], bytes], max_bytes: int
) -> EncodedBatch | SendResult:
    """Encode every record once and pack them, in order, into requests of at most `max_bytes`;
    or the batch's result when there is nothing to send.

    Packing here, rather than answering "too large" for the dispatcher to halve the batch,
    saves encoding the same records again: a batch's byte bound counts stored payloads,
    and most formats grow a payload severalfold. A record that `encode` refuses (ValueError,
    or TypeError from the JSON encoder) is rejected on its own, and so is one record larger
    than `max_bytes` by itself.
    """
    if not batch:
        return Delivered()
    requests: list[EncodedRequest] = []
    refused: dict[int, Reject] = {}
    parts: list[bytes] = []
    sent: list[int] = []
    size = 0
    for index, record in enumerate(batch):
        try:
            line = encode(record)
        except TypeError as exc:
            refused[index] = Reject(f"record cannot be encoded as JSON: {exc}")
            continue
        except ValueError as exc:
            refused[index] = Reject(str(exc))
            continue
        if len(line) > max_bytes:
            refused[index] = Reject(f"record of {len(line)} bytes > max_request_bytes")
            continue
        if size + len(line) > max_bytes:
            requests.append(EncodedRequest(b"".join(parts), sent))
            parts, sent, size = [], [], 0
        parts.append(line)
        sent.append(index)
        size += len(line)
    if sent:
        requests.append(EncodedRequest(b"".join(parts), sent))
    if not requests:
        return Partial(refused)
    return EncodedBatch(requests, refused)


async def send_packed(
    batch: Sequence[Record],
    encode: Callable[[Record], bytes],
    max_bytes: int,
    send_one: Callable[[EncodedRequest], Awaitable[SendResult]],
) -> SendResult:
    """Encode `batch` once, pack it into requests of at most `max_bytes` and send them in order
    with `send_one`; the result for the whole batch."""
    encoded = encode_batch(batch, encode, max_bytes)
    if not isinstance(encoded, EncodedBatch):
        return encoded
    return await encoded.send(send_one)


async def gzip_body(body: bytes) -> bytes:
    """gzip with a fixed mtime, so the same batch always compresses to the same bytes."""
    if len(body) < _GZIP_IN_THREAD_BYTES:
        return gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
    return await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL, mtime=0)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What a node answered."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    endpoint: URL

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def text(self) -> str:
        """The body as one short line, for reasons and logs."""
        text = " ".join(self.body.decode("utf-8", "replace").split())
        return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


class HttpClient:
    """Requests to one destination's nodes, with failover. One per output; the HTTP session is
    opened by `start` (or the first request) and opened again, with fresh TLS files, by `reopen`."""

    def __init__(
        self,
        config: HttpOutputConfig,
        base_urls: Sequence[URL],
        headers: Mapping[str, str],
    ) -> None:
        self._config = config
        self._endpoints: Endpoints[URL] = Endpoints(base_urls)
        self._base_urls = tuple(base_urls)
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Requests under way on each session, and the sessions a reopen replaced, closed once
        # their last request is over: closed at once, they cut a send short whose events the
        # destination may already have taken, which then went again (duplicates).
        self._requests_on: dict[aiohttp.ClientSession, int] = {}
        self._replaced: set[aiohttp.ClientSession] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def base_urls(self) -> tuple[URL, ...]:
        return self._base_urls

    def pick(self) -> URL:
        """The node the next request goes to (round-robin, benched and held nodes skipped)."""
        return self._endpoints.pick()

    def hold(self, node: URL, secs: float) -> float:
        """Keep `node` out of turn for `secs`, as its `Retry-After` asked; returns how long
        until some node may take a request again (0 when another is free now)."""
        return self._endpoints.hold(node, secs)

    def _new_session(self, cookies: AbstractCookieJar | None = None) -> aiohttp.ClientSession:
        ssl_context: ssl.SSLContext | bool = False
        if any(url.scheme == "https" for url in self._base_urls):
            ssl_context = self._config.tls.context()
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=16),
            timeout=aiohttp.ClientTimeout(
                total=self._config.request_timeout_secs,
                sock_connect=self._config.connect_timeout_secs,
            ),
            # Load balancers in front of HEC pin an ack channel to one indexer with a cookie;
            # `unsafe` keeps cookies from nodes addressed by IP too. A reopen keeps them, or the
            # acks still awaited would be polled on another indexer, which knows none of them.
            cookie_jar=cookies if cookies is not None else aiohttp.CookieJar(unsafe=True),
            headers=self._headers,
            auto_decompress=True,
        )

    async def start(self) -> None:
        """Open the session. TLS files that cannot be loaded do not stop the start (nor the
        daemon's webhook ingest with it): requests and the healthcheck report them instead."""
        self._session_or_retry()

    def _session_or_retry(self) -> aiohttp.ClientSession | Retry:
        """The session, opened on first use; a Retry for an operator while the TLS files cannot
        be loaded (they are tried again on every request, so a fixed file is picked up)."""
        if self._closed:
            # A healthcheck still running when a reload closed this output: a session opened
            # for it now would be closed by nobody.
            return Retry("the output is closed")
        if self._session is None:
            try:
                self._session = self._new_session()
            except TlsFilesUnusable as exc:
                return Retry(str(exc), operator_action=True)
        return self._session

    def raise_if_unusable(self) -> None:
        """HealthcheckError, with the reason a send gets, when no request can be made at all."""
        session = self._session_or_retry()
        if isinstance(session, Retry):
            raise HealthcheckError(session.reason)

    async def check_nodes(self, check: Callable[[URL], Awaitable[str | None]]) -> None:
        """Return once `check` (a node's problem, or None) passes on some node, the nodes
        checked side by side (`first_to_pass`); else HealthcheckError with every node's problem,
        in the order the nodes are listed.

        One healthy node is enough: sends fail over to it, so the destination takes records.
        """
        self.raise_if_unusable()
        problems = await first_to_pass(
            [check(endpoint) for endpoint in self._base_urls], lambda problem: problem is None
        )
        if problems is not None:
            raise HealthcheckError("; ".join(str(problem) for problem in problems))

    async def reopen(self) -> None:
        """A new session: certificates and keys are read again. If they cannot be loaded the
        current session stays in use and `TlsFilesUnusable` says which file is wrong.

        Requests under way finish on the old session, which is closed after the last of them.
        """
        old = self._session
        self._session = self._new_session(old.cookie_jar if old is not None else None)
        if old is not None:
            self._replaced.add(old)
            self._close_if_unused(old)

    def _close_if_unused(self, session: aiohttp.ClientSession) -> None:
        if session in self._replaced and not self._requests_on.get(session):
            self._replaced.discard(session)
            self._requests_on.pop(session, None)
            closing = asyncio.ensure_future(session.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        sessions = [*self._replaced, *([session] if session is not None else [])]
        self._replaced.clear()
        await asyncio.gather(*(s.close() for s in sessions), *self._closing)

    @contextlib.asynccontextmanager
    async def _in_use(self, session: aiohttp.ClientSession) -> AsyncIterator[None]:
        """Count a request on `session`, which a reopen closes only once none is left."""
        self._requests_on[session] = self._requests_on.get(session, 0) + 1
        try:
            yield
        finally:
            self._requests_on[session] -= 1
            self._close_if_unused(session)

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: URL | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        compress: bool = False,
        timeout_secs: float | None = None,
    ) -> HttpAnswer | Retry:
        """One request to `endpoint` (or the next node in turn); never raises for I/O errors.

        A node that cannot be reached or answers 408, 429 or 5xx is benched, so the next
        request goes to another node; the caller classifies the answer itself.
        """
        unusable = self._session_or_retry()
        if isinstance(unusable, Retry):
            return unusable
        node = endpoint if endpoint is not None else self._endpoints.pick()
        url = node.with_path(node.path.rstrip("/") + path)
        send_headers = dict(headers or {})
        if body is not None and compress:
            body = await gzip_body(body)
            send_headers["Content-Encoding"] = "gzip"
        timeout = None
        if timeout_secs is not None:
            timeout = aiohttp.ClientTimeout(
                total=timeout_secs,
                sock_connect=min(timeout_secs, self._config.connect_timeout_secs),
            )
        # Taken again after the gzip's await, and counted at once: a reopen meanwhile may have
        # replaced the session, and closes only one no request is about to use.
        session = self._session_or_retry()
        if isinstance(session, Retry):
            return session
        started = time.monotonic()
        try:
            async with (
                self._in_use(session),
                session.request(
                    method,
                    url,
                    data=body,
                    headers=send_headers,
                    params=params,
                    allow_redirects=False,
                    timeout=timeout if timeout is not None else session.timeout,
                    server_hostname=self._config.tls.server_name if url.scheme == "https" else None,
                ) as response,
            ):
                answer = HttpAnswer(response.status, response.headers, await response.read(), node)
        except Exception as exc:  # every failure on the wire becomes a Retry
            self._endpoints.failed(node)
            return _wire_failure(exc, node, time.monotonic() - started)
        if is_retryable_status(answer.status):
            self._endpoints.failed(node)
        else:
            self._endpoints.succeeded(node)
        return answer


def _wire_failure(exc: BaseException, node: URL, elapsed: float) -> Retry:
    where = endpoint_name(node)
    match exc:
        case aiohttp.ClientConnectorCertificateError():
            return Retry(
                f"{where}: TLS certificate not trusted: {exc.certificate_error}; "
                "set tls.ca_file or tls.server_name",
                operator_action=True,
            )
        case aiohttp.ClientSSLError():
            return Retry(f"{where}: TLS handshake failed: {exc}", operator_action=True)
        case aiohttp.ConnectionTimeoutError():
            return Retry(f"{where}: no connection within {elapsed:.1f} s")
        case TimeoutError():
            return Retry(f"{where}: no answer within {elapsed:.1f} s")
        case aiohttp.ClientConnectorDNSError():
            return Retry(f"{where}: cannot resolve the host name: {exc.os_error}")
        case aiohttp.ClientConnectorError():
            return Retry(f"{where}: cannot connect: {exc.os_error}")
        case aiohttp.ServerDisconnectedError():
            return Retry(f"{where}: connection closed before an answer came")
        case aiohttp.ClientOSError():
            return Retry(f"{where}: connection failed: {exc.strerror or exc}")
        case aiohttp.ClientError() | OSError():
            return Retry(f"{where}: {type(exc).__name__}: {exc}")
        case _:
            # Anything else is a bug here or in aiohttp; keep the events and say what it was.
            log.warning("Unexpected error in an HTTP request.", endpoint=where, exc_info=exc)
            return Retry(f"{where}: unexpected {type(exc).__name__}: {exc}")


def answer_error_text(answer: HttpAnswer) -> str:
    """The body's message, preferring the common JSON shapes (`text`, `error.reason`)."""
    data = answer.json()
    if isinstance(data, dict):
        for key in ("text", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("reason"), str):
            return f"{error.get('type', 'error')}: {error['reason']}"
        if isinstance(error, str):
            return error
    return answer.text()


def endpoint_name(url: URL) -> str:
    """`host:port`, an IPv6 address in brackets: `::1:8088` would itself read as an address."""
    host = url.host or ""
    return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"
