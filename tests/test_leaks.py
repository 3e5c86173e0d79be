"""Resources that must not pile up over a long run: each test repeats, a few dozen times, what
the daemon repeats for months, and counts open file descriptors, threads or asyncio tasks before
and after. bench/soak.py is the long version, against the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import Retry
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.daemon.harness import incident, wait_until
from tests.helpers import closed_port_url, sample
from tests.peers._server import Delay
from tests.peers.fake_es import FakeEs
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec


def open_fds(but_under: Path | None = None) -> int:
    """The process's open file descriptors, those of files under `but_under` left out."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own, closed by now
            continue
        count += but_under is None or not target.startswith(f"{but_under}{os.sep}")
    return count


def record() -> Record:
    event = parse_event(sample("incident_ftp_login"), received_at=datetime.now(UTC))
    return Record(event, {"id": event.id})


def hec(*urls: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "hec",
        "type": "splunk_hec",
        "url": list(urls),
        "token": DEFAULT_TOKEN,
        "batch": {"timeout_secs": 0},
        **options,
    }


async def test_a_healthcheck_that_a_reload_cuts_short_opens_no_session(
    make_settings: Callable[..., Settings],
) -> None:
    """A reload closes the outputs it replaces, healthchecks under way included. The check of a
    closed HTTP output then went on to the next node and opened a new session for it, which
    nothing closed: its connection stayed open for as long as anything held the old output,
    and went with an "Unclosed client session" error when the collector found it."""
    async with FakeHec() as slow, FakeHec() as spare:
        pipeline = await Pipeline.start(make_settings(outputs=[hec(slow.url, spare.url)]))
        replaced = []
        try:
            await pipeline.check_outputs()
            before = open_fds()
            for cycle in range(10):
                slow.health_faults.push(Delay(10))
                check = asyncio.create_task(pipeline.check_outputs())
                await wait_until(
                    lambda: not slow.health_faults or None, timeout=10, what="the check"
                )
                # Held, as the check holds the outputs it checks until it ends.
                replaced.append(pipeline.dispatchers[0].output)
                source = f"reload-{cycle}"
                await pipeline.reload(
                    make_settings(outputs=[hec(slow.url, spare.url, source=source)]), 5
                )
                await check
            await wait_until(
                lambda: open_fds() <= before or None,
                timeout=5,
                what=f"the connections to close ({open_fds()} fds open, {before} before)",
            )
        finally:
            await pipeline.stop(5)


async def test_a_node_that_has_failed_for_days_still_fails_over() -> None:
    """A node's count of failures in a row grows for as long as it is down: each send and each
    healthcheck adds one. Its cooldown, doubled at each, overflowed a float at the 1,025th, so
    every send raised (an ERROR with a traceback) instead of being retried, once a node had been
    down for a few hours."""
    output = SplunkHecOutput(
        SplunkHecConfig.model_validate(
            {"name": "hec", "type": "splunk_hec", "url": closed_port_url(), "token": DEFAULT_TOKEN}
        )
    )
    await output.start()
    try:
        results = [await output.send([record()]) for _ in range(1100)]
    finally:
        await output.aclose()
    assert {type(result) for result in results} == {Retry}


class Sink:
    """A syslog receiver over TCP, or TLS with `tls`, that reads and discards."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        writer.close()
        self.writers.discard(writer)


def lasting_tasks() -> int:
    """The event loop's tasks but the waits of an idle dispatcher, which come and go with its
    polls of the store."""
    return sum(
        getattr(task.get_coro(), "__qualname__", "") != "Event.wait" for task in asyncio.all_tasks()
    )


def own_threads() -> set[str]:
    """The process's threads but asyncio's default executor's, which grows to its fixed size
    with the work given to it (file writes) whatever the test does."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def test_reloads_leave_no_descriptors_threads_or_tasks_behind(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Every output type, reloaded twenty times with an event delivered each time; the
    reloads of a long run are the same again."""
    import trustme

    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with (
        FakeHec() as splunk,
        FakeEs() as elastic,
        Sink() as tcp,
        Sink(server_tls) as tls,
    ):

        def settings(cycle: int) -> Settings:
            options = {"batch": {"timeout_secs": 0}, "retry": {"max_backoff_secs": 1 + cycle}}
            return make_settings(
                outputs=[
                    {"name": "file", "type": "file", "path": str(tmp_path / "out"), **options},
                    {"name": "tcp", "type": "syslog", "hosts": [tcp], **options},
                    {
                        "name": "tls",
                        "type": "syslog",
                        "hosts": [tls],
                        "transport": "tls",
                        "tls": {"ca_file": str(tmp_path / "ca.pem")},
                        **options,
                    },
                    hec(splunk.url, **options),
                    {"name": "es", "type": "elasticsearch", "url": elastic.url, **options},
                ]
            )

        pipeline = await Pipeline.start(settings(0))
        try:

            async def reload_and_deliver(cycle: int) -> None:
                await pipeline.reload(settings(cycle), 5)
                _, body = incident()
                assert await pipeline.outbox.append(
                    parse_event(body, received_at=datetime.now(UTC))
                )
                await wait_until(
                    lambda: pipeline.outbox.events == 0 or None, timeout=10, what="delivery"
                )
                # After the send, so that the HTTP outputs check on the connection it opened.
                await pipeline.check_outputs()

            for cycle in range(1, 3):  # the first connections, the thread pools at their size
                await reload_and_deliver(cycle)
            # The store's checkpointer starts a second after the store opens, with a thread and
            # a connection of its own, reloads or not: in the baseline, and its files left out.
            await wait_until(
                lambda: any(name.startswith("checkpoint") for name in own_threads()) or None,
                timeout=10,
                what="the store's checkpointer",
            )
            store = pipeline.settings.store.path
            fds, threads, tasks = open_fds(store), own_threads(), lasting_tasks()
            for cycle in range(3, 23):
                await reload_and_deliver(cycle)
            await wait_until(
                lambda: (open_fds(store) <= fds and lasting_tasks() <= tasks) or None,
                timeout=5,
                what=f"{open_fds(store)} fds ({fds} before), {lasting_tasks()} tasks "
                f"({tasks} before)",
            )
            assert own_threads() == threads
        finally:
            await pipeline.stop(5)
