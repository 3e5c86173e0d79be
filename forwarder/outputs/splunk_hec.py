"""`splunk_hec`: records as HEC event envelopes, one request per batch, to Splunk's collector.

A batch is the envelopes of its records concatenated (HEC takes no JSON array), gzipped, posted
to `/services/collector/event` with `Authorization: Splunk <token>` and this output's channel.
Every HEC status and code is classified as Splunk's table says (docs/outputs-http.md has the
table); the one subtle row is code 6 with `invalid-event-number` N: HEC indexed the envelopes
before N and stopped, so N is dead-lettered and only the envelopes after N are sent again.

With `indexer_ack`, a 200 only counts once `/services/collector/ack` confirms its `ackId`. A
batch packed into several requests sends them all first, then asks each node for all of its ids
in one poll; the requests whose ids are not confirmed within `ack_timeout_secs` are sent again
(at least once: a duplicate is possible, and the indexed field `canary_fingerprint` tells
duplicates apart in a search).

With several URLs, a node that answered with `Retry-After` gets no event post before that time
while another node can take one; the retry waits for `Retry-After` only when every node asked.

`healthcheck` proves the token with an empty post, which HEC answers 400 "No data" and counts as
an error; `liveness`, run every 30 s, asks `/services/collector/health` and proves the token
again (that post, or with acks an empty ack poll) only when nothing did for `TOKEN_PROOF_SECS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self
from uuid import UUID, uuid4

import orjson
import structlog
from pydantic import Field, SecretStr, model_validator
from yarl import URL

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.splunk_console import splunk_sourcetype
from forwarder.outputs._http import (
    EncodedBatch,
    EncodedRequest,
    HttpAnswer,
    HttpClient,
    HttpOutputConfig,
    classify_refusal,
    encode_batch,
    endpoint_name,
    wrong_url_hint,
)
from forwarder.outputs.base import (
    Delivered,
    Output,
    Partial,
    Reject,
    Retry,
    SendResult,
)

__all__ = [
    "HecReply",
    "SplunkHecConfig",
    "SplunkHecOutput",
    "hec_envelope",
    "indexed_fields",
]

log = structlog.get_logger("forwarder.outputs.splunk_hec")

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
CHANNEL_HEADER = "X-Splunk-Request-Channel"

TOKEN_PROOF_SECS = 6 * 3600.0
"""How long an accepted send or a passed token check proves the token to `liveness`. Splunk
counts the empty probe post as an HEC error, so an idle output makes it at most this often;
read at each check, so a test can shorten it."""

# 400 codes that no event is to blame for: every event would fail the same way until the
# configuration (or the token's settings in Splunk) changes, so keep the events and alert.
_CONFIG_CODES: Mapping[int, str] = {
    7: "the index is not allowed for this token: fix `index` or the token's allowed indexes",
    10: "the token requires a channel",
    11: "the channel is not a GUID: fix `channel`",
    14: "the token has indexer acknowledgement disabled: turn `indexer_ack` off",
    16: "query-string tokens are disabled",
    # The health endpoint's own answers for a token it knows to be bad.
    21: "HEC does not know this token: fix `token`",
    22: "the token is disabled in Splunk: enable it or use another",
    # Splunk Cloud's "Data channel is missing" (Splunk Enterprise says code 10). Every request
    # carries the channel header, so something between us and HEC dropped it.
    28: "HEC got no channel: a proxy may drop the X-Splunk-Request-Channel header",
}
_SLOW_DOWN_CODES = frozenset({24, 25})
_WRONG_URL_STATUSES = frozenset({404, 405})
_WRONG_URL_HINT = wrong_url_hint("HEC")
_NO_DATA = 5


class SplunkHecConfig(HttpOutputConfig):
    token: SecretStr
    """The HEC token (a GUID), sent as `Authorization: Splunk <token>`."""
    source: str = Field(default="canary-forwarder", min_length=1)
    """The `source` of every event."""
    sourcetype: str | None = Field(default=None, min_length=1)
    """One sourcetype for every event. Default: the console's own, by kind of event
    (`canary_alerts`, `canary_console_audit`, `canary_test_connection`)."""
    index: str | None = Field(default=None, min_length=1)
    """Splunk index; must be in the token's allowed list. Default: the token's default index."""
    host: str | None = Field(default=None, min_length=1)
    """The `host` of every event. Default: the Canary's name, else left to HEC."""
    channel: UUID | None = None
    """The X-Splunk-Request-Channel GUID. Default: a new random one each time the output starts.
    One per sender: with indexer acknowledgement, another sender's ack on the same channel would
    confirm a request of this one's that was lost."""
    indexer_ack: bool = False
    """Count a batch as delivered only once the indexers acknowledge it (Splunk Enterprise)."""
    ack_timeout_secs: float = Field(default=60.0, gt=0, le=3600)
    """How long to wait for an acknowledgement before sending the batch again."""
    ack_poll_interval_secs: float = Field(default=1.0, gt=0, le=60)
    """Pause between two polls of /services/collector/ack."""
    max_request_bytes: int = Field(default=900_000, ge=1024)
    """Largest uncompressed request. Splunk Cloud refuses requests over 1 MB."""

    @model_validator(mode="after")
    def _base_url(self) -> Self:
        if not self.url:
            raise ValueError("url: at least one HEC URL is needed, e.g. https://splunk:8088")
        for url in self.url:
            if "/services/collector" in url:
                raise ValueError(
                    f"url: {url}: give the base URL (scheme, host, port), "
                    "without /services/collector"
                )
        return self

    def own_values(self) -> dict[str, str]:
        return {} if self.channel is None else {"channel": str(self.channel)}


def indexed_fields(event: CanaryEvent) -> dict[str, str]:
    """Index-time fields (flat strings, as HEC requires) to search and dedupe on."""
    fields = {
        "canary_event_id": event.id,
        "canary_fingerprint": event.fingerprint,
        "canary_kind": event.kind.value,
    }
    if event.log_type is not None:
        fields["canary_log_type"] = str(event.log_type)
    return fields


def hec_envelope(record: Record, config: SplunkHecConfig) -> dict[str, Any]:
    """The HEC event envelope of one record."""
    event = record.event
    envelope: dict[str, Any] = {
        # Epoch seconds with milliseconds, as a number: HEC's `time`.
        "time": round(event.timestamp.timestamp(), 3),
        "source": config.source,
        "sourcetype": config.sourcetype or splunk_sourcetype(event),
    }
    host = config.host or event.canary_name
    if host:
        envelope["host"] = host
    if config.index:
        envelope["index"] = config.index
    envelope["fields"] = indexed_fields(event)
    body = record.body
    envelope["event"] = body if isinstance(body, str | dict) else dict(body)
    return envelope


@dataclass(frozen=True, slots=True)
class HecReply:
    """HEC's JSON answer: `{"text", "code", "ackId"?, "invalid-event-number"?}`."""

    code: int | None
    text: str
    ack_id: int | None = None
    invalid_event_number: int | None = None
    names_an_event: bool = False
    """The answer has an `invalid-event-number`, usable or not."""

    @classmethod
    def of(cls, answer: HttpAnswer) -> HecReply:
        data = answer.json()
        if not isinstance(data, dict):
            return cls(None, answer.text())
        return cls(
            code=_integer(data.get("code")),
            text=str(data.get("text", "")) or answer.text(),
            ack_id=_integer(data.get("ackId")),
            invalid_event_number=_integer(data.get("invalid-event-number")),
            names_an_event="invalid-event-number" in data,
        )

    def describe(self) -> str:
        return f"HEC code {self.code}: {self.text}" if self.code is not None else self.text


def _config_hint(code: int | None) -> str | None:
    return None if code is None else _CONFIG_CODES.get(code)


def _integer(value: Any) -> int | None:
    """An integer, or its decimal digits as a string (a proxy or an HEC look-alike may quote
    it); None for anything else, booleans included."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class _PendingAck:
    """An accepted request whose events count only once its `ack_id` is acknowledged."""

    endpoint: URL
    ack_id: int
    positions: list[int]
    """The batch positions of the events HEC accepted under this id."""


def _with_unconfirmed(result: SendResult, unconfirmed: Mapping[int, Retry]) -> SendResult:
    """`result` with the batch positions whose ack did not come marked for a resend."""
    if not unconfirmed or not isinstance(result, Delivered | Partial):
        return result  # a Retry, Reject or TooLarge for the whole batch had nothing accepted
    per_record: dict[int, Retry | Reject] = (
        dict(result.results) if isinstance(result, Partial) else {}
    )
    for position, retry in unconfirmed.items():
        per_record.setdefault(position, retry)
    return Partial(per_record)


class SplunkHecOutput(Output[SplunkHecConfig]):
    config_class = SplunkHecConfig

    def __init__(self, config: SplunkHecConfig) -> None:
        super().__init__(config)
        self.channel = str(config.channel or uuid4())
        self._client = HttpClient(
            config,
            [URL(url) for url in config.url],
            {
                "Authorization": f"Splunk {config.token.get_secret_value()}",
                CHANNEL_HEADER: self.channel,
            },
        )
        self._warned_ack_off = False
        self._token_proven_at: float | None = None
        """When HEC last took the token (monotonic clock): an accepted send or a passed check."""

    async def start(self) -> None:
        await self._client.start()

    async def reopen(self) -> None:
        await self._client.reopen()

    async def aclose(self) -> None:
        await self._client.aclose()

    # Sending

    async def send(self, batch: Sequence[Record]) -> SendResult:
        encoded = encode_batch(batch, self._envelope_line, self.config.max_request_bytes)
        if not isinstance(encoded, EncodedBatch):
            return encoded
        pending: list[_PendingAck] = []

        async def send_one(request: EncodedRequest) -> SendResult:
            return await self._send_request(request, pending)

        result = await encoded.send(send_one)
        if not pending:
            return result
        unconfirmed = await self._await_acks(pending)
        if (
            isinstance(result, Delivered)
            and len(unconfirmed) == len(batch)
            and len({id(retry) for retry in unconfirmed.values()}) == 1
        ):
            return next(iter(unconfirmed.values()))  # one request, never acknowledged
        return _with_unconfirmed(result, unconfirmed)

    async def _send_request(
        self, request: EncodedRequest, pending: list[_PendingAck]
    ) -> SendResult:
        node = self._client.pick()
        answer = await self._client.request(
            "POST",
            EVENT_PATH,
            endpoint=node,
            body=request.body,
            headers={"Content-Type": "application/json"},
            compress=self.config.gzip,
        )
        return self._wait_where_asked(node, self._classify(answer, request, pending))

    def _wait_where_asked(self, node: URL, result: SendResult) -> SendResult:
        """Keep `node`'s `Retry-After` to itself: the retry waits only as long as the soonest
        node it may go to, so one busy indexer does not hold back the others."""
        if not isinstance(result, Retry) or not result.retry_after:
            return result
        # Capped as the dispatcher caps its own wait: a Retry-After date is read against this
        # host's wall clock, and one a year behind (booted before NTP stepped it) made the node
        # sit out a year on the monotonic clock, long after the clock was put right.
        hold = min(result.retry_after, self.config.retry.max_backoff_secs)
        soonest = self._client.hold(node, hold)
        return replace(result, retry_after=soonest or None)

    def _envelope_line(self, record: Record) -> bytes:
        if isinstance(record.body, str) and not record.body.strip():
            raise ValueError("blank record: HEC refuses an empty event (code 13)")
        return orjson.dumps(hec_envelope(record, self.config)) + b"\n"

    def _classify(
        self, answer: HttpAnswer | Retry, request: EncodedRequest, pending: list[_PendingAck]
    ) -> SendResult:
        """What HEC's answer means for the events of `request` (positions 0..n-1 in it); an
        accepted request with an `ackId` is added to `pending` under its batch positions."""
        if isinstance(answer, Retry):
            return answer
        reply = HecReply.of(answer)
        where = endpoint_name(answer.endpoint)
        count = len(request.sent)
        if answer.status in (401, 403):
            # A revoked token: the next liveness check probes it and reports the output down.
            self._token_proven_at = None
        if 200 <= answer.status <= 299:
            if reply.code is None:
                # HEC answers every post with its JSON and a code ({"text":"Success","code":0}).
                # A 200 without it is a proxy's page (a maintenance page, a captive portal):
                # taken for delivery, the events would be acked and gone.
                return Retry(
                    f"{where}: HTTP {answer.status} without HEC's answer: {reply.describe()}: "
                    f"{_WRONG_URL_HINT}",
                    operator_action=True,
                )
            self._token_proven_at = time.monotonic()
            if reply.code in _SLOW_DOWN_CODES:
                log.warning("Splunk asks senders to slow down.", output=self.name, hec=reply.text)
            self._expect_ack(answer.endpoint, reply.ack_id, request.sent, pending)
            return Delivered()
        bad = reply.invalid_event_number
        if answer.status == 400 and bad is not None and 0 <= bad < count:
            return self._split_at(bad, request, reply, answer.endpoint, pending)
        message = reply.describe()
        if answer.status == 400 and reply.names_an_event:
            number = "unreadable" if bad is None else str(bad)
            message += (
                f" (invalid-event-number {number} is not one of the {count} events sent, "
                "so HEC's answer cannot tell which event it refused)"
            )
        hint = _config_hint(reply.code)
        if answer.status == 400 and hint is not None:
            return Retry(f"{where}: {message}: {hint}", operator_action=True)
        # HEC refuses bad events with its own JSON and a code; a missing route, or a page
        # from a proxy, is the URL's fault and would refuse every event alike.
        return classify_refusal(
            answer,
            message,
            server="HEC",
            from_server=answer.status not in _WRONG_URL_STATUSES and reply.code is not None,
        )

    def _split_at(
        self,
        bad: int,
        request: EncodedRequest,
        reply: HecReply,
        endpoint: URL,
        pending: list[_PendingAck],
    ) -> Partial:
        """HEC indexed the envelopes before `bad`, refused `bad` and did not read the rest."""
        where = endpoint_name(endpoint)
        results: dict[int, Retry | Reject] = {}
        hint = _config_hint(reply.code)
        if hint is not None:
            results[bad] = Retry(f"{where}: {reply.describe()}: {hint}", operator_action=True)
        else:
            results[bad] = Reject(f"{where}: {reply.describe()} (HEC refused this event)")
        skipped = Retry(f"{where}: not indexed: HEC stopped at an invalid event before this one")
        results.update(dict.fromkeys(range(bad + 1, len(request.sent)), skipped))
        if bad > 0 and self.config.indexer_ack and reply.ack_id is None:
            # Nothing will acknowledge them, and a 400 says less than a 200 does: they are sent
            # again (a duplicate, told apart by canary_fingerprint) rather than taken on trust.
            # Not the token's ack being off either, which `_warn_ack_off` would say for good.
            unconfirmed = Retry(
                f"{where}: HEC split the batch without an ackId, so nothing acknowledges the "
                "events before the refused one: sending them again"
            )
            results.update(dict.fromkeys(range(bad), unconfirmed))
        elif bad > 0:
            self._expect_ack(endpoint, reply.ack_id, request.sent[:bad], pending)
        return Partial(results)

    def _expect_ack(
        self, endpoint: URL, ack_id: int | None, positions: list[int], pending: list[_PendingAck]
    ) -> None:
        if not self.config.indexer_ack:
            return
        if ack_id is None:
            self._warn_ack_off("HEC answers without an ackId")
            return
        pending.append(_PendingAck(endpoint, ack_id, list(positions)))

    async def _await_acks(self, pending: Sequence[_PendingAck]) -> dict[int, Retry]:
        """The batch positions whose ack did not come within `ack_timeout_secs`, each with the
        reason; each node is polled for all of its ids at once, the nodes side by side."""
        by_node: dict[URL, dict[int, list[int]]] = {}
        unconfirmed: dict[int, Retry] = {}
        for item in pending:
            ids = by_node.setdefault(item.endpoint, {})
            if item.ack_id in ids:
                # The node issued this id twice on our channel: it restarted in between and
                # forgot the first, whose events may be lost.
                stale = Retry(
                    f"{endpoint_name(item.endpoint)}: ackId {item.ack_id} issued twice (HEC "
                    "restarted); sending again"
                )
                unconfirmed.update(dict.fromkeys(ids[item.ack_id], stale))
            ids[item.ack_id] = item.positions
        deadline = asyncio.get_running_loop().time() + self.config.ack_timeout_secs
        outcomes = await asyncio.gather(
            *(self._poll_node(node, sorted(ids), deadline) for node, ids in by_node.items())
        )
        for (_, ids), failed in zip(by_node.items(), outcomes, strict=True):
            for ack_id, retry in failed.items():
                unconfirmed.update(dict.fromkeys(ids[ack_id], retry))
        return unconfirmed

    async def _poll_node(
        self, endpoint: URL, ack_ids: list[int], deadline: float
    ) -> dict[int, Retry]:
        """The ids `endpoint` did not acknowledge by `deadline` (loop time), with the reason.

        Polls run until the deadline, the last one at the deadline itself, and each has the
        whole request timeout: a poll cut short by our own deadline would fail on our side,
        hide HEC's answer and bench a node that was answering. Running out of time is no
        fault of the node, so it is never benched for it.
        """
        loop = asyncio.get_running_loop()
        remaining = list(ack_ids)
        every_answer_false = True
        while True:
            answer = await self._client.request(
                "POST",
                ACK_PATH,
                endpoint=endpoint,  # ack ids belong to the node (and channel) that issued them
                body=orjson.dumps({"acks": remaining}),
                headers={"Content-Type": "application/json"},
                params={"channel": self.channel},
            )
            answered_false = False
            if isinstance(answer, Retry):
                last = f"the last poll failed: {answer.reason}"
            else:
                acked, trouble = self._ack_state(answer, remaining)
                remaining = [ack_id for ack_id in remaining if ack_id not in acked]
                if not remaining:
                    return {}
                answered_false = trouble is None
                last = trouble or "the last poll answered false"
            every_answer_false = every_answer_false and answered_false
            left = deadline - loop.time()
            if left <= 0:
                outcome = "HEC kept answering false" if every_answer_false else last
                return {
                    ack_id: Retry(
                        f"{endpoint_name(endpoint)}: ackId {ack_id} not acknowledged within "
                        f"{self.config.ack_timeout_secs:g} s ({outcome}); sending again"
                    )
                    for ack_id in remaining
                }
            # The one sleep in an output: HEC's ack protocol is a poll.
            await asyncio.sleep(min(self.config.ack_poll_interval_secs, left))

    def _ack_state(self, answer: HttpAnswer, ack_ids: list[int]) -> tuple[set[int], str | None]:
        """(the ids acknowledged, what went wrong with the poll or None for a plain answer).

        Ack switched off on the token counts as acknowledged.
        """
        data = answer.json()
        if answer.status == 200 and isinstance(data, dict) and isinstance(data.get("acks"), dict):
            acks = data["acks"]
            return {ack_id for ack_id in ack_ids if acks.get(str(ack_id)) is True}, None
        reply = HecReply.of(answer)
        if reply.code == 14:
            self._warn_ack_off(reply.describe())
            return set(ack_ids), None
        return set(), f"the last poll answered HTTP {answer.status}: {reply.describe()}"

    def _warn_ack_off(self, sign: str) -> None:
        if not self._warned_ack_off:
            self._warned_ack_off = True
            log.warning(
                "indexer_ack is on but the token has acknowledgement off; trusting the 200.",
                output=self.name,
                sign=sign,
            )

    # Healthcheck

    async def healthcheck(self) -> None:
        """Healthy when some node answers the health endpoint and accepts the token.

        The token check posts an empty body: HEC answers code 5 "No data" to a valid token and
        401/403 to a bad one, so nothing is indexed, but Splunk counts and logs that 400 as an
        HEC error. With `indexer_ack`, an empty ack poll checks that the token really has
        acknowledgement on.
        """
        await self._client.check_nodes(self._full_check)

    async def liveness(self) -> None:
        """Healthy when some node's `GET /services/collector/health` answers 200; every 30 s.

        The healthcheck's empty post, made every 30 s, would put a 400 "No data" into Splunk's
        HEC error counts and splunkd.log twice a minute for as long as the daemon runs; the
        health endpoint writes and counts nothing. It carries the token, and Splunk documents a
        400 there for a bad or disabled one (codes 21, 22), but a 200 is not taken as proof of
        the token: a Splunk that ignored the header there was seen answering 200 to a bad one.
        An accepted send or a passed check proves the token for `TOKEN_PROOF_SECS`; when
        nothing has (at start, after a send answered 401/403, or after that long idle), the
        node that answered healthy is also asked to take it: the healthcheck's empty post, or
        with `indexer_ack` only its empty ack poll, which HEC answers 200.
        """
        await self._client.check_nodes(self._live_check)

    async def _full_check(self, endpoint: URL) -> str | None:
        problem = (
            await self._health_problem(endpoint)
            or await self._probe_post_problem(endpoint)
            or (await self._ack_poll_problem(endpoint) if self.config.indexer_ack else None)
        )
        if problem is None:
            self._token_proven_at = time.monotonic()
        return problem

    async def _live_check(self, endpoint: URL) -> str | None:
        problem = await self._health_problem(endpoint)
        if problem is not None or not self._token_proof_due():
            return problem
        # With acks on, the empty ack poll proves all the empty post does (token, channel),
        # and HEC answers it 200: no error in Splunk's counts at all.
        if self.config.indexer_ack:
            problem = await self._ack_poll_problem(endpoint)
        else:
            problem = await self._probe_post_problem(endpoint)
        if problem is None:
            self._token_proven_at = time.monotonic()
        return problem

    def _token_proof_due(self) -> bool:
        proven = self._token_proven_at
        return proven is None or time.monotonic() - proven >= TOKEN_PROOF_SECS

    async def _health_problem(self, endpoint: URL) -> str | None:
        """Why `GET /services/collector/health` on `endpoint` is not a 200, or None."""
        health = await self._client.request("GET", HEALTH_PATH, endpoint=endpoint)
        if isinstance(health, Retry):
            return health.reason
        if health.status == 200:
            return None
        reply = HecReply.of(health)
        problem = f"{endpoint_name(endpoint)}: health: HTTP {health.status}: {reply.describe()}"
        if health.status in _WRONG_URL_STATUSES:
            return f"{problem}: {_WRONG_URL_HINT}"
        hint = _config_hint(reply.code) if health.status == 400 else None
        return f"{problem}: {hint}" if hint else problem

    async def _probe_post_problem(self, endpoint: URL) -> str | None:
        """Why `endpoint` refuses this token for an empty event post (HEC's code 5 passes)."""
        return await self._post_problem(
            endpoint,
            "probe send",
            EVENT_PATH,
            b"",
            # With HEC's code: a proxy's 200 page is not HEC taking the token.
            passes=lambda status, code: (
                code is not None and (200 <= status <= 299 or (status == 400 and code == _NO_DATA))
            ),
        )

    async def _ack_poll_problem(self, endpoint: URL) -> str | None:
        """Why an empty ack poll on this output's channel is not a 200 (code 14: acks off)."""
        return await self._post_problem(
            endpoint,
            "ack poll",
            ACK_PATH,
            b'{"acks":[]}',
            passes=lambda status, _: status == 200,
            params={"channel": self.channel},
        )

    async def _post_problem(
        self,
        endpoint: URL,
        what: str,
        path: str,
        body: bytes,
        *,
        passes: Callable[[int, int | None], bool],
        params: Mapping[str, str] | None = None,
    ) -> str | None:
        """Why a check's POST to `path` did not pass (`passes` gets the status and HEC code)."""
        answer = await self._client.request(
            "POST",
            path,
            endpoint=endpoint,
            body=body,
            headers={"Content-Type": "application/json"},
            params=params,
        )
        if isinstance(answer, Retry):
            return answer.reason
        reply = HecReply.of(answer)
        if passes(answer.status, reply.code):
            return None
        hint = _config_hint(reply.code) or ""
        where = endpoint_name(endpoint)
        return f"{where}: {what}: HTTP {answer.status}: {reply.describe()} {hint}".strip()
