"""`elasticsearch`: records as documents, one `_bulk` request per batch (Elasticsearch, OpenSearch).

Every record becomes a `create` action with `_id` = the event's fingerprint, so sending a batch
again never duplicates a document: Elasticsearch answers 409 for one it already has, and that
counts as delivered. The default target is the data stream `logs-thinkst_canary.alert-default`.
Text records (CEF, LEEF, syslog lines) become `{"@timestamp", "message"}` documents, and a
document without `@timestamp` gets the event's, as data streams require.

The bulk answer is read item by item (docs/outputs-http.md has the table): 429 and 5xx items are
sent again on their own, 400-class items (and an ingest `fail` processor's 500) go to dead
letters with the error type and reason, and a missing, closed, unwritable or misnamed target
keeps the events and asks an operator. A document a data stream's failure store took
(Elasticsearch 9.1+) is delivered, with a warning. The request uses plain `application/x-ndjson`
and no compatibility media types, so OpenSearch takes it too; `refresh` is never set.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any, Self

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from forwarder.credentials import basic_auth_username
from forwarder.events import iso_ms
from forwarder.mappers.base import Record
from forwarder.outputs._http import (
    EncodedRequest,
    HttpAnswer,
    HttpClient,
    HttpOutputConfig,
    answer_error_text,
    classify_refusal,
    endpoint_name,
    parse_base_url,
    parse_retry_after,
    send_packed,
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
    "DEFAULT_INDEX",
    "ElasticsearchConfig",
    "ElasticsearchOutput",
    "bulk_item_result",
    "decode_cloud_id",
    "es_document",
]

log = structlog.get_logger("forwarder.outputs.elasticsearch")

DEFAULT_INDEX = "logs-thinkst_canary.alert-default"
BULK_PATH = "/_bulk"
# One entry per item survives this filter (every item has a status), so items still line up
# with the request; filtering on `items.*.error` alone would drop the successful ones.
FILTER_PATH = ",".join(
    [
        "errors",
        "items.*.status",
        "items.*.failure_store",
        "items.*.error.type",
        "items.*.error.reason",
        "items.*.error.caused_by.type",
        "items.*.error.caused_by.reason",
    ]
)
HEALTHCHECK_ID = "canary-forwarder-healthcheck"
# A JSON string is valid NDJSON but can never be a document: Elasticsearch resolves the target,
# checks the credentials and the privileges, then refuses the item with a 400. Nothing is written.
_HEALTHCHECK_SOURCE = b'"canary-forwarder healthcheck: not a document"\n'
_INDEX_FORBIDDEN = re.compile(r'[\\/*?"<>| ,#:]')
# How a node refuses the probe's source once everything before indexing it has passed.
_PROBE_REFUSALS = ("parse_exception", "parsing_exception", "x_content_exception")
_MISSING_PIPELINE = re.compile(r"pipeline with id \[.*\] does not exist")
_NO_WRITE_INDEX = re.compile(r"no write index is defined for alias \[.*\]")
# An ingest `fail` processor throws a plain exception, which a bulk item reports as 500 although
# the document is refused for good (every other processor failure is a 400 since 7.5).
_DOCUMENT_REFUSALS_5XX = ("fail_processor_exception",)
# Elasticsearch and OpenSearch answer a refused request alike, with `{"error": …, "status": N}`.
_SERVER = "Elasticsearch or OpenSearch"
_WRONG_URL_HINT = wrong_url_hint(_SERVER)


class ElasticsearchConfig(HttpOutputConfig):
    cloud_id: str | None = None
    """Elastic Cloud ID (`<name>:<base64>`, the name optional), instead of `url`."""
    api_key: SecretStr | None = None
    """API key: the `encoded` value of the create-API-key answer, or `id:key`."""
    username: str | None = Field(default=None, min_length=1)
    """Basic auth user (with `password`); the way to authenticate to OpenSearch."""
    password: SecretStr | None = None
    index: str = DEFAULT_INDEX
    """Data stream (`<type>-<dataset>-<namespace>`) or index the documents are created in."""
    pipeline: str | None = Field(default=None, min_length=1)
    """Ingest pipeline to run (`?pipeline=`); `_none` skips the target's default pipeline."""

    @field_validator("username")
    @classmethod
    def _basic_auth_user(cls, value: str | None) -> str | None:
        # Refused here, or aiohttp refuses to build the credentials and the daemon stops at start.
        return None if value is None else basic_auth_username(value)

    @field_validator("index")
    @classmethod
    def _index_name(cls, value: str) -> str:
        if value.lower() != value:
            # Elasticsearch wants `index.toLowerCase(Locale.ROOT).equals(index)`: capitals in any
            # script, not only A-Z, fail every document with invalid_index_name_exception.
            raise ValueError(
                f"{value!r} is not an index or data stream name: it must be lowercase "
                f"({value.lower()!r})"
            )
        if (
            not value
            or value in (".", "..")
            or value[0] in "-_+"
            or _INDEX_FORBIDDEN.search(value)
            or len(value.encode()) > 255
        ):
            raise ValueError(
                f"{value!r} is not an index or data stream name: lowercase, at most 255 bytes, "
                'none of \\ / * ? " < > | , # : or space, not starting with - _ +'
            )
        return value

    @model_validator(mode="after")
    def _target_and_auth(self) -> Self:
        if bool(self.url) == (self.cloud_id is not None):
            raise ValueError("give either url or cloud_id")
        if self.cloud_id is not None:
            decode_cloud_id(self.cloud_id)
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.api_key is not None and self.username is not None:
            raise ValueError("give either api_key or username and password")
        return self

    def base_urls(self) -> list[URL]:
        if self.cloud_id is not None:
            return [decode_cloud_id(self.cloud_id)]
        return [URL(url) for url in self.url]

    def auth_header(self) -> dict[str, str]:
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if ":" in key:  # "id:key" as printed by Kibana; the header wants it base64-encoded
                key = base64.b64encode(key.encode()).decode()
            return {"Authorization": f"ApiKey {key}"}
        if self.username is not None and self.password is not None:
            password = self.password.get_secret_value()
            return {"Authorization": aiohttp.encode_basic_auth(self.username, password)}
        return {}


def decode_cloud_id(cloud_id: str) -> URL:
    """The Elasticsearch URL in an Elastic Cloud ID, decoded as Beats, Logstash and Kibana do.

    The ID is `[<name>:]<base64 of "host[:port]$es_uuid[:port]$kibana_uuid[:port]">`; the URL is
    `https://<es_uuid>.<host>:<port>`, the port being the ES UUID's, else the host's, else 443.
    """
    encoded = cloud_id.strip().rpartition(":")[2]  # base64 has no ':'; the name may
    problem = "cloud_id is not [<name>:]<base64 of host$es_uuid$kibana_uuid>"
    if not encoded:
        raise ValueError(problem)
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(problem) from None
    parts = decoded.split("$")
    if len(parts) < 2:
        raise ValueError(problem)
    host, host_port = _name_and_port(parts[0], "443", problem)
    es_uuid, port = _name_and_port(parts[1], host_port, problem)
    if not host or not es_uuid:
        raise ValueError(problem)
    try:
        return parse_base_url(f"https://{es_uuid}.{host}:{port}")
    except ValueError:
        raise ValueError(f"{problem}: decodes to no URL") from None


def _name_and_port(word: str, default_port: str, problem: str) -> tuple[str, str]:
    """`name[:port]` of a Cloud ID part: the name and the port (`default_port` when absent)."""
    name, separator, port = word.partition(":")
    if not separator:
        return name, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{problem}: bad port {port!r}")
    return name, port


def es_document(record: Record) -> dict[str, Any]:
    """The document of one record: text is wrapped as `message`; `@timestamp` always present."""
    timestamp = iso_ms(record.event.timestamp)
    if isinstance(record.body, str):
        return {"@timestamp": timestamp, "message": record.body}
    document = dict(record.body)
    document.setdefault("@timestamp", timestamp)
    return document


def _error_text(error: Any) -> tuple[str, str]:
    """(type, reason with its cause) of a bulk item error."""
    if not isinstance(error, Mapping):
        return "error", str(error)
    kind = str(error.get("type", "error"))
    reason = str(error.get("reason", ""))
    cause = error.get("caused_by")
    if isinstance(cause, Mapping) and cause.get("reason"):
        reason += f" (caused by {cause.get('type', 'error')}: {cause['reason']})"
    return kind, reason


def bulk_item_result(
    item: Any, index: str, retry_after: float | None = None
) -> Retry | Reject | None:
    """What one item of a bulk answer means; None when the document is in the index."""
    if not isinstance(item, Mapping) or len(item) != 1:
        return Retry(f"unreadable bulk item {item!r:.100}")
    (outcome,) = item.values()
    status = outcome.get("status") if isinstance(outcome, Mapping) else None
    if not isinstance(status, int):
        return Retry(f"bulk item without a status: {item!r:.100}")
    if 200 <= status <= 299 or status == 409:
        # 409 on `create`: a document with this _id exists, i.e. an earlier send arrived.
        return None
    kind, reason = _error_text(outcome.get("error"))
    text = f"{status} {kind}: {reason}"
    if kind in _DOCUMENT_REFUSALS_5XX:
        return Reject(text)
    if status == 429 or status >= 500:
        return Retry(text, retry_after=retry_after)
    if status == 404 or kind == "index_not_found_exception":
        return Retry(
            f"missing index / data stream {index!r}: config error (create it, or an index "
            f"template with data_stream for it): {text}",
            operator_action=True,
        )
    if status in (401, 403):
        return Retry(f"not allowed to write to {index!r}: {text}", operator_action=True)
    # Every document would fail alike until the target is fixed: not the document's fault.
    if kind == "index_closed_exception":
        return Retry(f"index {index!r} is closed: config error: {text}", operator_action=True)
    if kind == "invalid_index_name_exception":
        return Retry(
            f"Elasticsearch refuses the index name {index!r}: config error: {text}",
            operator_action=True,
        )
    if _NO_WRITE_INDEX.search(reason):
        return Retry(
            f"alias {index!r} has no write index: config error: {text}", operator_action=True
        )
    if _MISSING_PIPELINE.search(reason):
        return Retry(f"ingest pipeline missing: config error: {text}", operator_action=True)
    return Reject(text)


def _is_elasticsearch_error(answer: HttpAnswer) -> bool:
    """True for a body in the form Elasticsearch refuses a request with: an object with "error"."""
    data = answer.json()
    return isinstance(data, dict) and "error" in data


def _failure_store_used(item: Any) -> bool:
    """True for an item a data stream's failure store took instead of the data stream."""
    if not isinstance(item, Mapping) or len(item) != 1:
        return False
    (outcome,) = item.values()
    return isinstance(outcome, Mapping) and outcome.get("failure_store") == "used"


class ElasticsearchOutput(Output[ElasticsearchConfig]):
    config_class = ElasticsearchConfig

    def __init__(self, config: ElasticsearchConfig) -> None:
        super().__init__(config)
        self._client = HttpClient(config, config.base_urls(), config.auth_header())
        self._params = {"filter_path": FILTER_PATH}
        if config.pipeline is not None:
            self._params["pipeline"] = config.pipeline

    async def start(self) -> None:
        await self._client.start()

    async def reopen(self) -> None:
        await self._client.reopen()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _action(self, doc_id: str) -> bytes:
        return orjson.dumps({"create": {"_index": self.config.index, "_id": doc_id}}) + b"\n"

    async def _bulk(self, body: bytes, endpoint: URL | None = None) -> HttpAnswer | Retry:
        return await self._client.request(
            "POST",
            BULK_PATH,
            endpoint=endpoint,
            body=body,
            headers={"Content-Type": "application/x-ndjson"},
            params=self._params,
            compress=self.config.gzip,
        )

    # Sending

    async def send(self, batch: Sequence[Record]) -> SendResult:
        return await send_packed(
            batch, self._bulk_lines, self.config.max_request_bytes, self._send_request
        )

    async def _send_request(self, request: EncodedRequest) -> SendResult:
        answer = await self._bulk(request.body)
        if isinstance(answer, Retry):
            return answer
        items = self._bulk_items(answer, len(request.sent))
        if not isinstance(items, list):
            return items
        redirected = sum(1 for item in items if _failure_store_used(item))
        if redirected:
            # Stored, but in `<index>::failures`, where searches of the index do not look.
            log.warning(
                "Elasticsearch stored documents in the failure store, not the data stream: "
                "their mapping or ingest pipeline refused them.",
                output=self.name,
                count=redirected,
                failures=f"{self.config.index}::failures",
            )
        return self._item_results(items, answer)

    def _bulk_lines(self, record: Record) -> bytes:
        source = orjson.dumps(es_document(record))
        return self._action(record.event.fingerprint) + source + b"\n"

    def _classify(self, answer: HttpAnswer | Retry, count: int) -> SendResult:
        if isinstance(answer, Retry):
            return answer
        items = self._bulk_items(answer, count)
        return self._item_results(items, answer) if isinstance(items, list) else items

    def _bulk_items(self, answer: HttpAnswer, count: int) -> list[Any] | SendResult:
        """The items of a bulk answer for `count` documents, or the whole request's result."""
        where = endpoint_name(answer.endpoint)
        if not 200 <= answer.status <= 299:
            return self._request_failed(answer)
        data = answer.json()
        if data is None:
            # A proxy's page, or a body cut short: nothing says what the node did.
            content_type = answer.headers.get("Content-Type", "no Content-Type")
            return Retry(
                f"{where}: HTTP {answer.status} answer is not JSON ({content_type}), not a bulk "
                f"answer: {answer.text()}"
            )
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != count:
            found = len(items) if isinstance(items, list) else "no"
            return Retry(f"{where}: bulk answer has {found} items for {count} documents")
        return items

    def _item_results(self, items: list[Any], answer: HttpAnswer) -> SendResult:
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        results: dict[int, Retry | Reject] = {}
        for position, item in enumerate(items):
            outcome = bulk_item_result(item, self.config.index, retry_after)
            if outcome is not None:
                results[position] = outcome
        return Partial(results) if results else Delivered()

    def _request_failed(self, answer: HttpAnswer) -> SendResult:
        where = endpoint_name(answer.endpoint)
        message = answer_error_text(answer)
        if answer.status == 404 or "no handler found for uri" in message:
            # Not about one document: a wrong URL (path prefix) or a missing target. A node
            # answers an unknown path with 400 "no handler found", a reverse proxy with 404.
            return Retry(
                f"{where}: HTTP {answer.status} for {BULK_PATH}: {message}: check url and index",
                operator_action=True,
            )
        if answer.status == 400 and "type is missing" in message:
            # Elasticsearch 6 wants a mapping type on every action; 8 refuses one. No batch
            # would ever pass, so the events wait for an upgrade rather than dead-lettering.
            return Retry(
                f"{where}: HTTP 400: {message}: Elasticsearch 6.x needs a mapping type (_type) "
                "this output does not send: upgrade to Elasticsearch 7 or later, or OpenSearch",
                operator_action=True,
            )
        # Elasticsearch refuses a bad request in its own JSON: that one is rejected. A refusal
        # without it (nginx's "plain HTTP request was sent to HTTPS port", a 405 from another
        # vhost, a proxy's 415) comes from something else at the URL, and would refuse every
        # batch alike: the events wait for an operator instead of all going to dead letters.
        return classify_refusal(
            answer, message, server=_SERVER, from_server=_is_elasticsearch_error(answer)
        )

    # Healthcheck

    async def healthcheck(self) -> None:
        """Healthy when some node takes a bulk `create` into `index` as far as a send goes.

        The probe is a real `_bulk` request (same URL, credentials, gzip, pipeline and target)
        whose one document is a JSON string: the node answers 401 for bad credentials, a 403
        or 404 item for missing privileges or a missing index / data stream and template, and
        a 400 item when everything up to indexing is fine. Nothing is written.
        """
        body = self._action(HEALTHCHECK_ID) + _HEALTHCHECK_SOURCE

        async def probe(endpoint: URL) -> str | None:
            return self._probe_problem(await self._bulk(body, endpoint))

        await self._client.check_nodes(probe)

    async def liveness(self) -> None:
        """Healthy when some node answers `GET /` as Elasticsearch and takes the credentials.

        The healthcheck's probe document would land in a data stream's failure store (9.1+),
        once every 30 s; a read writes nothing. 403 still proves the credentials: a key that
        may only write documents is refused the cluster's info, as it should be.
        """
        await self._client.check_nodes(self._root_problem)

    async def _root_problem(self, endpoint: URL) -> str | None:
        answer = await self._client.request("GET", "/", endpoint=endpoint)
        if isinstance(answer, Retry):
            return answer.reason
        problem = f"{endpoint_name(endpoint)}: HTTP {answer.status}"
        if answer.status == 401 or answer.status >= 500:
            return problem
        if 400 <= answer.status <= 499 and not _is_elasticsearch_error(answer):
            # Something else answers at the URL, and every send would wait for an operator.
            return f"{problem}: {answer.text()}: {_WRONG_URL_HINT}"
        return None

    def _probe_problem(self, answer: HttpAnswer | Retry) -> str | None:
        result = self._classify(answer, 1)
        if isinstance(result, Delivered):
            return None
        if not isinstance(result, Partial):
            return result.reason
        item = result.results.get(0)
        if item is None:
            return None
        if isinstance(item, Reject) and any(kind in item.reason for kind in _PROBE_REFUSALS):
            return None  # refused as a document, after every check a send goes through
        return item.reason
