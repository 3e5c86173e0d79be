"""Run the real daemon as a subprocess: config in a temporary directory, loopback, a free port.

`Daemon` writes the config, starts `python -m forwarder run -c CONFIG`, waits for GET /healthz to
answer (polling under a deadline, never a fixed sleep), keeps each run's stderr (JSON log lines) in
its own file so a test can wait for a log line, and stops the process with SIGTERM, then SIGKILL
if it does not exit in time. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

__all__ = [
    "HOST",
    "JSON_HEADERS",
    "Daemon",
    "DaemonFactory",
    "NotifyListener",
    "PostResults",
    "drained",
    "file_output",
    "free_port",
    "ids_in",
    "incident",
    "post_event",
    "queued_deliveries",
    "read_jsonl",
    "wait_until",
    "wait_until_async",
]

T = TypeVar("T")

HOST = "127.0.0.1"
JSON_HEADERS = {"Content-Type": "application/json"}
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "incident_ftp_login.json"
POLL_SECS = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def incident(event_id: str | None = None) -> tuple[str, bytes]:
    """The seed's FTP incident with its own IncidentHash, so it is a new event: (id, body)."""
    event_id = event_id or uuid.uuid4().hex
    payload = json.loads(SAMPLE.read_bytes())
    payload["IncidentHash"] = event_id
    return event_id, json.dumps(payload).encode()


def file_output(name: str, path: Path | str, **options: Any) -> dict[str, Any]:
    """A `file` output that sends at once and retries quickly (tests wait for its lines)."""
    config: dict[str, Any] = {
        "name": name,
        "type": "file",
        "path": str(path),
        "batch": {"timeout_secs": 0},
        "retry": {"initial_backoff_secs": 0.05, "max_backoff_secs": 0.2},
    }
    config.update(options)
    return config


def read_jsonl(path: Path, *, complete: bool = True) -> list[dict[str, Any]]:
    """The JSON lines of `path` ([] if it does not exist).

    With `complete=False` a last line without its newline (a write in progress) is ignored;
    otherwise every line must be whole JSON.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail and complete:
        raise AssertionError(f"{path.name}: last line has no newline (torn record): {tail[:80]!r}")
    return [json.loads(line) for line in lines]


def ids_in(path: Path) -> Counter[str]:
    """How often each event id occurs in a file output."""
    return Counter(record["id"] for record in read_jsonl(path, complete=False))


async def wait_until(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""

    async def check() -> T | None:
        return condition()

    return await wait_until_async(check, timeout=timeout, what=what)


async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]], *, timeout: float, what: str
) -> T:
    """`wait_until` for a coroutine condition."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_SECS)


@dataclass
class PostResults:
    """What became of each event a test posted, by event id."""

    stored: set[str] = field(default_factory=set)
    """Answered 200 with {"status": "stored", "id": <the id>}: must be delivered."""
    unanswered: set[str] = field(default_factory=set)
    """No answer (connection refused or reset): may or may not be delivered."""
    other: dict[str, str] = field(default_factory=dict)
    """Any other answer: a test usually expects none."""

    @property
    def sent(self) -> set[str]:
        return self.stored | self.unanswered | set(self.other)


async def post_event(
    session: aiohttp.ClientSession, url: str, results: PostResults, event_id: str | None = None
) -> str:
    """Post one new incident and file the outcome in `results`; returns its id."""
    event_id, body = incident(event_id)
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            answer = await response.read()
    except (aiohttp.ClientError, OSError):
        results.unanswered.add(event_id)
        return event_id
    if response.status == 200 and json.loads(answer) == {
        "status": "stored",
        "id": event_id,
        "kind": "incident",
    }:
        results.stored.add(event_id)
    else:
        results.other[event_id] = f"{response.status} {answer[:200]!r}"
    return event_id


class Daemon:
    """One daemon configuration in `workdir`; may be started, stopped and killed many times."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        graceful_secs: float = 10.0,
        extra_args: Iterable[str] = (),
        module: str = "forwarder",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`module` is what `python -m` runs (a wrapper such as tests.daemon.stalls takes the
        same arguments); `environ` is added to the test's environment."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.port = free_port()
        self.graceful_secs = graceful_secs
        self.extra_args = list(extra_args)
        self.module = module
        self.environ = dict(environ or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.write_config(config)

    # Configuration

    def write_config(self, config: Mapping[str, Any] | str) -> None:
        """Write the config file; a mapping gets listen.host/port filled in, text is written as is.

        Mappings get `listen.host: 127.0.0.1` and this daemon's port unless they set them.
        """
        if isinstance(config, str):
            self.config_path.write_text(config, "utf-8")
            return
        data = dict(config)
        listen = dict(data.get("listen") or {})
        listen.setdefault("host", HOST)
        listen.setdefault("port", self.port)
        data["listen"] = listen
        data.setdefault("store", {"path": str(self.workdir / "state")})
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/canary"

    @property
    def stderr_path(self) -> Path:
        """The current (latest) run's stderr."""
        return self.workdir / f"daemon-{self.runs}.log"

    # Process

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "run",
            "-c",
            str(self.config_path),
            "--log-format",
            "json",
            "--graceful-timeout",
            str(self.graceful_secs),
            *self.extra_args,
        ]

    def spawn(self, stderr: int | None = None) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to be ready.

        Its stderr goes to this run's log file, or to the file descriptor `stderr` if given (a
        pipe or a terminal, for tests of the log format; the log methods then see nothing).
        """
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.runs += 1
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            FORWARDER_DISABLE_PLUGIN_AUTOLOAD="1",
            **self.environ,
        )
        with self.stderr_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file if stderr is None else stderr,
            )
        return self.proc

    async def start(self, timeout: float = 20.0, *, stderr: int | None = None) -> Daemon:
        """Start and wait until GET /healthz answers 200; `stderr` as for `spawn`."""
        self.spawn(stderr)
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        proc = self.proc
        assert proc is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"daemon exited with {proc.returncode} before it was ready:\n"
                        + self.stderr_text()
                    )
                try:
                    async with session.get(f"{self.base_url}/healthz") as response:
                        return response.status == 200
                except (aiohttp.ClientError, OSError):
                    return False

            await wait_until_async(healthy, timeout=timeout, what="GET /healthz to answer 200")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "daemon is not running"
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        proc = self.proc
        assert proc is not None

        def exited() -> bool:
            return proc.poll() is not None

        await wait_until(exited, timeout=timeout, what=f"daemon (pid {proc.pid}) to exit")
        assert proc.returncode is not None
        return proc.returncode

    async def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, wait (graceful timeout + 5 s), then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc is None:
            raise AssertionError("daemon was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return await self.wait_exit(self.graceful_secs + 5 if timeout is None else timeout)
            except AssertionError:
                proc.kill()
                proc.wait()
                raise
        return proc.returncode

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (-9)."""
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait()

    def close(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def run_to_exit(self, timeout: float = 20.0) -> tuple[int, str]:
        """Start and wait for the process to exit by itself (start-up failures)."""
        proc = self.spawn()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"daemon did not exit within {timeout:g} s") from None
        return code, self.stderr_text()

    # Logs

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        """The current run's log lines; a line that is not JSON comes back as {"raw": line}."""
        lines: list[dict[str, Any]] = []
        for line in self.stderr_text().splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            lines.append(parsed if isinstance(parsed, dict) else {"raw": line})
        return lines

    def find_logs(self, event: str, *, level: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.logs()
            if line.get("event") == event and (level is None or line.get("level") == level)
        ]

    async def wait_for_log(
        self, event: str, *, level: str | None = None, count: int = 1, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until the current run logged `event` at least `count` times; returns the last."""

        def found() -> dict[str, Any] | None:
            lines = self.find_logs(event, level=level)
            return lines[count - 1] if len(lines) >= count else None

        return await wait_until(found, timeout=timeout, what=f"log line {event!r}")

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float | None:
        """The value of an unlabelled metric from GET /metrics."""
        async with session.get(f"{self.base_url}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None


def queued_deliveries(store: Path) -> dict[str, int]:
    """Deliveries waiting in a stopped daemon's store, by output (read-only)."""
    database = sqlite3.connect(f"file:{store / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT output, COUNT(*) FROM deliveries GROUP BY output")
        return dict(rows.fetchall())
    finally:
        database.close()


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: give a daemon
    `environ={"NOTIFY_SOCKET": str(listener.path)}` and read what it told systemd."""

    def __init__(self, path: Path) -> None:
        # AF_UNIX paths are limited to 108 bytes.
        assert len(str(path)) < 100, path
        self.path = path
        self.received: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def messages(self) -> list[str]:
        """Every datagram so far, oldest first."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append(self._sock.recv(4096).decode())
        return self.received

    def states(self) -> list[str]:
        """The first assignment of each datagram that changes the state systemd sees (READY=1,
        RELOADING=1, STOPPING=1), leaving out watchdog pings, status lines and extensions."""
        firsts = [message.split("\n")[0] for message in self.messages()]
        ignored = ("WATCHDOG=", "STATUS=", "EXTEND_TIMEOUT_USEC=")
        return [first for first in firsts if not first.startswith(ignored)]


DaemonFactory = Callable[..., Daemon]
"""The `daemons` fixture (tests/daemon/conftest.py): `daemons(config, **options)` -> Daemon."""

DaemonT = TypeVar("DaemonT", bound=Daemon)


@contextlib.contextmanager
def daemon_factory(
    cls: Callable[..., DaemonT], directory: Path
) -> Iterator[Callable[..., DaemonT]]:
    """`make(config, **options)` builds a daemon (not started) under `directory`; every one is
    closed (killed if still running) when the block ends, so none outlives its test."""
    made: list[DaemonT] = []

    def make(config: Mapping[str, Any], **options: Any) -> DaemonT:
        daemon = cls(directory / f"daemon{len(made)}", config, **options)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.close()


async def drained(daemon: Daemon, session: aiohttp.ClientSession) -> bool:
    """True once the daemon's store holds no undelivered event."""
    with contextlib.suppress(aiohttp.ClientError, OSError):
        return await daemon.metric(session, "canary_forwarder_store_events") == 0
    return False
