"""One dispatcher per output: fetch a batch, map it, send it, then ack, back off or dead-letter.

The output only classifies what happened (`forwarder.outputs.base`); every policy lives here:
backoff with full jitter (tenacity), honouring Retry-After, halving a batch the destination found
too large, and dead-lettering what it refused for good. Delivery is at least once: an event is
acked only after its output reported it delivered, so a crash in between resends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, wait_random_exponential

from forwarder.events import PayloadError, parse_event
from forwarder.mappers.base import Mapper, MappingError, Record
from forwarder.outputs.base import (
    Delivered,
    Output,
    OutputConfig,
    Partial,
    Reject,
    Retry,
    RetryConfig,
    SendResult,
    TooLarge,
)
from forwarder.store.database import StoredEvent
from forwarder.store.outbox import Outbox, StoreUnavailable
from forwarder.telemetry import metrics

__all__ = ["Dispatcher", "backoff_secs"]

log = structlog.get_logger("forwarder.delivery")

# How often an idle dispatcher looks at the store even when nobody woke it: picks up events
# queued by another process, such as `canary-forwarder dead-letters replay`.
IDLE_POLL_SECS = 1.0
# How long a dispatcher that failed unexpectedly waits before it starts again.
RESTART_SECS = 1.0
# How often a dispatcher tries again to record a send's result the store could not write.
STORE_RETRY_SECS = 1.0
# Longest a dispatcher maps without letting the event loop run: a 500-event batch takes tens of
# milliseconds to map, and every webhook post waiting for its 200 would wait that long too.
MAP_SLICE_SECS = 0.002

_Result = TypeVar("_Result")  # the seqs to ack or retry, or the reasons to dead-letter


def backoff_secs(attempt: int, config: RetryConfig, retry_after: float | None = None) -> float:
    """Wait before attempt `attempt + 1`: exponential with full jitter, capped, >= Retry-After."""
    wait = wait_random_exponential(
        multiplier=config.initial_backoff_secs, max=config.max_backoff_secs
    )
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    delay = float(wait(state))
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.max_backoff_secs))
    return delay


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Stop a store read or a send that is no longer wanted; its result or failure does not
    matter (what it did not ack stays queued)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@dataclass(slots=True)
class _Outcome:
    delivered: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    retried: list[int] = field(default_factory=list)
    retry: Retry | None = None

    def add_retry(self, seqs: Sequence[int], retry: Retry) -> None:
        self.retried.extend(seqs)
        self.retry = retry if self.retry is None else _merge_retries(self.retry, retry)


def _merge_retries(first: Retry, second: Retry) -> Retry:
    """One Retry for a batch whose items asked for retries of their own, whatever their order.

    An item that needs an operator makes the whole batch need one, and its reason is the one
    worth logging; the batch waits for the longest Retry-After any item was given.
    """
    if first.operator_action != second.operator_action:
        leading = first if first.operator_action else second
    else:
        leading = second if (second.retry_after or 0) > (first.retry_after or 0) else first
    waits = [wait for wait in (first.retry_after, second.retry_after) if wait is not None]
    return Retry(
        leading.reason,
        max(waits, default=None),
        first.operator_action or second.operator_action,
    )


class Dispatcher:
    """Delivers the store's queue for one output until stopped."""

    def __init__(self, output: Output[OutputConfig], mapper: Mapper[Any], outbox: Outbox):
        self.output = output
        self.mapper = mapper
        self.outbox = outbox
        self.config = output.config
        self.name = output.name
        self.failures = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        # When the backoff under way ends (monotonic), unless it waits for an operator: what
        # `carry_on_from` hands on.
        self._resume_at = -math.inf
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # Lifecycle

    def start(self) -> None:
        self.outbox.on_append(self.wake)
        self._task = asyncio.create_task(self._run_until_stopped(), name=f"dispatch-{self.name}")

    def wake(self) -> None:
        self._wakeup.set()

    def carry_on_from(self, previous: Dispatcher) -> None:
        """Take over the failure streak of `previous`, which this one replaces for the same
        output and the same configuration (a reload that changed other outputs); before `start`.

        Starting afresh, every reload would reset /readyz's "failing for 5 minutes" and send at
        once to a destination in backoff, ignoring its Retry-After; a SIGHUP every few minutes
        would keep a dead output from ever failing /readyz. The wait for an operator is not
        carried: a reload is what an operator does about it (a renewed certificate file, say,
        under an unchanged configuration). An output whose configuration changed starts afresh
        instead: the change may be the fix.
        """
        self.failures = previous.failures
        self.failing_since = previous.failing_since
        self.last_error = previous.last_error
        self._resume_at = previous._resume_at

    async def stop(self, graceful_secs: float) -> None:
        """Finish the send in progress within `graceful_secs`; unsent events stay queued."""
        self.outbox.remove_listener(self.wake)
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            done, _ = await asyncio.wait({task}, timeout=graceful_secs)
        except asyncio.CancelledError:
            # Whoever stops us gave up waiting; nothing else holds the task, and left running
            # it would go on sending after the daemon stopped.
            task.cancel()
            raise
        if not done:
            log.warning(
                "Output did not finish its send in time; cancelled, events stay queued.",
                output=self.name,
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        metrics.output_in_flight.labels(self.name).set(0)

    async def _pause(self, seconds: float, *, wake_early: bool) -> None:
        """Wait `seconds`, returning early on stop (and on new events when `wake_early`)."""
        waiters = {asyncio.ensure_future(self._stopping.wait())}
        if wake_early:
            waiters.add(asyncio.ensure_future(self._wakeup.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _fetch(self, exclude: set[int]) -> list[StoredEvent]:
        """The oldest queued events for this output that are not in the send in flight."""
        batch_config = self.config.batch
        return await self.outbox.fetch(
            self.name, batch_config.max_events, batch_config.max_bytes, exclude
        )

    async def _run_until_stopped(self) -> None:
        """Run the loop below; if a bug ends it, log it and start it again after a pause, so one
        output never stops delivering silently. What was in flight stays queued (resent)."""
        while True:
            try:
                await self._run()
                return
            except Exception:
                log.exception(
                    "Dispatcher failed unexpectedly; restarting it. Its events stay queued.",
                    output=self.name,
                )
            await self._pause(RESTART_SECS, wake_early=False)
            if self._stopping.is_set():
                return

    async def _run(self) -> None:
        """Fetch and map the next batch while the previous one is being sent.

        The output still sees one send at a time, in order; only the store reads and the
        mapping overlap with the network round trip. While a backlog lasts (full batches), the
        batch after the next is read from the store while the next is mapped. A batch prepared
        or read behind a send that has to be retried is dropped and fetched again after the
        backoff, oldest events first.
        """
        batch_config = self.config.batch
        in_flight: asyncio.Task[_Outcome] | None = None
        in_flight_seqs: set[int] = set()
        ahead: asyncio.Task[list[StoredEvent]] | None = None
        store_error_logged = False
        waiting = self._resume_at - time.monotonic()
        if waiting > 0:  # a backoff carried over from the dispatcher this one replaced
            await self._pause(waiting, wake_early=False)
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()
                try:
                    batch = await (ahead or self._fetch(in_flight_seqs))
                except StoreUnavailable:
                    # The pipeline logs and probes the store; nothing to send meanwhile.
                    batch = []
                except Exception as exc:
                    if not store_error_logged:  # once per streak, not every poll
                        log.warning("Cannot read the store.", output=self.name, error=str(exc))
                        store_error_logged = True
                    batch = []
                else:
                    store_error_logged = False
                ahead = None
                if not batch and in_flight is None:
                    await self._pause(IDLE_POLL_SECS, wake_early=True)
                    continue
                filling = in_flight is None and len(batch) < batch_config.max_events
                if batch and filling and batch_config.timeout_secs > 0:
                    # Let a batch fill for a moment: SIEMs prefer fewer, larger requests.
                    await self._pause(batch_config.timeout_secs, wake_early=False)
                    if self._stopping.is_set():
                        break
                    batch = await self._fetch(in_flight_seqs)
                if len(batch) >= batch_config.max_events:
                    ahead = asyncio.create_task(
                        self._fetch(in_flight_seqs | {stored.seq for stored in batch})
                    )
                outcome, sendable = await self._prepare(batch)
                previous: _Outcome | None = None
                previous_seqs: set[int] = set()
                if in_flight is not None:
                    previous, previous_seqs = await in_flight, in_flight_seqs
                    in_flight, in_flight_seqs = None, set()
                    if previous.retry is not None:
                        await _cancel(ahead)
                        ahead = None
                        await self._settle(previous)
                        continue  # the prepared batch is fetched again, after the backoff
                if self._stopping.is_set():
                    # Only the send in progress is finished. The batch prepared behind it stays
                    # queued for whoever delivers next: after a reload that is the output that
                    # replaces this one, in its own format; sent here, it would go in the old
                    # format, or twice if the graceful timeout cut it short.
                    if previous is not None:
                        await self._settle(previous)
                    break
                if sendable or outcome.rejected:
                    in_flight = asyncio.create_task(self._send_all(sendable, outcome))
                    in_flight_seqs = {seq for seq, _ in sendable} | set(outcome.rejected)
                if previous is not None:
                    # Acked while the next batch is on the wire; its rows stay excluded from
                    # fetches until then.
                    in_flight_seqs |= previous_seqs
                    await self._settle(previous)
                    in_flight_seqs -= previous_seqs
            if in_flight is not None:
                await self._settle(await in_flight)
        finally:
            await _cancel(ahead)
            await _cancel(in_flight)

    # One batch

    async def _prepare(
        self, batch: Sequence[StoredEvent]
    ) -> tuple[_Outcome, list[tuple[int, Record]]]:
        outcome = _Outcome()
        sendable: list[tuple[int, Record]] = []
        slice_ends = time.perf_counter() + MAP_SLICE_SECS
        for stored in batch:
            if time.perf_counter() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = time.perf_counter() + MAP_SLICE_SECS
            try:
                sendable.append((stored.seq, self._map(stored)))
            except (MappingError, PayloadError) as exc:
                outcome.rejected[stored.seq] = f"cannot map to {self.mapper.config.type}: {exc}"
            except Exception as exc:
                # A mapper bug on one odd payload must not hold back every event after it.
                log.exception("Mapper failed on an event.", output=self.name, seq=stored.seq)
                outcome.rejected[stored.seq] = (
                    f"{self.mapper.config.type} mapper failed: {type(exc).__name__}: {exc}"
                )
        return outcome, sendable

    async def _send_all(self, sendable: list[tuple[int, Record]], outcome: _Outcome) -> _Outcome:
        if sendable:
            await self._send(sendable, outcome)
        return outcome

    def _map(self, stored: StoredEvent) -> Record:
        event = self.outbox.parsed(stored.seq)
        if event is None:
            received_at = datetime.fromtimestamp(stored.received_at, UTC)
            event = parse_event(
                stored.body, received_at=received_at, fingerprint=stored.fingerprint
            )
        return self.mapper.map(event)

    async def _send(self, items: list[tuple[int, Record]], outcome: _Outcome) -> None:
        seqs = [seq for seq, _ in items]
        gauge = metrics.output_in_flight.labels(self.name)
        gauge.inc(len(items))
        started = time.perf_counter()
        try:
            result: SendResult = await self.output.send([record for _, record in items])
        except Exception as exc:
            log.exception("Output raised instead of classifying; will retry.", output=self.name)
            result = Retry(f"output error: {exc!r}")
        finally:
            gauge.dec(len(items))
            metrics.output_latency.labels(self.name).observe(time.perf_counter() - started)
        match result:
            case Delivered():
                outcome.delivered.extend(seqs)
            case Retry():
                outcome.add_retry(seqs, result)
            case Reject(reason=reason):
                outcome.rejected.update(dict.fromkeys(seqs, reason))
            case TooLarge(reason=reason):
                if len(items) == 1:
                    outcome.rejected[seqs[0]] = f"too large even alone: {reason}"
                else:
                    middle = len(items) // 2
                    await self._send(items[:middle], outcome)
                    await self._send(items[middle:], outcome)
            case Partial(results=results):
                for index, seq in enumerate(seqs):
                    item = results.get(index)
                    if item is None:
                        outcome.delivered.append(seq)
                    elif isinstance(item, Retry):
                        outcome.add_retry([seq], item)
                    else:
                        outcome.rejected[seq] = item.reason

    async def _settle(self, outcome: _Outcome) -> bool:
        """Ack, dead-letter and back off as the outcome says; True if it backed off."""
        name = self.name
        if outcome.delivered and await self._record(self.outbox.ack, outcome.delivered):
            metrics.output_sent.labels(name).inc(len(outcome.delivered))
            metrics.output_last_success.labels(name).set(time.time())
        if outcome.rejected and await self._record(self.outbox.dead_letter, outcome.rejected):
            metrics.output_dead_lettered.labels(name, "rejected").inc(len(outcome.rejected))
            metrics.output_failed.labels(name, "reject").inc()
            log.error(
                "Destination refused events; moved to dead letters.",
                output=name,
                count=len(outcome.rejected),
                reason=next(iter(outcome.rejected.values())),
            )
        if outcome.retry is None:
            if self.failures:
                log.info("Output delivers again.", output=name, after_failures=self.failures)
            self.failures, self.failing_since, self.last_error = 0, None, None
            return False
        await self._record(self.outbox.retry_later, outcome.retried)
        metrics.output_retried.labels(name).inc(len(outcome.retried))
        metrics.output_failed.labels(name, "retry").inc()
        await self._back_off(outcome.retry, len(outcome.retried))
        return True

    async def _record(
        self, write: Callable[[str, _Result], Awaitable[None]], seqs: _Result
    ) -> bool:
        """Write a send's result to the store, trying again until it works; False if the
        dispatcher stops first.

        Sending again instead would duplicate every event of the batch at the destination, once
        per attempt, for as long as the store cannot write (a full disk). Given up on stop, the
        events stay queued and go again after the restart: at least once.
        """
        failing = False
        while True:
            try:
                await write(self.name, seqs)
            except Exception as exc:
                if not failing:
                    log.warning(
                        "Cannot record a send's result in the store; trying again, and sending "
                        "nothing more meanwhile.",
                        output=self.name,
                        error=str(exc),
                    )
                    failing = True
                if self._stopping.is_set():
                    return False
                await self._pause(STORE_RETRY_SECS, wake_early=False)
                continue
            if failing:
                log.info("Recorded the send's result in the store.", output=self.name)
            return True

    async def _back_off(self, retry: Retry, count: int) -> None:
        self.failures += 1
        self.last_error = retry.reason
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        delay = backoff_secs(self.failures, self.config.retry, retry.retry_after)
        if retry.operator_action:
            delay = self.config.retry.max_backoff_secs
            log.error(
                "Output needs an operator (credentials or configuration); events are kept.",
                output=self.name,
                reason=retry.reason,
                queued=count,
                retry_in_secs=round(delay, 2),
            )
        else:
            log.warning(
                "Send failed; will retry.",
                output=self.name,
                reason=retry.reason,
                events=count,
                attempt=self.failures,
                retry_in_secs=round(delay, 2),
            )
            self._resume_at = time.monotonic() + delay
        await self._pause(delay, wake_early=False)
