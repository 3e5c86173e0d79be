"""The sd_notify(3) protocol, without libsystemd: tell the service manager how the daemon is doing.

systemd passes a datagram socket in NOTIFY_SOCKET (a path, or `@name` for an abstract socket) and
reads newline-separated `KEY=value` assignments from it: READY=1 once the daemon listens with the
store open, RELOADING=1 while SIGHUP is handled, STOPPING=1 at shutdown, WATCHDOG=1 at least once
per WatchdogSec, and STATUS=<text> for `systemctl status`. See
https://www.freedesktop.org/software/systemd/man/sd_notify.html.

A WATCHDOG=1 from `watchdog_loop` proves two things: the event loop runs, and the store thread
answers (it runs every SQLite call; stuck, it leaves every post waiting for its commit while the
loop looks fine). Either one stuck stops the pings, and systemd restarts the daemon.

Outside systemd (NOTIFY_SOCKET unset) every call is a no-op. A failed send never raises: losing a
status line must not take the daemon down. The first failure is logged as a warning; later ones
are not, so a broken socket cannot flood the journal at every watchdog tick.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog

__all__ = [
    "Notifier",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

log = structlog.get_logger("forwarder.systemd")

# How often STATUS= is refreshed when the unit has no WatchdogSec: often enough for
# `systemctl status` to look live, rarely enough to cost nothing.
STATUS_REFRESH_SECS: Final = 10.0

_warned = False


class Notifier:
    """Sends notifications to one socket. `Notifier.from_environ()` is the usual way to get one.

    Args:
        address: NOTIFY_SOCKET's value: an absolute path, `@name` for an abstract socket, or None
            (nothing to notify; every method is then a no-op returning False).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through NOTIFY_SOCKET (a no-op one if it is unset)."""
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=value` assignments in one datagram, e.g. `notify(READY=1, STATUS="up")`.

        Returns:
            True if the datagram was handed to the socket; False if notification is off or the
            send failed (logged once per process).
        """
        if self.address is None or not fields:
            return False
        message = "\n".join(f"{key}={_field_value(value)}" for key, value in fields.items())
        return self._send(self.address, message.encode("utf-8", "replace"))

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the daemon listens and its store is open. Send it again after a reload."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """RELOADING=1: a reload started; `ready()` must follow once the new config is in effect.

        MONOTONIC_USEC lets systemd (253 and later, Type=notify-reload) tell this reload from an
        earlier one; older versions ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=now_usec)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: a graceful shutdown started, so systemd waits for it (TimeoutStopSec)."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def extend_timeout(self, secs: float) -> bool:
        """EXTEND_TIMEOUT_USEC: give the start (or stop) `secs` more from now, beyond
        TimeoutStartSec; systemd 236 and later. Ignored by the others, harmlessly."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(secs * 1_000_000))

    def status(self, text: str) -> bool:
        """STATUS=<text>: one line shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def watchdog(self, status: str | None = None) -> bool:
        """WATCHDOG=1: the daemon is alive. Missing pings for WatchdogSec gets us restarted.

        `watchdog_loop` decides what alive means: the event loop runs and the store thread answers.
        """
        if status is None:
            return self.notify(WATCHDOG=1)
        return self.notify(WATCHDOG=1, STATUS=status)

    def _send(self, configured: str, message: bytes) -> bool:
        address = configured
        if address.startswith("@"):
            # The Linux abstract namespace: the name starts with a NUL byte and has no file.
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            # sd_notify accepts only these two forms (newer systemd adds vsock:, which we lack).
            _warn_once("NOTIFY_SOCKET is neither an absolute path nor @abstract.", configured)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Non-blocking: this runs on the event loop, and a full socket queue must cost a
                # lost status line, not a stalled loop (which the watchdog would then punish).
                sock.setblocking(False)
                sock.sendto(message, address)
        except OSError as exc:
            _warn_once(f"Cannot notify systemd: {exc}.", configured)
            return False
        return True


def _field_value(value: str | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    # A newline would start a new assignment: a status text must not be able to forge READY=1.
    return str(value).replace("\n", " ").replace("\r", " ")


def _warn_once(message: str, address: str | None) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(message, notify_socket=address)


def notify(**fields: str | int) -> bool:
    """`Notifier.notify` on the socket in the current NOTIFY_SOCKET."""
    return Notifier.from_environ().notify(**fields)


def ready(status: str | None = None) -> bool:
    """READY=1 (and STATUS= if given) to the socket in NOTIFY_SOCKET."""
    return Notifier.from_environ().ready(status)


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC to the socket in NOTIFY_SOCKET."""
    return Notifier.from_environ().reloading()


def stopping(status: str | None = None) -> bool:
    """STOPPING=1 (and STATUS= if given) to the socket in NOTIFY_SOCKET."""
    return Notifier.from_environ().stopping(status)


def status(text: str) -> bool:
    """STATUS=<text> to the socket in NOTIFY_SOCKET."""
    return Notifier.from_environ().status(text)


def watchdog() -> bool:
    """WATCHDOG=1 to the socket in NOTIFY_SOCKET."""
    return Notifier.from_environ().watchdog()


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off: WATCHDOG_USEC unset, not a positive integer, or WATCHDOG_PID
    naming another process (the variables were inherited, not meant for us).
    """
    environ = os.environ if environ is None else environ
    try:
        period_usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if period_usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    return period_usec / 2 / 1_000_000


async def watchdog_loop(
    status: Callable[[], str],
    *,
    notifier: Notifier | None = None,
    interval: float | None = None,
    alive: Callable[[float], Awaitable[bool]] | None = None,
) -> None:
    """Ping the watchdog and refresh STATUS= until cancelled.

    A ping proves the event loop is alive, since it sends them, and, with `alive`, that the store
    thread is too: before each ping `alive` is awaited, for at most the ping interval, and while
    it fails (False, an exception or no answer in time) no WATCHDOG=1 is sent, only STATUS= saying
    the store thread is not responding. A stall that lasts WatchdogSec gets the daemon restarted;
    its start is logged as an ERROR, once, and its end as a warning. Without a watchdog only
    STATUS= is sent, every STATUS_REFRESH_SECS, and mentions a stall all the same. Returns at once
    when NOTIFY_SOCKET is unset.

    Args:
        status: returns the one-line status, e.g. "queued 12, oldest 3s, outputs 2/2 healthy".
        notifier: where to send; defaults to `Notifier.from_environ()`.
        interval: seconds between pings; defaults to `watchdog_interval()`.
        alive: the store thread's liveness check, called with the seconds it may take, e.g.
            `Outbox.responsive`; None checks the event loop only.
    """
    notifier = Notifier.from_environ() if notifier is None else notifier
    if not notifier.enabled:
        return
    ping_interval = watchdog_interval() if interval is None else interval
    period = STATUS_REFRESH_SECS if ping_interval is None else ping_interval
    loop = asyncio.get_running_loop()
    status_failure_logged = False
    check_failure_logged = False
    stalled_since: float | None = None
    while True:
        started = loop.time()
        responding = True
        if alive is not None:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the answer
                # instead of the cancellation when both come in one turn of the loop, and this
                # loop would then never end.
                async with asyncio.timeout(period):
                    responding = await alive(period)
            except TimeoutError:
                responding = False
            except Exception:
                # Counted as a stall: a ping must not vouch for a thread nobody could ask.
                if not check_failure_logged:
                    check_failure_logged = True
                    log.exception("The store thread's liveness check failed.")
                responding = False
        if responding and stalled_since is not None:
            log.warning(
                "The store thread responds again.",
                stalled_secs=round(loop.time() - stalled_since, 1),
            )
            stalled_since = None
        elif not responding and stalled_since is None:
            stalled_since = started
            log.error(
                "The store thread is not responding; posts wait for their commit.",
                waited_secs=round(loop.time() - started, 1),
                watchdog_pings_withheld=ping_interval is not None,
            )
        try:
            text: str | None = status()
        except Exception:
            # A broken status line is a bug to report (once), not a reason to stop pinging and
            # let the watchdog kill a daemon that is otherwise delivering events.
            if not status_failure_logged:
                status_failure_logged = True
                log.exception("Cannot build the systemd status line.")
            text = None
        if stalled_since is not None:
            stall = f"store thread not responding for {loop.time() - stalled_since:.0f}s"
            text = stall if text is None else f"{stall}; {text}"
        if ping_interval is not None and stalled_since is None:
            notifier.watchdog(text)
        elif text is not None:
            notifier.status(text)
        # Ticks stay `period` apart however long the check took, or a slow answer from the store
        # thread would stretch the gap between pings towards WatchdogSec.
        await asyncio.sleep(max(0.0, period - (loop.time() - started)))
