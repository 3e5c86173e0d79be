"""HTTP handlers: the webhook, and the health, readiness and metrics endpoints.

The webhook answers 200 only after the store has committed the event. Every other answer is a
small JSON object with an `error` field that names the problem without echoing the input.
Authenticated posts that are refused (not JSON, wrong type, compressed, too large, too slow, cut
off) are kept in the store's quarantine with what of their body arrived, so nothing the console
sent is silently gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import StreamReader, hdrs, web
from aiohttp.http import HttpProcessingError, HttpVersion11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forwarder.events import PayloadError, parse_event
from forwarder.ingest.auth import (
    FailureLimiter,
    client_address,
    is_allowed,
    is_authenticated,
    may_read_status,
)
from forwarder.ingest.listener import LogBudget, held_back
from forwarder.pipeline import Pipeline
from forwarder.settings import AuthConfig
from forwarder.store.outbox import StoreFull, StoreUnavailable
from forwarder.telemetry import metrics

__all__ = [
    "LIMITER",
    "PIPELINE",
    "REFUSAL_LOG",
    "expect_body",
    "healthz",
    "ignore_expectation",
    "metrics_endpoint",
    "readyz",
    "webhook",
]

log = structlog.get_logger("forwarder.ingest")

PIPELINE = web.AppKey("pipeline", Pipeline)
LIMITER = web.AppKey("limiter", FailureLimiter)
# The warnings for posts refused by address or credentials: anyone on the Internet can cause them.
REFUSAL_LOG = web.AppKey("refusal_log", LogBudget)
# What the Expect handler found (`_gate`'s answer), for the webhook to answer without asking again.
_GATE: web.RequestKey[web.Response | None] = web.RequestKey("gate")
# Set when the rest of the connection cannot be read as requests: the client asked whether to
# send the body and was not told to, or its body was cut off, refused midway or too slow.
_END_CONNECTION = web.RequestKey("end_connection", bool)

STORE_FULL_RETRY_AFTER_SECS = 30
# The whole body must arrive within this long once the headers are in.
BODY_TIMEOUT_SECS = 30.0
# An output failing this long makes /readyz fail, so an orchestrator can alert on it.
READY_OUTPUT_FAILING_SECS = 300.0
# How long /readyz waits for a store probe; orchestrators' probes time out after 1 to 10 s.
READY_PROBE_SECS = 3.0
_JSON_TYPES = ("application/json",)
_NOT_IDENTITY = "content_encoding_not_supported"


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, error: str, detail: str = "", **headers: str) -> web.Response:
    metrics.rejected.labels(error).inc()
    payload = {"error": error, "detail": detail} if detail else {"error": error}
    return _json(payload, status=status, headers=headers or None)


class _BodyNotRead(Exception):
    """The body was refused before it was read whole; `received` is what had arrived by then."""

    def __init__(self, status: int, error: str, detail: str, received: bytes) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.received = received


def _refusal_logged(request: web.Request, message: str, client: str) -> None:
    held = request.app[REFUSAL_LOG].take()
    if held is not None:
        log.warning(message, client=client, **held_back(held))


def _gate(request: web.Request, client: str) -> web.Response | None:
    """The answer to a post refused before its body is read (address, credentials), or None."""
    listen = request.app[PIPELINE].settings.listen
    if not is_allowed(client, listen):
        _refusal_logged(request, "Post from an address outside listen.allow refused.", client)
        return _error(403, "forbidden")
    if isinstance(listen.auth, AuthConfig):
        limiter = request.app[LIMITER]
        wait = limiter.blocked(client)
        if wait is not None:
            return _error(429, "too_many_failed_attempts", **{"Retry-After": str(int(wait) + 1)})
        if not is_authenticated(request, listen.auth, request.match_info.get("secret")):
            limiter.failed(client)
            _refusal_logged(request, "Post with missing or wrong credentials refused.", client)
            return _error(401, "unauthorized", **{"WWW-Authenticate": 'Basic realm="canary"'})
    return None


async def expect_body(request: web.Request) -> None:
    """The webhook's `Expect: 100-continue`: ask for the body only if the webhook will read it.

    aiohttp's own handler asks every client, so one about to be refused for its address, its
    credentials or its Content-Length sent the body first (up to the 10 s aiohttp reads a
    refused body for). Not asked, it gets the webhook's refusal before it sends any.
    """
    if request.version != HttpVersion11:
        return  # HTTP/1.0 has no interim answers; aiohttp ignores Expect there too
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        # Ignored, as RFC 9110 §10.1.1 allows: the post is then read and answered as any other.
        # aiohttp's 417 came before the webhook, so an authenticated post refused with it was
        # neither quarantined nor counted, and its answer was plain text.
        return
    listen = request.app[PIPELINE].settings.listen
    gate = request[_GATE] = _gate(request, client_address(request, listen))
    length = request.content_length
    if gate is not None or (length is not None and length > listen.max_body_bytes):
        request[_END_CONNECTION] = True
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # As aiohttp's own handler does: the answer proper has not started.
    request.writer.output_size = 0


async def ignore_expectation(request: web.Request) -> None:
    """The Expect handler of the status routes: none is needed to answer them."""


async def webhook(request: web.Request) -> web.Response:
    response = await _webhook(request)
    if request.get(_END_CONNECTION):
        # A body not asked for that may follow, or the rest of one that was cut short, cannot
        # be told from a next request: the connection ends with the answer, without aiohttp's
        # wait (up to 10 s) for the rest of a body, which read the refusal of a body refused
        # midway a second time, as an unhandled exception.
        response.force_close()
        with contextlib.suppress(ConnectionError):  # the client went first: aiohttp's concern
            await response.prepare(request)
            await response.write_eof()
        request.protocol.force_close()
    return response


async def _webhook(request: web.Request) -> web.Response:
    metrics.received.inc()
    pipeline = request.app[PIPELINE]
    listen = pipeline.settings.listen
    client = client_address(request, listen)
    gate = request[_GATE] if _GATE in request else _gate(request, client)
    if gate is not None:
        return gate
    compressed = request.headers.get("Content-Encoding", "identity").lower() != "identity"
    try:
        body = await _read_body(request, listen.max_body_bytes)
    except _BodyNotRead as unread:
        return await _refuse_unread(request, client, unread, compressed)
    if compressed:
        # Decompressing would let a small post expand past the body limit: kept as it came.
        return await _refuse(request, client, 415, _NOT_IDENTITY, body)
    if request.content_type not in _JSON_TYPES and not request.content_type.endswith("+json"):
        return await _refuse(request, client, 415, "content_type_not_json", body)
    received_at = datetime.now(UTC)
    try:
        event = parse_event(body, received_at=received_at)
    except PayloadError as exc:
        return await _refuse(request, client, 400, "invalid_payload", body, str(exc))
    try:
        stored = await pipeline.outbox.append(event)
    except StoreFull:
        log.warning("Store is full; post refused with 503.", client=client)
        return _error(503, "store_full", **{"Retry-After": str(STORE_FULL_RETRY_AFTER_SECS)})
    except StoreUnavailable as exc:
        log.warning("Store cannot commit; post refused with 503.", client=client, error=str(exc))
        return _error(503, "store_unavailable", **{"Retry-After": "5"})
    if not stored:
        metrics.duplicates.inc()
        log.info("Duplicate event ignored.", event_id=event.id, kind=event.kind.value)
        return _json({"status": "duplicate", "id": event.id})
    metrics.series(metrics.accepted, event.kind.value).inc()
    log.info("Event accepted.", event_id=event.id, kind=event.kind.value, client=client)
    return _json({"status": "stored", "id": event.id, "kind": event.kind.value})


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes, arriving within BODY_TIMEOUT_SECS.

    Read here rather than with `request.read()`, which drops what it read when it gives up:
    a refused body is quarantined with whatever of it did arrive.

    Raises:
        _BodyNotRead: too large (by Content-Length or by what arrived), too slow, or cut off (the
            client closed the connection, or broke the chunked encoding, before the end: an
            invalid payload, as the part that came would be).
    """
    if request.content_length is not None and request.content_length > limit:
        raise _BodyNotRead(413, "body_too_large", f"Content-Length {request.content_length}", b"")
    received = bytearray()
    try:
        if request.content.is_eof():
            # Already in memory (a webhook body usually arrives with its headers): read without
            # entering a timeout, which every post would otherwise pay for.
            await _read_into(received, request.content, limit)
        else:
            async with asyncio.timeout(BODY_TIMEOUT_SECS):
                await _read_into(received, request.content, limit)
    except TimeoutError:
        detail = f"{len(received)} bytes within {BODY_TIMEOUT_SECS:g} s"
        raise _BodyNotRead(408, "body_timeout", detail, bytes(received)) from None
    except (ConnectionResetError, HttpProcessingError) as exc:
        # A client gone in the middle of its body is the client's doing, not a failure of the
        # daemon's (which it was taken for: an ERROR with a traceback, counted as a 500).
        metrics.malformed_requests.labels("body").inc()
        detail = f"cut off after {len(received)} bytes ({exc.__class__.__name__})"
        raise _BodyNotRead(400, "invalid_payload", detail, bytes(received)) from None
    return bytes(received)


async def _read_into(received: bytearray, content: StreamReader, limit: int) -> None:
    while chunk := await content.readany():
        received += chunk
        if len(received) > limit:
            detail = f"more than {limit} bytes"
            raise _BodyNotRead(413, "body_too_large", detail, bytes(received))


async def _quarantine(
    request: web.Request, client: str, error: str, body: bytes, reason: str
) -> None:
    """Keep a refused authenticated post, even an empty one: the operator sees it was refused."""
    await request.app[PIPELINE].outbox.quarantine(body, reason, client)
    metrics.quarantined.inc()
    log.warning("Post refused; its body is kept in quarantine.", client=client, error=error)


async def _refuse(
    request: web.Request, client: str, status: int, error: str, body: bytes, detail: str = ""
) -> web.Response:
    await _quarantine(request, client, error, body, f"{error}: {detail}" if detail else error)
    return _error(status, error, detail)


async def _refuse_unread(
    request: web.Request, client: str, unread: _BodyNotRead, compressed: bool
) -> web.Response:
    status, error, reason = unread.status, unread.error, str(unread)
    if compressed:
        # Refused for its encoding whatever its size or pace, as it is when it arrives whole.
        status, error, reason = 415, _NOT_IDENTITY, f"{_NOT_IDENTITY}; {reason}"
    await _quarantine(request, client, error, unread.received, reason)
    if unread.status in (400, 408):
        # A client trickling its body must not hold the connection (slowloris); and after a
        # body cut off, or refused midway by the parser, nothing more on it is a request.
        request[_END_CONNECTION] = True
    return _error(status, error)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive"})


async def _store_probed(pipeline: Pipeline) -> bool:
    """The probe's answer, or False once READY_PROBE_SECS have passed: a store thread stuck on a
    dead disk must not hold every /readyz open (the probe itself goes on, for the others)."""
    try:
        async with asyncio.timeout(READY_PROBE_SECS):
            return await pipeline.outbox.probe()
    except TimeoutError:
        return False


async def readyz(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    problems: dict[str, str] = {}
    if not pipeline.outbox.healthy and not await _store_probed(pipeline):
        problems["store"] = pipeline.outbox.last_error or "store cannot commit"
    for name, error in pipeline.failing_outputs(READY_OUTPUT_FAILING_SECS).items():
        problems[f"output {name}"] = error
    if not problems:
        return _json({"status": "ready"})
    if not may_read_status(request, pipeline.settings.listen):
        return _json({"status": "not_ready"}, status=503)
    return _json({"status": "not_ready", "problems": problems}, status=503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """The exposition; never slower than the store wait, and never failing with the store.

    A stuck or unavailable store leaves the store's figures at their last reading (see
    `metrics.StoreReader`): a scrape that failed or timed out would take every series with it,
    and every alert on them, just when the store is in trouble.
    """
    if not may_read_status(request, request.app[PIPELINE].settings.listen):
        # Not `_error`: that counts refused webhook posts.
        return _json({"error": "forbidden"}, status=403)
    wait = metrics.store_read_wait(request.headers.get(metrics.SCRAPE_TIMEOUT_HEADER))
    await request.app[metrics.STORE_READER].refresh(request.app[PIPELINE], wait)
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
