"""The aiohttp application: routes, request accounting, and a JSON answer for every error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from forwarder.ingest.auth import FailureLimiter
from forwarder.ingest.handlers import (
    LIMITER,
    PIPELINE,
    REFUSAL_LOG,
    expect_body,
    healthz,
    ignore_expectation,
    metrics_endpoint,
    readyz,
    webhook,
)
from forwarder.ingest.listener import (
    CLIENT_CONNECTIONS,
    ClientConnections,
    LogBudget,
    flushing_log_budgets,
)
from forwarder.pipeline import Pipeline
from forwarder.settings import AuthConfig
from forwarder.telemetry import metrics

__all__ = ["IN_FLIGHT", "InFlight", "build_app"]

log = structlog.get_logger("forwarder.ingest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """Requests whose handler is running, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def account(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status; turn stray exceptions into a JSON 500."""
    route = request.match_info.route.resource
    group = route.canonical if route is not None else "unmatched"
    if "{secret}" in group:
        group = group.replace("{secret}", "*")
    try:
        with request.app[IN_FLIGHT]:
            response = await handler(request)
    except web.HTTPException as exc:
        metrics.http_requests.labels(group, str(exc.status)).inc()
        if exc.status < 400:
            raise
        return _json_error(exc)
    except Exception:
        log.exception("Request failed unexpectedly.", path_group=group)
        metrics.http_requests.labels(group, "500").inc()
        return web.json_response({"error": "internal_error"}, status=500)
    metrics.series(metrics.http_requests, group, str(response.status)).inc()
    return response


# Headers of a refusal that tell the client what to do next; the rest are aiohttp's own.
_KEPT_HEADERS = frozenset({"allow", "retry-after", "www-authenticate"})


def _json_error(exc: web.HTTPException) -> web.Response:
    """The router's refusals (404, 405) as the small JSON object every other refusal is."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
    error = "_".join(exc.reason.lower().split()) or "http_error"
    return web.json_response({"error": error}, status=exc.status, headers=headers)


def build_app(pipeline: Pipeline) -> web.Application:
    listen = pipeline.settings.listen
    app = web.Application(client_max_size=listen.max_body_bytes, middlewares=[account])
    app[PIPELINE] = pipeline
    app[LIMITER] = FailureLimiter()
    app[REFUSAL_LOG] = LogBudget(what="posts refused for their address or credentials")
    app[IN_FLIGHT] = InFlight()
    app[CLIENT_CONNECTIONS] = ClientConnections(listen)
    app.router.add_post(listen.path, webhook, expect_handler=expect_body)
    if isinstance(listen.auth, AuthConfig) and listen.auth.secret_path is not None:
        secret_route = f"{listen.path.rstrip('/')}/{{secret}}"
        app.router.add_post(secret_route, webhook, expect_handler=expect_body)
    # An Expect on these is ignored (RFC 9110 allows it): aiohttp's own handler answered one it
    # did not know with a plain-text 417 quoting it, or failed with a 500 on bytes not UTF-8.
    app.router.add_get("/healthz", healthz, expect_handler=ignore_expectation)
    app.router.add_get("/readyz", readyz, expect_handler=ignore_expectation)
    app.router.add_get("/metrics", metrics_endpoint, expect_handler=ignore_expectation)
    app[metrics.STORE_READER] = metrics.StoreReader()
    app.on_startup.append(_read_store)
    app.on_cleanup.append(_stop_reading_store)
    app.cleanup_ctx.append(flushing_log_budgets)
    return app


async def _read_store(app: web.Application) -> None:
    """Start reading the store's figures, so the first scrape has them without waiting."""
    app[metrics.STORE_READER].start(app[PIPELINE].outbox)


async def _stop_reading_store(app: web.Application) -> None:
    await app[metrics.STORE_READER].aclose()
