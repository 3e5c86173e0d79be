"""The running pipeline: the store, one output and one dispatcher per configured output.

`Pipeline.reload` builds and starts the new outputs before it touches the running ones, so an
output that cannot start leaves the old configuration in place. The old dispatchers then finish
the send they are in and stop; nothing queued is lost because the queue is the store.
`Pipeline.reopen_outputs` reopens the running outputs in place: a refused reload still needs
that, since logrotate has moved their files away all the same.

A stop keeps to one deadline, set by `Pipeline.begin_stop` as soon as it is asked for, whatever
is under way: a reload then starts no new output and stops waiting for files to reopen, and its
wait for the outputs it replaces ends by that deadline too. Before, a stop that came during a
reload waited for the whole reload first.

Every output's healthcheck also runs every HEALTHCHECK_INTERVAL_SECS. An idle output never
fails a send, so without it a SIEM that went away overnight would show only at the next alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from forwarder.delivery.dispatcher import Dispatcher
from forwarder.mappers.base import Mapper
from forwarder.outputs.base import HealthcheckError, Output
from forwarder.registry import mapper_class, output_class
from forwarder.settings import OutputSpec, Settings
from forwarder.store.outbox import Outbox
from forwarder.telemetry import metrics

__all__ = ["Pipeline", "ReloadAbandoned", "ReloadError", "healthcheck_problem", "unless_set"]

log = structlog.get_logger("forwarder.pipeline")

SWEEP_INTERVAL_SECS = 60.0
STORE_PROBE_SECS = 5.0
# What closing an output may still take when the graceful budget is spent.
OUTPUT_CLOSE_MIN_SECS = 0.5
# What a dispatcher may still take to end when the budget is spent: an idle one ends within an
# iteration of the event loop, and cancelling it at once would report a send cut short.
DISPATCHER_STOP_MIN_SECS = 0.25
HEALTHCHECK_INTERVAL_SECS = 30.0
HEALTHCHECK_TIMEOUT_SECS = 10.0


T = TypeVar("T")


class ReloadError(Exception):
    """The new configuration could not be started; the old one keeps running."""


class ReloadAbandoned(ReloadError):
    """A stop was asked for before the new outputs had started; the old ones stay until it."""


def build_dispatchers(specs: Sequence[OutputSpec], outbox: Outbox) -> list[Dispatcher]:
    dispatchers = []
    for spec in specs:
        output: Output[Any] = output_class(spec.config.type)(spec.config)
        mapper: Mapper[Any] = mapper_class(spec.format.type)(spec.format)
        dispatchers.append(Dispatcher(output, mapper, outbox))
    return dispatchers


class Pipeline:
    def __init__(self, settings: Settings, outbox: Outbox, dispatchers: list[Dispatcher]):
        self.settings = settings
        self.outbox = outbox
        self.dispatchers = dispatchers
        self.started_at = time.time()
        self._sweeper: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        # Outputs whose healthcheck fails: since when (monotonic) and why.
        self._unhealthy: dict[str, tuple[float, str]] = {}
        self._reload_lock = asyncio.Lock()
        # Set once a stop is asked for; a reload under way then cuts itself short.
        self._stopping = asyncio.Event()
        # The event loop's time by which the stop must be over.
        self._stop_deadline = math.inf
        self._store_closing: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Pipeline:
        """Open the store and start every output; raises if any of them cannot start.

        Cancelled (a stop during start-up), it closes what it opened. A store being opened is let
        finish first: the store thread cannot be interrupted, and an open that is repairing a
        corrupt store must not be cut short, or the moved-aside file would never be salvaged.
        """
        outbox = await _open_outbox(settings)
        try:
            dispatchers = await _start_outputs(settings.outputs, outbox)
        except BaseException:
            await outbox.aclose()
            raise
        pipeline = cls(settings, outbox, dispatchers)
        try:
            await pipeline._warn_orphans()
        except BaseException:
            await pipeline.stop(0.0)
            raise
        for dispatcher in dispatchers:
            dispatcher.start()
        pipeline._sweeper = asyncio.create_task(
            _every(lambda: SWEEP_INTERVAL_SECS, pipeline.sweep, "Store sweep failed."),
            name="store-sweep",
        )
        pipeline._prober = asyncio.create_task(pipeline._probe_forever(), name="store-probe")
        pipeline._checker = asyncio.create_task(
            _every(
                lambda: HEALTHCHECK_INTERVAL_SECS,
                pipeline.check_outputs,
                "Output healthchecks failed to run.",
            ),
            name="healthchecks",
        )
        return pipeline

    @property
    def stopping(self) -> bool:
        """A stop was asked for (`begin_stop` or `stop`)."""
        return self._stopping.is_set()

    async def reload(self, settings: Settings, graceful_secs: float) -> None:
        """Swap in new outputs; raises ReloadError (old outputs untouched) if they cannot start,
        ReloadAbandoned if a stop is asked for before they have.

        The outputs it replaces get `graceful_secs` to finish their sends, or less if a stop
        must be over sooner. Once a stop is asked for, the new outputs are not started: they
        would only be stopped again. An output left as it was keeps its failure streak (see
        `Dispatcher.carry_on_from`); a changed or new one starts afresh.
        """
        async with self._reload_lock:
            try:
                fresh = await unless_set(
                    self._stopping, lambda: _start_outputs(settings.outputs, self.outbox)
                )
            except Exception as exc:
                raise ReloadError(str(exc)) from exc
            if fresh is None:
                raise ReloadAbandoned("the daemon is stopping")
            unchanged = _unchanged(self.settings.outputs, settings.outputs)
            old, self.dispatchers = self.dispatchers, fresh
            # A failing healthcheck speaks for the configuration it checked only.
            self._unhealthy = {n: v for n, v in self._unhealthy.items() if n in unchanged}
            for dispatcher in fresh:
                if dispatcher.name not in unchanged:  # unknown until its next check
                    with contextlib.suppress(KeyError):
                        metrics.output_healthy.remove(dispatcher.name)
            # Now, for /readyz while the old ones drain, and again once they have stopped,
            # with what their last sends left.
            _carry_on(old, fresh, unchanged)
            # New events go to the new set from here on; the old dispatchers only drain.
            self.outbox.set_outputs(d.name for d in fresh)
            loop = asyncio.get_running_loop()
            await _stop_all(old, min(loop.time() + graceful_secs, self._stop_deadline))
            _carry_on(old, fresh, unchanged)
            self.settings = settings
            names = [d.name for d in fresh]
            if self.stopping:
                log.info("Configuration reloaded; the daemon is stopping.", outputs=names)
                return
            for dispatcher in fresh:
                dispatcher.start()
            await self._warn_orphans()
            log.info("Configuration reloaded.", outputs=names)

    async def reopen_outputs(self) -> None:
        """Reopen every running output's files and connections (SIGHUP, after logrotate).

        The outputs reopen side by side, so one waiting for its send in progress delays none of
        the others; one that cannot reopen is logged and does not stop the rest. A stop asked
        for meanwhile ends the wait: the outputs are about to be closed anyway.
        """
        async with self._reload_lock:
            running = list(self.dispatchers)
            reopened = await unless_set(
                self._stopping, lambda: asyncio.gather(*(_reopen(d) for d in running))
            )
        if reopened is None:
            log.info("Outputs not reopened; the daemon is stopping.")
            return
        log.info(
            "Outputs reopened.",
            outputs=[d.name for d, done in zip(running, reopened, strict=True) if done],
        )

    def begin_stop(self, graceful_secs: float) -> None:
        """Ask for a stop that must be over `graceful_secs` from now (an earlier deadline holds).

        Called as soon as the stop signal arrives, so a reload under way keeps to the same
        deadline as the stop (see `reload` and `reopen_outputs`); `stop` finishes the job. The
        periodic jobs end here: a healthcheck has nothing to report once stopping.
        """
        deadline = asyncio.get_running_loop().time() + graceful_secs
        self._stop_deadline = min(self._stop_deadline, deadline)
        self._stopping.set()
        for task in (self._sweeper, self._prober, self._checker):
            if task is not None:
                task.cancel()

    async def stop(self, graceful_secs: float) -> None:
        """Stop within `graceful_secs`, or by the deadline `begin_stop` set if that is sooner:
        the outputs finish their sends in progress, then close, then the store closes."""
        self.begin_stop(graceful_secs)
        for task in (self._sweeper, self._prober, self._checker):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # A reload under way returns promptly once stopping (within the deadline); waiting for
        # it means no output it started, or is still draining, outlives the store.
        async with self._reload_lock:
            await _stop_all(self.dispatchers, self._stop_deadline)
        await self.close_store()

    async def close_store(self) -> None:
        """Close the store, once however many ask: pending commits are made, the WAL folded back.

        A second stop signal calls this while `stop` may be waiting for sends; both then wait
        for the same close.
        """
        if self._store_closing is None:
            self._store_closing = asyncio.ensure_future(self.outbox.aclose())
        await asyncio.shield(self._store_closing)

    def failing_outputs(self, threshold_secs: float) -> dict[str, str]:
        """Outputs whose sends or healthcheck have failed for longer than `threshold_secs`,
        with the last error."""
        now = time.monotonic()
        failing: dict[str, str] = {}
        for dispatcher in self.dispatchers:
            since = dispatcher.failing_since
            if since is not None and now - since > threshold_secs:
                failing[dispatcher.name] = dispatcher.last_error or "failing"
            elif dispatcher.name in self._unhealthy:
                since, error = self._unhealthy[dispatcher.name]
                if now - since > threshold_secs:
                    failing[dispatcher.name] = f"healthcheck: {error}"
        return failing

    async def check_outputs(self) -> None:
        """Run every output's healthcheck; log the first failure and the recovery."""
        dispatchers = list(self.dispatchers)
        problems = await asyncio.gather(
            *(healthcheck_problem(d.output.liveness) for d in dispatchers)
        )
        now = time.monotonic()
        # A reload during the checks replaced some outputs, closing them under their check:
        # what those answered says nothing of their successors, which the next round checks.
        running = set(self.dispatchers)
        names = {d.name for d in running}
        unhealthy = {name: entry for name, entry in self._unhealthy.items() if name in names}
        for dispatcher, problem in zip(dispatchers, problems, strict=True):
            if dispatcher not in running:
                continue
            name, before = dispatcher.name, self._unhealthy.get(dispatcher.name)
            metrics.output_healthy.labels(name).set(problem is None)
            if problem is None:
                unhealthy.pop(name, None)
                if before is not None:
                    log.info("Output healthcheck passes again.", output=name)
                continue
            if before is None:
                log.warning(
                    "Output healthcheck failed; /readyz fails if it goes on failing.",
                    output=name,
                    error=problem,
                )
            unhealthy[name] = (now if before is None else before[0], problem)
        self._unhealthy = unhealthy  # outputs removed by a reload are forgotten here

    async def _warn_orphans(self) -> None:
        configured = {d.name for d in self.dispatchers}
        if not self.outbox.available:
            return
        try:
            stats = await self.outbox.stats()
        except Exception as exc:
            # Only a warning is lost: the outputs are in place by now, and a reload that raised
            # here would be reported as refused while the new configuration runs.
            log.warning("Cannot list the events queued for each output.", error=str(exc))
            return
        for name, count in stats.queued.items():
            if name not in configured:
                log.warning(
                    "Events are queued for an output that is not configured; they wait until "
                    "it is configured again or are dead-lettered at store.max_age_secs.",
                    output=name,
                    queued=count,
                )

    async def sweep(self) -> None:
        """Dead-letter what outlived store.max_age_secs and forget old dedupe entries."""
        expired = await self.outbox.expired(self.settings.store.max_age_secs)
        for output, seqs in expired.items():
            reason = f"expired: not delivered within {self.settings.store.max_age_secs:g} s"
            await self.outbox.dead_letter(output, dict.fromkeys(seqs, reason))
            metrics.output_dead_lettered.labels(output, "expired").inc(len(seqs))
            log.error(
                "Events outlived the store's max age undelivered; moved to dead letters.",
                output=output,
                count=len(seqs),
            )
        await self.outbox.forget_old()

    async def _probe_forever(self) -> None:
        """Open or re-check a store that cannot commit every few seconds, so it recovers
        unattended once the disk has room again (without waiting for a post or /readyz)."""
        while True:
            await asyncio.sleep(STORE_PROBE_SECS)
            if not self.outbox.healthy:
                await self.outbox.probe()


async def _every(
    interval_secs: Callable[[], float], job: Callable[[], Awaitable[None]], failure: str
) -> None:
    """Run `job` now and then every `interval_secs()` seconds; a failure is logged, not fatal.

    The interval is read each time, so a test can shorten the module's constant."""
    while True:
        try:
            await job()
        except Exception as exc:
            log.warning(failure, error=str(exc))
        await asyncio.sleep(interval_secs())


def _unchanged(before: Sequence[OutputSpec], after: Sequence[OutputSpec]) -> set[str]:
    """The outputs a reload leaves as they were: the same name, options and format."""
    was = {spec.name: spec for spec in before}
    return {spec.name for spec in after if was.get(spec.name) == spec}


def _carry_on(old: Sequence[Dispatcher], fresh: Sequence[Dispatcher], unchanged: set[str]) -> None:
    """Hand each unchanged output's failure streak on to its new dispatcher."""
    replaced = {d.name: d for d in old}
    for dispatcher in fresh:
        if dispatcher.name in unchanged:
            dispatcher.carry_on_from(replaced[dispatcher.name])


async def _start_outputs(specs: Sequence[OutputSpec], outbox: Outbox) -> list[Dispatcher]:
    dispatchers = build_dispatchers(specs, outbox)
    started: list[Dispatcher] = []
    try:
        for dispatcher in dispatchers:
            await dispatcher.output.start()
            started.append(dispatcher)
    except BaseException:
        for dispatcher in started:
            with contextlib.suppress(Exception):
                await dispatcher.output.aclose()
        raise
    return dispatchers


async def healthcheck_problem(check: Callable[[], Awaitable[None]]) -> str | None:
    """Why an output fails `check` (its `healthcheck` or `liveness`), or None if it passes."""
    try:
        async with asyncio.timeout(HEALTHCHECK_TIMEOUT_SECS):
            await check()
    except HealthcheckError as exc:
        return str(exc)
    except TimeoutError:
        return f"no answer within {HEALTHCHECK_TIMEOUT_SECS:g} s"
    except Exception as exc:  # an output's bug or an OS error: unhealthy all the same
        return f"{type(exc).__name__}: {exc}"
    return None


async def _reopen(dispatcher: Dispatcher) -> bool:
    try:
        await dispatcher.output.reopen()
    except Exception as exc:
        log.error("Output could not reopen.", output=dispatcher.name, error=str(exc))
        return False
    return True


async def _stop_all(dispatchers: Sequence[Dispatcher], deadline: float) -> None:
    """Stop the dispatchers and close their outputs, all by `deadline` (the event loop's time).

    Closing can wait on the peer too (a TLS close_notify to a receiver that no longer reads);
    what is left until the deadline, at least OUTPUT_CLOSE_MIN_SECS, bounds it. The outputs
    close side by side, so several stuck ones cost that floor once, not once each.
    """
    loop = asyncio.get_running_loop()
    await asyncio.gather(
        *(d.stop(max(DISPATCHER_STOP_MIN_SECS, deadline - loop.time())) for d in dispatchers)
    )
    await asyncio.gather(*(_close_output(d, deadline) for d in dispatchers))


async def _close_output(dispatcher: Dispatcher, deadline: float) -> None:
    left = max(OUTPUT_CLOSE_MIN_SECS, deadline - asyncio.get_running_loop().time())
    try:
        async with asyncio.timeout(left):
            await dispatcher.output.aclose()
    except TimeoutError:
        log.warning(
            "Output did not close within the graceful timeout; left open.",
            output=dispatcher.name,
        )
    except Exception as exc:
        log.warning("Output did not close cleanly.", output=dispatcher.name, error=str(exc))


async def _open_outbox(settings: Settings) -> Outbox:
    """`Outbox.open`, which a cancellation lets finish and then closes: the open runs on the
    store thread, which cannot be interrupted, and cut short it would leave the store to the
    next start with nobody to close it now."""
    opening = asyncio.ensure_future(
        Outbox.open(settings.store, [spec.name for spec in settings.outputs])
    )
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        await asyncio.wait({opening})
        if not opening.cancelled() and opening.exception() is None:
            await opening.result().aclose()
        raise


async def unless_set(event: asyncio.Event, work: Callable[[], Awaitable[T]]) -> T | None:
    """`work()`'s result, or None if `event` is set first (already set: `work` never starts).

    `work` is then cancelled, and waited for so that it can close what it opened; if it
    finishes all the same, its result counts. Its exceptions are raised as they are.
    """
    if event.is_set():
        return None

    async def call() -> T:
        return await work()

    # A task of its own even for a future such as gather's: a cancelled gather ends with a
    # CancelledError as its exception, not cancelled, and that would escape as if the caller
    # itself had been cancelled.
    task = asyncio.create_task(call())
    setting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, setting}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        setting.cancel()
    if not task.done():
        task.cancel()
        # asyncio.wait raises nothing of the task's, only a cancellation of the caller itself.
        await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.result()
