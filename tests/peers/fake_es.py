"""A protocol-faithful Elasticsearch (or OpenSearch) bulk endpoint for tests and benchmarks.

What it implements, as the bulk API specification documents it:

- `POST|PUT /_bulk` and `/{target}/_bulk`: NDJSON (every line ends with `\\n`), gzip bodies,
  `Content-Type` `application/x-ndjson` or `application/json` (the `vnd.elasticsearch`
  compatibility types too, but 406 for them with `flavor="opensearch"`), `filter_path`,
  `pipeline`, `http.max_content_length` -> 413 (counted on the body as read, after gunzipping,
  as Netty's aggregator sits behind the decompressor). With `require_type` it is Elasticsearch
  6: an action without `_type` fails the whole request (400 "type is missing").
- Per item, in request order, each independent of the others: 201 `created`; 409
  `version_conflict_engine_exception` for a `create` whose `_id` exists; 400
  `document_parsing_exception` (`mapper_parsing_exception` for OpenSearch) for a source that is
  not an object, a data stream document without `@timestamp`, or an `_id` in `poison`; 400
  `illegal_argument_exception` for anything but `create` on a data stream; 404
  `index_not_found_exception` when no data stream template matches and auto-creation is off;
  400 `index_closed_exception` for an index in `closed`; 500 `fail_processor_exception` when a
  pipeline in `failing_pipelines` runs (its `fail` processor throws a plain exception);
  scripted per-`_id` errors (`item_faults`, e.g. 429 `es_rejected_execution_exception`).
- Failure store (Elasticsearch 8.19 / 9.1+, not OpenSearch): for a data stream in
  `failure_store`, a document refused by its pipeline or its mapping is stored in
  `indices[name].failures` and answered 201 with `"failure_store": "used"` and the failure
  index as `_index`; for any other data stream such a refusal carries
  `"failure_store": "not_enabled"`. Backpressure (429) and version conflicts are never
  redirected.
- OpenSearch has no built-in index templates: with `flavor="opensearch"` no name is a data stream
  unless `data_stream_patterns` says so.
- Security when `api_keys` or `users` are given: `Authorization: ApiKey <base64(id:key)>` or
  Basic; 401 `security_exception` otherwise (no `ApiKey` scheme for OpenSearch).
- A few read routes the real-peer tests use: `HEAD|GET /{index}`, `POST /{index}/_refresh`,
  `GET|POST /{index}/_count` (with an `ids` query) and `GET /{index}/_doc/{id}`.
- Whole-request faults in `faults` (a `FaultScript`: 429 storms, 503, delays, resets).

Every stored document is in `indices[name].docs`. As a module:
`python -m tests.peers.fake_es --port 0 [--api-key ENCODED] [--flavor opensearch]`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import json
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from tests.peers._server import BodyError, FakePeer, json_response, serve_standalone

__all__ = ["FakeEs", "Index", "ItemError", "encode_api_key"]

Flavor = Literal["elasticsearch", "opensearch"]
_BULK_TYPES = ("application/x-ndjson", "application/json")
_COMPAT_TYPES = ("application/vnd.elasticsearch+x-ndjson", "application/vnd.elasticsearch+json")
_BUILT_IN_DATA_STREAMS = ("logs-*-*", "metrics-*-*", "traces-*-*")


def encode_api_key(key_id: str, key: str) -> str:
    """The `encoded` form Elasticsearch's create-API-key answer gives: base64("id:key")."""
    return base64.b64encode(f"{key_id}:{key}".encode()).decode()


@dataclass(frozen=True, slots=True)
class ItemError:
    """One scripted per-item failure."""

    status: int
    type: str
    reason: str


@dataclass(slots=True)
class Index:
    name: str
    data_stream: bool
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrivals: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Failure store documents (`<name>::failures`): the refused source and the error."""

    @property
    def backing_index(self) -> str:
        # Data streams write to a hidden backing index, which is what bulk items report.
        return f".ds-{self.name}-2026.01.01-000001" if self.data_stream else self.name

    @property
    def failure_index(self) -> str:
        return f".fs-{self.name}-2026.01.01-000001"


class _ItemFailure(Exception):
    def __init__(self, error: ItemError, *, document: bool = False) -> None:
        super().__init__(error.reason)
        self.error = error
        self.document = document
        """The document's own fault (its pipeline or mapping): what a failure store takes."""


class FakeEs(FakePeer):
    def __init__(
        self,
        *,
        api_keys: Collection[str] = (),
        users: Mapping[str, str] | None = None,
        flavor: Flavor = "elasticsearch",
        max_content_length: int = 100 * 1024 * 1024,
        data_stream_patterns: Iterable[str] | None = None,
        auto_create_index: bool = True,
        failure_store: Iterable[str] = (),
        require_type: bool = False,
    ) -> None:
        super().__init__()
        self.api_keys = set(api_keys)
        self.users = dict(users or {})
        self.flavor: Flavor = flavor
        self.max_content_length = max_content_length
        if data_stream_patterns is None:
            # Elasticsearch's built-in templates; OpenSearch has none.
            data_stream_patterns = _BUILT_IN_DATA_STREAMS if flavor == "elasticsearch" else ()
        self.data_stream_patterns = tuple(data_stream_patterns)
        self.auto_create_index = auto_create_index
        self.failure_store = set(failure_store) if flavor == "elasticsearch" else set()
        """Data stream names (or patterns) whose failure store is on."""
        self.require_type = require_type
        """Elasticsearch 6: every action must name a `_type`."""
        self.closed: set[str] = set()
        """Index names that are closed (per-item 400 `index_closed_exception`)."""
        self.failing_pipelines: dict[str, str] = {}
        """Pipelines whose `fail` processor refuses every document, with its message."""
        self.truncate_answers = 0
        """How many of the next bulk answers are cut off halfway (after the work is done)."""
        self.indices: dict[str, Index] = {}
        self.poison: set[str] = set()
        self.pipelines: set[str] | None = None
        """Ingest pipelines that exist (None: any name); `?pipeline=` naming another fails."""
        self.forbidden: set[str] = set()
        """Index names the credentials may not write to (per-item 403)."""
        self.item_faults: dict[str, deque[ItemError]] = {}
        self.bulk_requests = 0
        self._auto_ids = 0
        router = self.app.router
        router.add_get("/", self._root_route)
        for method in ("POST", "PUT"):
            router.add_route(method, "/_bulk", self._bulk_route)
            router.add_route(method, "/{target}/_bulk", self._bulk_route)
        router.add_post("/{index}/_refresh", self._refresh_route)
        router.add_route("*", "/{index}/_count", self._count_route)
        router.add_route("*", "/{index}/_search", self._search_route)
        router.add_get("/{index}/_doc/{id}", self._doc_route)
        router.add_get("/{index}", self._index_route)  # HEAD is routed along with GET
        router.add_route("*", "/{path:.*}", self._no_handler_route)

    # What arrived

    def docs(self, index: str) -> dict[str, dict[str, Any]]:
        found = self.indices.get(index)
        return {} if found is None else found.docs

    def all_ids(self) -> list[str]:
        return [doc_id for index in self.indices.values() for doc_id in index.docs]

    def fail_item(self, doc_id: str, *errors: ItemError) -> None:
        """The next attempts to write `doc_id` fail with `errors`, one per attempt."""
        self.item_faults.setdefault(doc_id, deque()).extend(errors)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "bulk_requests": self.bulk_requests,
            "documents": sum(len(index.docs) for index in self.indices.values()),
        }

    def reset(self) -> None:
        super().reset()
        self.indices.clear()
        self.item_faults.clear()
        self.poison.clear()
        self.truncate_answers = 0

    # Security

    def _authenticate(self, request: web.Request) -> web.Response | None:
        if not self.api_keys and not self.users:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme == "ApiKey" and self.flavor == "elasticsearch":
            if credentials.strip() in self.api_keys:
                return None
        elif scheme == "Basic":
            try:
                user, _, password = base64.b64decode(credentials).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user and self.users.get(user) == password:
                return None
        reason = (
            "missing authentication credentials for REST request"
            if not header
            else "unable to authenticate with provided credentials"
        )
        return self._error(
            401,
            "security_exception",
            f"{reason} [{request.path}]",
            headers={"WWW-Authenticate": 'Basic realm="security", charset="UTF-8"'},
        )

    def _error(
        self, status: int, kind: str, reason: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        cause = {"type": kind, "reason": reason}
        return json_response(
            status, {"error": {"root_cause": [cause], **cause}, "status": status}, headers
        )

    def _content_type_error(self, request: web.Request) -> web.Response | None:
        content_type = request.headers.get("Content-Type", "")
        media = content_type.split(";")[0].strip().lower()
        if media in _BULK_TYPES or (media in _COMPAT_TYPES and self.flavor == "elasticsearch"):
            return None
        message = f"Content-Type header [{content_type}] is not supported"
        return json_response(406, {"error": message, "status": 406})

    # Bulk

    async def _bulk_route(self, request: web.Request) -> web.StreamResponse:
        scripted = await self.suffer(self.faults, request)
        if scripted is not None:
            return scripted
        refused = self._authenticate(request) or self._content_type_error(request)
        if refused is not None:
            return refused
        if (request.content_length or 0) > self.max_content_length:
            return web.Response(status=413)
        try:
            body, wire_bytes = await self.read_body(request)
        except BodyError as exc:
            return self._error(exc.status, "parse_exception", exc.message)
        self.record(request, body, wire_bytes)
        if len(body) > self.max_content_length:
            # http.max_content_length bounds the content after the decompressor.
            return web.Response(status=413)
        self.bulk_requests += 1
        started = time.monotonic()
        try:
            pairs = _parse_bulk(body)
        except ValueError as exc:
            kind = (
                "action_request_validation_exception" if not body else "illegal_argument_exception"
            )
            return self._error(400, kind, str(exc))
        untyped = sum(1 for _, meta, _ in pairs if "_type" not in meta) if self.require_type else 0
        if untyped:
            # Elasticsearch 6 validates the whole request before any item runs.
            problems = "".join(f"{n}: type is missing;" for n in range(1, untyped + 1))
            return self._error(
                400, "action_request_validation_exception", f"Validation Failed: {problems}"
            )
        target = request.match_info.get("target")
        pipeline = request.query.get("pipeline")
        items = [
            self._item(action, meta, source, target, pipeline) for action, meta, source in pairs
        ]
        errors = any("error" in next(iter(item.values())) for item in items)
        answer: dict[str, Any] = {
            "errors": errors,
            "took": int((time.monotonic() - started) * 1000),
            "items": items,
        }
        await self.changed()
        filter_path = request.query.get("filter_path")
        if filter_path:
            answer = _filter(answer, filter_path.split(","))
        if self.truncate_answers > 0:
            self.truncate_answers -= 1
            return await _cut_short(request, orjson.dumps(answer))
        return json_response(200, answer)

    def _item(
        self,
        action: str,
        meta: Mapping[str, Any],
        source: bytes | None,
        target: str | None,
        pipeline: str | None,
    ) -> dict[str, Any]:
        name = str(meta.get("_index") or target or "")
        if "_id" in meta:
            doc_id = str(meta["_id"])
        else:
            self._auto_ids += 1
            doc_id = f"auto-{self._auto_ids}"
        result: dict[str, Any] = {"_index": name, "_id": doc_id}
        index: Index | None = None
        try:
            used_pipeline = meta.get("pipeline", pipeline)
            self._check_pipeline(used_pipeline)
            index = self._resolve(name)
            result["_index"] = index.backing_index
            self._run_pipeline(used_pipeline, source)
            self._write(index, action, doc_id, source)
        except _ItemFailure as failure:
            error = failure.error
            redirect = failure.document and index is not None and index.data_stream
            if redirect and index is not None and self._has_failure_store(index.name):
                index.failures.append(
                    {
                        "@timestamp": time.time(),
                        "document": {
                            "id": doc_id,
                            "source": (source or b"").decode(errors="replace"),
                        },
                        "error": {"type": error.type, "message": error.reason},
                    }
                )
                result["_index"] = index.failure_index
                result["failure_store"] = "used"
                return {action: {**result, **_created(len(index.failures) - 1)}}
            result["status"] = error.status
            result["error"] = {"type": error.type, "reason": error.reason, "index": name}
            if redirect and self.flavor == "elasticsearch":
                result["failure_store"] = "not_enabled"
            return {action: result}
        return {action: {**result, **_created(len(index.docs) - 1)}}

    def _has_failure_store(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.failure_store)

    def _run_pipeline(self, pipeline: str | None, source: bytes | None) -> None:
        """Ingest: the source is read as a map first, then the processors run."""
        if pipeline is None or pipeline == "_none":
            return
        try:
            document = orjson.loads(source or b"")
        except ValueError:
            document = None
        if not isinstance(document, dict):
            error = ItemError(400, "parse_exception", "Failed to parse content to map")
            raise _ItemFailure(error, document=True)
        message = self.failing_pipelines.get(pipeline)
        if message is not None:
            raise _ItemFailure(ItemError(500, "fail_processor_exception", message), document=True)

    def _check_pipeline(self, pipeline: str | None) -> None:
        known = self.pipelines
        if pipeline is None or pipeline == "_none" or known is None or pipeline in known:
            return
        message = f"pipeline with id [{pipeline}] does not exist"
        raise _ItemFailure(ItemError(400, "illegal_argument_exception", message))

    def _resolve(self, name: str) -> Index:
        if not name:
            raise _ItemFailure(
                ItemError(400, "action_request_validation_exception", "index is missing")
            )
        if name in self.closed:
            raise _ItemFailure(ItemError(400, "index_closed_exception", "closed"))
        index = self.indices.get(name)
        if index is not None:
            return index
        data_stream = any(fnmatch.fnmatchcase(name, p) for p in self.data_stream_patterns)
        if not data_stream and not self.auto_create_index:
            raise _ItemFailure(
                ItemError(404, "index_not_found_exception", f"no such index [{name}]")
            )
        index = self.indices[name] = Index(name, data_stream)
        return index

    def _write(self, index: Index, action: str, doc_id: str, source: bytes | None) -> None:
        if index.name in self.forbidden:
            raise _ItemFailure(
                ItemError(
                    403,
                    "security_exception",
                    "action [indices:data/write/bulk[s]] is unauthorized "
                    f"on indices [{index.name}]",
                )
            )
        scripted = self.item_faults.get(doc_id)
        if scripted:
            raise _ItemFailure(scripted.popleft())
        if index.data_stream and action != "create":
            raise _ItemFailure(
                ItemError(
                    400,
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams",
                )
            )
        parsing = (
            "document_parsing_exception"
            if self.flavor == "elasticsearch"
            else "mapper_parsing_exception"
        )
        try:
            document = orjson.loads(source or b"")
        except ValueError as exc:
            error = ItemError(400, parsing, f"failed to parse: {exc}")
            raise _ItemFailure(error, document=True) from None
        if not isinstance(document, dict):
            error = ItemError(400, parsing, "failed to parse: source is not an object")
            raise _ItemFailure(error, document=True)
        if doc_id in self.poison:
            error = ItemError(400, parsing, "[1:2] failed to parse field [poison]")
            raise _ItemFailure(error, document=True)
        if index.data_stream and "@timestamp" not in document:
            error = ItemError(400, parsing, "data stream timestamp field [@timestamp] is missing")
            raise _ItemFailure(error, document=True)
        if action == "create" and doc_id in index.docs:
            raise _ItemFailure(
                ItemError(
                    409,
                    "version_conflict_engine_exception",
                    f"[{doc_id}]: version conflict, document already exists (current version [1])",
                )
            )
        index.docs[doc_id] = document
        index.arrivals[doc_id] = time.time()

    async def _no_handler_route(self, request: web.Request) -> web.StreamResponse:
        message = f"no handler found for uri [{request.path}] and method [{request.method}]"
        return json_response(400, {"error": message, "status": 400})

    # Read routes

    async def _root_route(self, request: web.Request) -> web.StreamResponse:
        scripted = await self.suffer(self.faults, request)
        if scripted is not None:
            return scripted
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        headers = {"X-Elastic-Product": "Elasticsearch"} if self.flavor == "elasticsearch" else {}
        info = {"name": "fake", "cluster_name": "fake", "version": {"number": "9.1.0"}}
        if self.flavor == "opensearch":
            info["version"] = {"distribution": "opensearch", "number": "3.2.0"}
        return json_response(200, info, headers)

    def _existing(self, request: web.Request) -> Index | web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        name = request.match_info["index"]
        index = self.indices.get(name)
        if index is None:
            return self._error(404, "index_not_found_exception", f"no such index [{name}]")
        return index

    async def _index_route(self, request: web.Request) -> web.StreamResponse:
        found = self._existing(request)
        if isinstance(found, web.Response):
            return found
        return json_response(200, {found.backing_index: {"data_stream": found.name}})

    async def _refresh_route(self, request: web.Request) -> web.StreamResponse:
        found = self._existing(request)
        if isinstance(found, web.Response):
            return found
        return json_response(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})

    async def _matching(self, request: web.Request) -> list[str] | web.Response:
        """The ids of the documents an `ids` query (or no query) matches."""
        found = self._existing(request)
        if isinstance(found, web.Response):
            return found
        body = await request.read()
        query = json.loads(body).get("query", {}) if body else {}
        ids = query.get("ids", {}).get("values")
        return list(found.docs) if ids is None else [i for i in ids if i in found.docs]

    async def _count_route(self, request: web.Request) -> web.StreamResponse:
        matching = await self._matching(request)
        if isinstance(matching, web.Response):
            return matching
        return json_response(200, {"count": len(matching)})

    async def _search_route(self, request: web.Request) -> web.StreamResponse:
        matching = await self._matching(request)
        if isinstance(matching, web.Response):
            return matching
        index = self.indices[request.match_info["index"]]
        hits = [
            {"_index": index.backing_index, "_id": i, "_source": index.docs[i]} for i in matching
        ]
        return json_response(200, {"hits": {"total": {"value": len(hits)}, "hits": hits}})

    async def _doc_route(self, request: web.Request) -> web.StreamResponse:
        found = self._existing(request)
        if isinstance(found, web.Response):
            return found
        doc_id = request.match_info["id"]
        document = found.docs.get(doc_id)
        answer = {"_index": found.backing_index, "_id": doc_id, "found": document is not None}
        if document is not None:
            answer["_source"] = document
        return json_response(200 if document is not None else 404, answer)


def _created(seq_no: int) -> dict[str, Any]:
    return {
        "_version": 1,
        "result": "created",
        "_shards": {"total": 1, "successful": 1, "failed": 0},
        "_seq_no": seq_no,
        "_primary_term": 1,
        "status": 201,
    }


async def _cut_short(request: web.Request, body: bytes) -> web.StreamResponse:
    """A 200 whose body stops halfway: the connection closes before Content-Length is reached."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _parse_bulk(body: bytes) -> list[tuple[str, dict[str, Any], bytes | None]]:
    if not body:
        raise ValueError("Validation Failed: 1: no requests added;")
    if not body.endswith(b"\n"):
        raise ValueError("The bulk request must be terminated by a newline [\\n]")
    lines = body[:-1].split(b"\n")
    pairs: list[tuple[str, dict[str, Any], bytes | None]] = []
    position = 0
    while position < len(lines):
        line = lines[position].rstrip(b"\r")
        position += 1
        if not line.strip():
            continue
        try:
            action_line = orjson.loads(line)
        except ValueError:
            raise ValueError(f"Malformed action/metadata line [{position}]") from None
        if not isinstance(action_line, dict) or len(action_line) != 1:
            raise ValueError(f"Malformed action/metadata line [{position}], expected START_OBJECT")
        ((action, meta),) = action_line.items()
        if action not in ("create", "index", "update", "delete"):
            raise ValueError(
                f"Malformed action/metadata line [{position}], expected field [create], "
                f"[delete], [index] or [update] but found [{action}]"
            )
        source = None
        if action != "delete":
            if position >= len(lines):
                raise ValueError(f"action line [{position}] has no source line after it")
            source = lines[position].rstrip(b"\r")
            position += 1
        pairs.append((action, meta if isinstance(meta, dict) else {}, source))
    if not pairs:
        raise ValueError("Validation Failed: 1: no requests added;")
    return pairs


def _filter(value: Any, paths: list[str]) -> Any:
    """Elasticsearch's `filter_path`: dotted paths with `*` for any one key; lists pass through."""
    patterns = [path.split(".") for path in paths if path]

    def keep(node: Any, suffixes: list[list[str]]) -> Any:
        if isinstance(node, list):
            kept = [keep(item, suffixes) for item in node]
            return [item for item in kept if item is not _DROP]
        if not isinstance(node, dict):
            return node if any(not s for s in suffixes) else _DROP
        if any(not s for s in suffixes):
            return node
        out: dict[str, Any] = {}
        for key, child in node.items():
            rest = [s[1:] for s in suffixes if s and fnmatch.fnmatchcase(key, s[0])]
            if rest:
                kept = keep(child, rest)
                if kept is not _DROP:
                    out[key] = kept
        return out if out else _DROP

    result = keep(value, patterns)
    return {} if result is _DROP else result


_DROP = object()


def main(argv: list[str] | None = None) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api-key", action="append", default=[], help="accepted encoded key")
        parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD")
        parser.add_argument(
            "--flavor", choices=("elasticsearch", "opensearch"), default="elasticsearch"
        )
        parser.add_argument("--max-content-length", type=int, default=100 * 1024 * 1024)

    def build(args: argparse.Namespace) -> FakePeer:
        users = dict(entry.split(":", 1) for entry in args.user)
        return FakeEs(
            api_keys=args.api_key,
            users=users,
            flavor=args.flavor,
            max_content_length=args.max_content_length,
        )

    serve_standalone("A fake Elasticsearch bulk API on 127.0.0.1.", build, add_arguments, argv)


if __name__ == "__main__":
    main()
