"""A protocol-faithful Splunk HTTP Event Collector for tests and benchmarks.

What it implements, as Splunk documents it (endpoints, envelope, status and code table):

- `POST /services/collector[/event[/1.0]]`: concatenated JSON envelopes, gzip bodies, checked
  one by one in order. At the first bad envelope it stops: the ones before it are kept, and the
  answer is `400 {"code": 6 | 7 | 12 | 13 | 15, "invalid-event-number": N}`.
- Auth: `Authorization: Splunk <token>`, Basic with the token as password, `?token=` only when
  allowed (else code 16); codes 1 to 4 for a missing, malformed, unknown or disabled token.
- `max_content_length` -> 413, counted on the Content-Length on the wire (the compressed size of a
  gzip body), as the message Splunk answers names it; with `limit_decompressed`, on the body
  after gunzip too, for a receiver (or a proxy in front of HEC) that counts that. An empty body
  -> code 5; an unknown Content-Encoding -> 415 (Splunk answers `deflate` so).
- `max_event_size` (Splunk's inputs.conf `[http] maxEventSize`, 5 MB by default): an envelope
  larger than that is code 6 with its `invalid-event-number`, not a 413.
- `fields` (indexed fields) as Splunk takes them: strings, numbers, booleans, null and flat
  arrays of those are accepted, a nested object or array is code 15, and an integer value is
  silently dropped, as Splunk was seen to do (its documentation allows only strings).
- Indexer acknowledgement when the token has it: a channel is required (codes 10, 11), every
  200 carries an `ackId` (per channel, from 0), `POST /services/collector/ack` answers
  `{"acks": {"0": true}}` once an id is acknowledged; without ack on the token, code 14.
  `restart()` forgets every pending id, as an indexer restart does: they poll `false` forever.
- `GET /services/collector/health[/1.0]` (Splunk 6.6 and later): 200 code 17; 503 code 18
  "HEC is unhealthy, queues are full" while `healthy` is False; 400 codes 21/22 for an unknown
  or disabled token in the Authorization header, as Splunk's REST reference and status table
  list them, or, with `health_checks_token` False, 200 whatever the token (as one client saw a
  Splunk answer). A caller without a token gets the health, as a load balancer does.
- Faults: `faults` (event posts), `ack_faults` (ack polls) and `health_faults` (health checks)
  are `FaultScript`s; `poison` holds values that make an envelope with that value in its
  `fields` an "Invalid data format" (code 6).

`prefix` serves every route under a path, as a reverse proxy in front of HEC does.

Every accepted envelope is kept in `events`, in order, with its arrival time; every request to
a `/services/collector` route, refused or not, in `seen` as (method, path). As a module:
`python -m tests.peers.fake_hec --port 0 --token T [--ack]` prints the port and serves; the
`/_fake/stats`, `/_fake/events`, `/_fake/faults` and `/_fake/reset` routes drive it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import json
import re
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.peers._server import BodyError, FakePeer, FaultScript, json_response, serve_standalone

__all__ = ["DEFAULT_TOKEN", "FakeHec", "HecEvent"]

DEFAULT_TOKEN = "11111111-2222-4333-8444-555555555555"
EVENT_PATHS = ("/services/collector", "/services/collector/event", "/services/collector/event/1.0")
HEALTH_PATHS = ("/services/collector/health", "/services/collector/health/1.0")
ACK_PATH = "/services/collector/ack"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# code -> (HTTP status, text), from the HEC status table.
CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
    21: (400, "Invalid token"),
    22: (400, "Token disabled"),
    # Splunk Cloud's answer for a missing channel where Splunk Enterprise answers code 10 (seen
    # on Splunk Cloud 10.5; not in Splunk's documented table).
    28: (
        400,
        "Data channel is missing. If you have multiple indexers, sticky session load "
        "balancers must be provisioned and client requests must be routed accordingly.",
    ),
}


def hec_answer(code: int, **extra: Any) -> web.Response:
    status, text = CODES[code]
    return json_response(status, {"text": text, "code": code, **extra})


@dataclass(frozen=True, slots=True)
class HecEvent:
    """One envelope HEC accepted."""

    envelope: dict[str, Any]
    arrived: float
    channel: str | None

    @property
    def fields(self) -> dict[str, Any]:
        fields = self.envelope.get("fields")
        return fields if isinstance(fields, dict) else {}


@dataclass(slots=True)
class _Channel:
    next_ack_id: int = 0
    polls: dict[int, int] = field(default_factory=dict)
    """Pending ack id -> how many polls have asked about it."""


class _Invalid(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FakeHec(FakePeer):
    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        acks: bool = False,
        token_disabled: bool = False,
        allowed_indexes: Collection[str] | None = None,
        max_content_length: int = 1_000_000,
        allow_query_token: bool = False,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.token = token
        self.acks = acks
        self.token_disabled = token_disabled
        self.allowed_indexes = None if allowed_indexes is None else set(allowed_indexes)
        self.max_content_length = max_content_length
        self.limit_decompressed = False
        """True: `max_content_length` also bounds the body after gunzip."""
        self.max_event_size: int | None = None
        """Largest envelope (as JSON) indexed; a larger one is code 6. None: no limit."""
        self.allow_query_token = allow_query_token
        self.prefix = prefix.rstrip("/")
        self.healthy = True
        """False: HEC's queues are full, and the health endpoint says so (503 code 18)."""
        self.health_checks_token = True
        """False: the health endpoint answers 200 even to a bad token in the header."""
        self.health_faults = FaultScript()
        self.seen: list[tuple[str, str]] = []
        self.ack_after_polls: int | None = 0
        """Polls answered `false` before an ack id turns `true`; None: never acknowledged."""
        self.poison: set[str] = set()
        self.ack_faults = FaultScript()
        self.events: list[HecEvent] = []
        self._tallied = 0
        self._fingerprints: set[Any] = set()
        self.ack_polls = 0
        self._channels: dict[str, _Channel] = {}
        for path in EVENT_PATHS:
            self.app.router.add_post(self.prefix + path, self._event_route)
        for path in HEALTH_PATHS:
            self.app.router.add_get(self.prefix + path, self._health_route)
        self.app.router.add_post(self.prefix + ACK_PATH, self._ack_route)
        self.app.router.add_get("/_fake/events", self._events_route)
        self.app.router.add_post("/_fake/poison", self._poison_route)

    # What arrived

    def values(self, field_name: str) -> list[Any]:
        """One indexed field of every accepted event, in arrival order."""
        return [event.fields.get(field_name) for event in self.events]

    def duplicates(self, field_name: str = "canary_fingerprint") -> int:
        """Events that arrived more than once, counted by an indexed field."""
        seen = self.values(field_name)
        return len(seen) - len(set(seen))

    def stats(self) -> dict[str, Any]:
        unique = len(self._tally_fingerprints())
        return {
            **super().stats(),
            "events": len(self.events),
            "unique": unique,
            "duplicates": len(self.events) - unique,
            "ack_polls": self.ack_polls,
        }

    def _tally_fingerprints(self) -> set[Any]:
        """The distinct fingerprints of `events`, counted on from the last call. A benchmark
        polls the stats every few milliseconds while 100,000 events arrive; counting them all
        each time took more of the two cores than the daemon being measured."""
        if len(self.events) < self._tallied:  # emptied since (reset, or a test cleared it)
            self._tallied, self._fingerprints = 0, set()
        for event in itertools.islice(self.events, self._tallied, None):
            self._fingerprints.add(event.fields.get("canary_fingerprint"))
        self._tallied = len(self.events)
        return self._fingerprints

    def restart(self) -> None:
        """Forget every pending ack id, as an indexer restart does: they poll `false` from now
        on, and each channel's ids count from 0 again."""
        self._channels.clear()

    def reset(self) -> None:
        super().reset()
        self.events.clear()
        self._tallied, self._fingerprints = 0, set()
        self.seen.clear()
        self.ack_faults.clear()
        self.health_faults.clear()
        self.poison.clear()

    # Auth

    def _authenticate(self, request: web.Request, *, health: bool = False) -> web.Response | None:
        """None when the request carries the valid, enabled token; else HEC's answer."""
        header = request.headers.get("Authorization")
        token: str | None = None
        if header is None:
            if "token" in request.query:
                if not self.allow_query_token:
                    return hec_answer(16)
                token = request.query["token"]
            elif health:
                return None  # the health endpoint answers anonymous callers too
            else:
                return hec_answer(2)
        else:
            token = _token_from_header(header)
            if token is None:
                return hec_answer(3)
        if token != self.token:
            return hec_answer(21 if health else 4)
        if self.token_disabled:
            return hec_answer(22 if health else 1)
        return None

    def _channel(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        channel = request.headers.get("X-Splunk-Request-Channel") or request.query.get("channel")
        if channel is None:
            return None, hec_answer(10) if self.acks else None
        if not _GUID.match(channel):
            return None, hec_answer(11)
        return channel, None

    # Routes

    async def _event_route(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        scripted = await self.suffer(self.faults, request)
        if scripted is not None:
            return scripted
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        channel, refused = self._channel(request)
        if refused is not None:
            return refused
        if (request.content_length or 0) > self.max_content_length:
            text = (
                f"Content-Length of {request.content_length} too large "
                f"(maximum is {self.max_content_length})"
            )
            return json_response(413, {"text": text})
        try:
            body, wire_bytes = await self.read_body(request)
        except BodyError as exc:
            return json_response(exc.status, {"text": exc.message, "code": 6})
        self.record(request, body, wire_bytes)
        if self.limit_decompressed and len(body) > self.max_content_length:
            text = f"Content of {len(body)} bytes too large (maximum is {self.max_content_length})"
            return json_response(413, {"text": text})
        answer = self._index(body, channel)
        await self.changed()
        return answer

    def _index(self, body: bytes, channel: str | None) -> web.Response:
        if not body.strip():
            return hec_answer(5)
        arrived = time.time()
        accepted = 0
        failure: _Invalid | None = None
        for envelope in _envelopes(body):
            try:
                self._validate(envelope)
            except _Invalid as exc:
                failure = exc
                break
            assert isinstance(envelope, dict)
            self.events.append(HecEvent(_as_indexed(envelope), arrived, channel))
            accepted += 1
        extra: dict[str, Any] = {}
        if self.acks and channel is not None and (failure is None or accepted):
            extra["ackId"] = self._new_ack_id(channel)
        if failure is not None:
            return hec_answer(failure.code, **{"invalid-event-number": accepted}, **extra)
        return hec_answer(0, **extra)

    def _validate(self, envelope: Any) -> None:
        if not isinstance(envelope, dict):
            raise _Invalid(6)
        if "event" not in envelope or envelope["event"] is None:
            raise _Invalid(12)
        event = envelope["event"]
        if isinstance(event, str) and not event.strip():
            raise _Invalid(13)
        fields = envelope.get("fields", {})
        if not isinstance(fields, dict) or not all(_flat(v) for v in fields.values()):
            raise _Invalid(15)
        time_value = envelope.get("time")
        if time_value is not None and not _epoch(time_value):
            raise _Invalid(6)
        index = envelope.get("index")
        if self.allowed_indexes is not None and index not in (None, *self.allowed_indexes):
            raise _Invalid(7)
        if self.max_event_size is not None and len(orjson.dumps(envelope)) > self.max_event_size:
            raise _Invalid(6)
        if self.poison and any(str(v) in self.poison for v in fields.values()):
            raise _Invalid(6)

    def _new_ack_id(self, channel: str) -> int:
        state = self._channels.setdefault(channel, _Channel())
        ack_id = state.next_ack_id
        state.next_ack_id += 1
        state.polls[ack_id] = 0
        return ack_id

    async def _ack_route(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        self.ack_polls += 1
        scripted = await self.suffer(self.ack_faults, request)
        if scripted is not None:
            return scripted
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        if not self.acks:
            return hec_answer(14)
        channel, refused = self._channel(request)
        if refused is not None:
            return refused
        assert channel is not None  # acks on: _channel refuses a missing one
        body = await request.read()
        self.record(request, body, len(body))
        try:
            asked = json.loads(body)["acks"]
            ids = [int(ack_id) for ack_id in asked]
        except (ValueError, KeyError, TypeError):
            return hec_answer(6)
        state = self._channels.setdefault(channel, _Channel())
        answer: dict[str, bool] = {}
        for ack_id in ids:
            polls = state.polls.get(ack_id)
            if polls is None:
                answer[str(ack_id)] = False
                continue
            state.polls[ack_id] = polls + 1
            done = self.ack_after_polls is not None and polls >= self.ack_after_polls
            answer[str(ack_id)] = done
            if done:
                del state.polls[ack_id]  # HEC reports an ack as true once, then forgets it
        await self.changed()
        return json_response(200, {"acks": answer})

    async def _health_route(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        scripted = await self.suffer(self.health_faults, request)
        if scripted is not None:
            return scripted
        self.record(request, b"", 0)
        refused = self._authenticate(request, health=True) if self.health_checks_token else None
        if refused is not None:
            return refused
        return hec_answer(17 if self.healthy else 18)

    async def _events_route(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        listed = [
            {"fields": event.fields, "time": event.envelope.get("time"), "arrived": event.arrived}
            for event in self.events[offset:]
        ]
        return json_response(200, listed)

    async def _poison_route(self, request: web.Request) -> web.Response:
        self.poison.update(str(value) for value in json.loads(await request.read()))
        return json_response(200, {"poison": sorted(self.poison)})


def _token_from_header(header: str) -> str | None:
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "splunk" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def _envelopes(body: bytes) -> Iterator[Any]:
    """The JSON values of a concatenated stream; a value that does not parse ends it with None."""
    try:
        # Fast path for the usual one envelope per line; anything else takes the exact path.
        values = [orjson.loads(line) for line in body.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        yield from _concatenated(body)
    else:
        yield from values


def _concatenated(body: bytes) -> Iterator[Any]:
    text = body.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            yield None
            return
        yield value


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _flat(value: Any) -> bool:
    """An indexed field value Splunk takes: a scalar, or a flat array of scalars."""
    return _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value))


def _as_indexed(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope as Splunk keeps it: an indexed field with an integer value is dropped."""
    fields = envelope.get("fields")
    if not isinstance(fields, dict):
        return envelope
    kept = {
        name: value
        for name, value in fields.items()
        if not (isinstance(value, int) and not isinstance(value, bool))
    }
    return envelope if len(kept) == len(fields) else {**envelope, "fields": kept}


def _epoch(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value) is not None


def main(argv: list[str] | None = None) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--token", default=DEFAULT_TOKEN)
        parser.add_argument("--ack", action="store_true", help="the token has indexer ack")
        parser.add_argument("--max-content-length", type=int, default=1_000_000)

    def build(args: argparse.Namespace) -> FakePeer:
        return FakeHec(args.token, acks=args.ack, max_content_length=args.max_content_length)

    serve_standalone("A fake Splunk HEC on 127.0.0.1.", build, add_arguments, argv)


if __name__ == "__main__":
    main()
