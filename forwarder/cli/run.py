"""`run`: start the daemon and keep it running until SIGTERM or SIGINT; SIGHUP reloads the
configuration and reopens the outputs' files, even when it refuses the new configuration.

Start-up order: bind the listening sockets (so a port in use fails before anything else has
started), open the store, start the outputs, then listen and send READY=1. A stop signal during
start-up ends it there: what was opened is closed and the exit status is 0.

Shutdown order (after uvicorn's): stop accepting, let in-flight requests finish, let each output
finish the send it is in, then close the store cleanly, all within one graceful timeout counted
from the signal, a reload under way included. A second stop signal ends the process at once,
after closing the store, with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import ipaddress
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import structlog
from aiohttp import web

from forwarder import __version__, systemd
from forwarder.app import IN_FLIGHT, build_app
from forwarder.cli import hangup_held
from forwarder.cli._common import add_config_argument, settings_from_args
from forwarder.ingest.listener import HTTP_LOGGER, ListenSite, ListenSocket
from forwarder.ingest.tls import reload_certificates, server_context
from forwarder.pipeline import Pipeline, ReloadAbandoned, ReloadError, unless_set
from forwarder.settings import (
    EX_CONFIG,
    ConfigError,
    NotRereadable,
    Settings,
    default_settings,
    reload_settings,
)
from forwarder.telemetry.logging import configure_logging, flush_logs

__all__ = ["configure", "main", "serve"]

log = structlog.get_logger("forwarder")

# How long a connection may take to send a request's headers, or sit idle between requests;
# also how long a TLS handshake may take, before that.
HEADER_TIMEOUT_SECS = 15.0
# Open files the daemon asks for at start (each connection is one).
FD_LIMIT = 65536
# How long a second stop signal lets the store take to close before the process ends anyway:
# a store thread stuck on a dead disk must not keep an operator's "stop now" waiting.
FORCED_STORE_CLOSE_SECS = 5.0
# The exit status after a second stop signal cut the graceful stop short.
EXIT_FORCED = 1
# While the store opens (its integrity check, or salvaging a damaged one, reads the whole file)
# and the outputs start, systemd is asked for this much more time, again every
# START_EXTEND_EVERY_SECS, up to START_EXTEND_MAX_SECS in all: a large store's repair must not
# be killed at TimeoutStartSec and begun again at every restart. The cap still lets systemd
# end a start that hangs.
START_EXTEND_SECS = 30.0
START_EXTEND_EVERY_SECS = 10.0
START_EXTEND_MAX_SECS = 900.0


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=False)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="auto: JSON lines unless stderr is a terminal",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECS",
        help="how long in-flight requests and sends may take to finish on shutdown (default 30)",
    )


def main(args: argparse.Namespace) -> int:
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(args.log_level, json=json_logs)
    _raise_fd_limit()
    settings = settings_from_args(args)
    return asyncio.run(serve(settings, args.config, args.graceful_timeout))


def _raise_fd_limit(wanted: int = FD_LIMIT) -> None:
    """Raise the soft limit on open files towards the hard one (systemd's soft default is 1024,
    which a thousand idle connections would use up, stalling accept() for everyone)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# The young generation is collected after 10,000 net allocations instead of CPython's 700. A
# webhook post allocates hundreds of objects that reference counting frees at once; the
# collector only needs to run for cycles, and every run stops the event loop.
GC_THRESHOLDS = (10_000, 20, 10)


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a long-running server, once start-up is done.

    `gc.freeze` moves every object start-up built (modules, settings, schemas, outputs) into a
    generation no collection walks again. Measured under the ingest benchmark's load, full
    collections walking that heap stopped the event loop for up to 52 ms every few seconds,
    and young collections ran 38 times a second.
    """
    gc.collect()  # so that no garbage is frozen with the rest, where nothing would free it
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _status_line(pipeline: Pipeline) -> str:
    outbox = pipeline.outbox
    failing = [d.name for d in pipeline.dispatchers if d.failing_since is not None]
    text = f"{outbox.events} events queued ({outbox.bytes} bytes)"
    return f"{text}; failing: {', '.join(failing)}" if failing else text


async def serve(settings: Settings, config_path: Path | None, graceful_secs: float) -> int:
    """Run until a stop signal; returns the process exit code."""
    listen = settings.listen
    if listen.auth is None or listen.auth == "none":
        log.warning("Webhook accepts posts without authentication.", host=listen.host)
    loop = asyncio.get_running_loop()
    notifier = systemd.Notifier.from_environ()
    stop = asyncio.Event()
    # SIGHUPs that arrive while a reload runs ask for one more reload, not one each.
    reload_wanted = asyncio.Event()
    pipeline: Pipeline | None = None
    forced: asyncio.Task[None] | None = None

    def on_stop(signame: str) -> None:
        nonlocal forced
        if not stop.is_set():
            log.info("Stopping.", signal=signame)
            stop.set()
        elif forced is None:
            log.warning("Second stop signal; exiting at once.", signal=signame)
            forced = asyncio.create_task(_exit_at_once(pipeline), name="exit-at-once")

    def on_reload() -> None:
        if stop.is_set():
            log.info("Reload requested while stopping; ignored.")
            return
        reload_wanted.set()

    # From the start, and kept to the end: a signal during start-up or shutdown must not
    # take its default action (SIGHUP would kill the daemon in the middle of a commit).
    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if hangup_held():
        on_reload()
    # Bound before the store opens and the outputs start, so a port in use or an unusable
    # certificate fails the start before anything has begun that it would cut short. Not yet
    # listening: connections are refused, not left waiting, until the daemon is ready.
    try:
        server_tls = server_context(listen)
        sockets = await _bind(listen.host, listen.port, loopback_only=listen.auth is None)
    except NotLoopback as exc:
        log.error("Cannot listen.", host=listen.host, port=listen.port, error=str(exc))
        return EX_CONFIG  # restarting cannot fix it
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a NUL in a path
        log.error("Cannot listen.", host=listen.host, port=listen.port, error=str(exc))
        return 1
    try:
        notifier.status("starting: opening the store and the outputs")
        extending = asyncio.create_task(_extend_start(notifier), name="extend-start")
        try:
            pipeline = await unless_set(stop, lambda: Pipeline.start(settings))
        except Exception as exc:
            log.error("Cannot start.", error=str(exc))
            return 1
        finally:
            extending.cancel()
        if pipeline is None:
            notifier.stopping(status="stopping: start-up interrupted")
            log.info("Stopped.")
            return 0
        return await _serve(
            pipeline, sockets, server_tls, config_path, graceful_secs, stop, reload_wanted, notifier
        )
    finally:
        for sock in sockets:
            sock.close()


async def _serve(
    pipeline: Pipeline,
    sockets: list[socket.socket],
    server_tls: ssl.SSLContext | None,
    config_path: Path | None,
    graceful_secs: float,
    stop: asyncio.Event,
    reload_wanted: asyncio.Event,
    notifier: systemd.Notifier,
) -> int:
    """Listen on `sockets` with the started `pipeline` until `stop`; the exit code."""
    loop = asyncio.get_running_loop()
    settings = pipeline.settings
    listen = settings.listen
    app = build_app(pipeline)
    # The graceful wait for in-flight requests happens below, before cleanup; by then aiohttp
    # only closes idle connections, so its own shutdown timeout can be short.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        # Bounds the wait for a request's headers too (aiohttp starts this timer when a
        # connection opens): a client sending them byte by byte cannot hold a connection.
        keepalive_timeout=HEADER_TIMEOUT_SECS,
        # Compressed bodies are refused with 415; never inflate one, not even to discard it.
        auto_decompress=False,
        # Logs a request it cannot parse as one warning within a budget, not an ERROR with a
        # traceback per request.
        logger=HTTP_LOGGER,
    )
    await runner.setup()
    try:
        for sock in sockets:
            site = ListenSite(
                runner,
                sock,
                ssl_context=server_tls,
                backlog=1024,
                handshake_timeout=HEADER_TIMEOUT_SECS,
            )
            await site.start()
    except OSError as exc:  # listen() can still find the port taken
        log.error("Cannot listen.", host=listen.host, port=listen.port, error=str(exc))
        await runner.cleanup()
        await pipeline.stop(graceful_secs)
        return 1

    async def reload() -> None:
        # The outputs a reload replaces were frozen with start-up: thawed, what they leave in
        # reference cycles can be collected; the new set is frozen once the reload is done.
        gc.unfreeze()
        replaced = False
        try:
            replaced = await _reload(pipeline, config_path, graceful_secs)
            if server_tls is not None:
                _reload_certificates(server_tls, pipeline)
        finally:
            if not replaced:
                # Fresh outputs opened their files just now; the ones that kept running must
                # reopen theirs, or they write on into the file logrotate moved away. In a
                # `finally`, so even a reload that failed unexpectedly leaves no stale file.
                await pipeline.reopen_outputs()
            # systemd waits for READY=1 after RELOADING=1, whether the reload worked or not;
            # but once STOPPING=1 is out, READY=1 would tell it the daemon runs on.
            if not stop.is_set():
                notifier.ready(status=_status_line(pipeline))
            settle_collector()

    # IPv6 in brackets: "::1:8080" reads as another address.
    addresses = [
        f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
        for a in runner.addresses
        if isinstance(a, tuple)
    ]
    log.info(
        "Listening.",
        version=__version__,
        addresses=addresses,
        path=listen.path,
        outputs=[d.name for d in pipeline.dispatchers],
        store=str(settings.store.path),
    )
    settle_collector()
    if not stop.is_set():  # a stop during the last steps of start-up: STOPPING=1 comes next
        notifier.ready(status=_status_line(pipeline))
    watchdog = asyncio.create_task(
        systemd.watchdog_loop(
            lambda: _status_line(pipeline), notifier=notifier, alive=pipeline.outbox.responsive
        )
    )
    reloader = asyncio.create_task(
        reload_when_asked(reload_wanted, stop, notifier, reload), name="reloader"
    )
    try:
        await stop.wait()
    finally:
        # One graceful budget for the whole shutdown, counted from now, not one per stage; a
        # reload under way keeps to it too (Pipeline.begin_stop).
        deadline = loop.time() + graceful_secs
        pipeline.begin_stop(graceful_secs)
        notifier.stopping(status=f"stopping: {_status_line(pipeline)}")
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        # aiohttp's cleanup stops reading every connection at once, which would strand a request
        # still receiving its body until the timeout; so stop listening first and let the
        # requests in progress finish, then let aiohttp close the connections.
        for running_site in list(runner.sites):
            await running_site.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await app[IN_FLIGHT].wait_idle()
        await runner.cleanup()
        # A reload under way ends by the deadline (it may be swapping outputs); none starts
        # after it.
        reload_wanted.set()
        with contextlib.suppress(Exception):
            await reloader
        await pipeline.stop(deadline - loop.time())
        log.info("Stopped.")
    return 0


async def _extend_start(notifier: systemd.Notifier) -> None:
    """Ask systemd for more start time while start-up runs (see START_EXTEND_SECS)."""
    if not notifier.enabled:
        return
    ends = time.monotonic() + START_EXTEND_MAX_SECS
    while time.monotonic() < ends:
        notifier.extend_timeout(START_EXTEND_SECS)
        await asyncio.sleep(START_EXTEND_EVERY_SECS)


class NotLoopback(ValueError):
    """A host that may take posts without authentication resolves to an address off the host."""


async def _bind(host: str, port: int, *, loopback_only: bool = False) -> list[socket.socket]:
    """A bound socket, not yet listening, for each address `host` resolves to, made as asyncio's
    create_server makes them: SO_REUSEADDR, IPv6 sockets for IPv6 only, and an address the host
    cannot assign skipped if another one binds ("localhost" with IPv6 disabled).

    With `loopback_only`, every address must be a loopback one: the configuration lets
    `localhost` listen without authentication, and /etc/hosts decides what it is.
    """
    loop = asyncio.get_running_loop()
    infos = list(
        dict.fromkeys(
            await loop.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        )
    )
    if loopback_only:
        addresses = [str(info[4][0]) for info in infos]
        exposed = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
        if exposed:
            raise NotLoopback(
                f"{host} resolves to {', '.join(exposed)}, which is not loopback; configure "
                "listen.auth or say `auth: none` explicitly"
            )
    sockets: list[socket.socket] = []
    unassignable: OSError | None = None
    try:
        for family, kind, proto, _, address in infos:
            sock = ListenSocket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
            except OSError as exc:
                sock.close()
                error = OSError(
                    exc.errno, f"cannot bind {address!r}: {(exc.strerror or str(exc)).lower()}"
                )
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise error from None
                unassignable = unassignable or error
                continue
            sockets.append(sock)
        if not sockets:
            raise unassignable or OSError(errno.EADDRNOTAVAIL, f"{host} has no address")
    except BaseException:
        for bound in sockets:
            bound.close()
        raise
    return sockets


async def _exit_at_once(pipeline: Pipeline | None) -> NoReturn:
    """End the process for a second stop signal, closing the store first if it is open.

    Nothing else is waited for: a send in progress is repeated at the next start, and a thread
    stuck in a system call (a file output on a hung mount) cannot hold the exit. The store is
    closed because a closed store has its WAL folded back, so a backup of the one file taken
    after the stop holds every event; what was committed is durable either way.
    """
    if pipeline is not None:
        try:
            async with asyncio.timeout(FORCED_STORE_CLOSE_SECS):
                await pipeline.close_store()
        except TimeoutError:
            log.error(
                "The store did not close in time; SQLite recovers it at the next start.",
                waited_secs=FORCED_STORE_CLOSE_SECS,
            )
        except Exception as exc:
            log.error("The store did not close cleanly.", error=str(exc))
    log.warning("Stopped at once; sends that were under way are repeated at the next start.")
    flush_logs()
    os._exit(EXIT_FORCED)


async def reload_when_asked(
    wanted: asyncio.Event,
    stop: asyncio.Event,
    notifier: systemd.Notifier,
    reload: Callable[[], Awaitable[None]],
) -> None:
    """Run `reload` once for each burst of SIGHUPs (`wanted`), until `stop` is set.

    A reload that fails in a way nobody foresaw (a bug in an output's validation, say) is logged
    with its traceback and the old configuration keeps running; the next SIGHUP reloads again.
    Before, such a failure ended this task, and every later SIGHUP was silently ignored.
    """
    while True:
        await wanted.wait()
        wanted.clear()
        if stop.is_set():
            return
        notifier.reloading()
        try:
            await reload()
        except Exception:
            log.exception("Reload failed unexpectedly; the old configuration keeps running.")


async def _reload(pipeline: Pipeline, config_path: Path | None, graceful_secs: float) -> bool:
    """Load the configuration again and swap in new outputs; False if the old ones keep running."""
    log.info("Reloading configuration.", config=str(config_path) if config_path else None)
    try:
        # In a thread: the event loop answers /healthz and stop signals while the file is read.
        settings = (
            await asyncio.to_thread(reload_settings, config_path)
            if config_path
            else default_settings()
        )
    except NotRereadable as exc:
        log.error(
            "The configuration came from a pipe or another file that is not a regular file, "
            "which cannot be read again: a reload needs a regular file (restart to apply a new "
            "configuration). The current configuration keeps running.",
            config=str(exc.path),
            problems=exc.problems,
        )
        return False
    except ConfigError as exc:
        log.error("New configuration is invalid; the old one keeps running.", problems=exc.problems)
        return False
    if settings.listen != pipeline.settings.listen:
        log.warning("Changes under `listen` take effect at the next restart.")
        settings = Settings(pipeline.settings.listen, settings.store, settings.outputs)
    if settings.store != pipeline.settings.store:
        log.warning("Changes under `store` take effect at the next restart.")
        settings = Settings(settings.listen, pipeline.settings.store, settings.outputs)
    try:
        await pipeline.reload(settings, graceful_secs)
    except ReloadAbandoned:
        log.info("Reload abandoned; the daemon is stopping.")
        return False
    except ReloadError as exc:
        log.error("New outputs could not start; the old ones keep running.", error=str(exc))
        return False
    return True


def _reload_certificates(context: ssl.SSLContext, pipeline: Pipeline) -> None:
    try:
        reload_certificates(context, pipeline.settings.listen)
    except (OSError, ssl.SSLError) as exc:
        log.error("Cannot reload the listener's certificate; the old one stays.", error=str(exc))
    else:
        log.info("Listener certificate reloaded.")
