"""A real rsyslogd for integration tests, started by the test on loopback in a temporary directory.

Each instance runs in the foreground (-n) with its own configuration, pid file, work directory
and output files, so nothing of the machine's own syslog set-up is read or touched. It listens
on 127.0.0.1 (or ::1) on one transport (UDP, TCP with octet-counted and LF framing on the same
port, or TLS through the gtls driver with a CA made for the test) and writes every message it
parsed as one JSON object per line, with the RFC 5424 structured data parsed by mmpstrucdata. Its
own messages (start, errors such as TLS failures) go to a second file, so a test can assert on them.

Use the `rsyslog_factory` fixture, or `running_rsyslog` to share one instance across a module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

__all__ = [
    "RSYSLOGD",
    "Predicate",
    "Rsyslog",
    "RsyslogError",
    "RsyslogFactory",
    "TlsFiles",
    "Transport",
    "make_tls_files",
    "requires_rsyslogd",
    "rsyslog_factory",
    "running_rsyslog",
]

Transport = Literal["udp", "tcp", "tls"]
Predicate = Callable[[list[dict[str, Any]]], bool]

RSYSLOGD: str | None = shutil.which("rsyslogd") or next(
    (path for path in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(path, os.X_OK)), None
)

requires_rsyslogd = pytest.mark.skipif(
    RSYSLOGD is None,
    reason="rsyslogd is not installed; install the rsyslog and rsyslog-gnutls packages",
)

START_TIMEOUT_SECS = 10.0
STOP_TIMEOUT_SECS = 10.0
_POLL_SECS = 0.002

# Every property a test may check, as rsyslog parsed it. `sd` is mmpstrucdata's unescaped view
# of the structured data (a JSON text that `records()` decodes); `sd_raw` is the wire form.
_TEMPLATE = """
template(name="parsed_json" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="tag" name="syslogtag" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd_raw" name="structured-data" format="jsonf")
  property(outname="sd" name="$!rfc5424-sd" format="jsonf" dataType="auto")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}
"""


class RsyslogError(RuntimeError):
    """rsyslogd did not start, died, or did not receive what the test waited for."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a CA made for one test run, and a server and a client certificate it issued."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path
    """A second, unrelated CA: trusting only it makes verification of the server fail."""


def make_tls_files(directory: Path) -> TlsFiles:
    """Issue the certificates with trustme (imported here: only TLS tests need it)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost", "syslog.test")
    client = ca.issue_cert("canary-forwarder.test")
    files = TlsFiles(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
        other_ca_file=directory / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    trustme.CA().cert_pem.write_to_path(str(files.other_ca_file))
    return files


def _free_udp_port(host: str) -> int:
    # imudp cannot bind port 0 and report it (imtcp can, see listenPortFileName), so ask the
    # kernel for a free port and hand it over; the window in which another process could take it
    # is a few milliseconds.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _quote(value: object) -> str:
    return json.dumps(str(value))


@dataclass(frozen=True, slots=True)
class _Layout:
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "rsyslog.conf"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rsyslogd.pid"

    @property
    def work_dir(self) -> Path:
        return self.directory / "work"

    @property
    def port_file(self) -> Path:
        return self.directory / "port"

    @property
    def records(self) -> Path:
        return self.directory / "records.jsonl"

    @property
    def internal_log(self) -> Path:
        return self.directory / "rsyslogd.log"


def _config(
    layout: _Layout,
    transport: Transport,
    udp_port: int | None,
    tls: TlsFiles | None,
    client_auth: bool,
    max_message_size: int | None,
    host: str,
) -> str:
    global_options = [
        f"workDirectory={_quote(layout.work_dir)}",
        # Keep LF and other control characters as received instead of rewriting them as #012,
        # so a test sees exactly what crossed the wire.
        'parser.escapeControlCharactersOnReceive="off"',
        # Handle rsyslogd's own messages here instead of handing them to the system's journal.
        'processInternalMessages="on"',
    ]
    if max_message_size is not None:
        # Must come before the inputs; the default (8096 bytes) would cut long records.
        global_options.append(f"maxMessageSize={_quote(max_message_size)}")
    if tls is not None:
        global_options += [
            f"defaultNetstreamDriverCAFile={_quote(tls.ca_file)}",
            f"defaultNetstreamDriverCertFile={_quote(tls.server_cert)}",
            f"defaultNetstreamDriverKeyFile={_quote(tls.server_key)}",
        ]
    lines = [f"global({' '.join(global_options)})", 'module(load="mmpstrucdata")']
    if transport == "udp":
        lines += [
            'module(load="imudp")',
            f'input(type="imudp" address={_quote(host)} port={_quote(udp_port)} ruleset="in")',
        ]
    else:
        # One imtcp port takes octet-counted and LF-framed records alike: it looks at the first
        # byte of each frame (SupportOctetCountedFraming is on by default).
        stream = ""
        if transport == "tls":
            auth = "x509/certvalid" if client_auth else "anon"
            stream = (
                f' streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}"'
            )
        lines += [
            'module(load="imtcp")',
            f'input(type="imtcp" address={_quote(host)} port="0"'
            f' listenPortFileName={_quote(layout.port_file)} ruleset="in"{stream}'
            # Log every session's end, so a test can wait for it and see how it ended.
            ' notifyOnConnectionClose="on")',
        ]
    lines += [
        _TEMPLATE,
        'ruleset(name="in") {',
        # Keep SD-IDs and parameter names as sent (mmpstrucdata lowercases them by default).
        '  action(type="mmpstrucdata" sd_name.lowercase="off")',
        f'  action(type="omfile" file={_quote(layout.records)} template="parsed_json")',
        "}",
        # rsyslogd's own messages (the start banner, TLS and framing errors) land here.
        f'action(type="omfile" file={_quote(layout.internal_log)})',
    ]
    return "\n".join(lines) + "\n"


class Rsyslog:
    """One running rsyslogd. `records()` reads what it wrote so far; `stop()` ends it."""

    def __init__(
        self,
        directory: Path,
        transport: Transport = "tcp",
        *,
        tls: TlsFiles | None = None,
        client_auth: bool = False,
        max_message_size: int | None = 64 * 1024,
        host: str = "127.0.0.1",
    ) -> None:
        if RSYSLOGD is None:
            raise RsyslogError("rsyslogd is not installed")
        if transport == "tls" and tls is None:
            tls = make_tls_files(directory / "tls")
        self.transport: Transport = transport
        self.tls = tls
        self.host = host
        self._layout = _Layout(directory)
        self._read_offset = 0
        self._parsed: list[dict[str, Any]] = []
        directory.mkdir(parents=True, exist_ok=True)
        self._layout.work_dir.mkdir(exist_ok=True)
        udp_port = _free_udp_port(host) if transport == "udp" else None
        self._layout.config.write_text(
            _config(self._layout, transport, udp_port, tls, client_auth, max_message_size, host)
        )
        self._stderr_path = directory / "stderr.txt"
        with self._stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [
                    RSYSLOGD,
                    "-n",
                    "-f",
                    str(self._layout.config),
                    "-i",
                    str(self._layout.pid_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            self.port = udp_port if udp_port is not None else self._wait_for_port()
            self._wait_for_start_banner()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        """`host:port` (`[host]:port` for IPv6), as an output's `hosts` entry."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _fail_if_late(self, deadline: float, waiting_for: str) -> None:
        """Raise if rsyslogd died or the deadline passed; say what was awaited and why."""
        if self._process.poll() is not None:
            raise RsyslogError(
                f"rsyslogd exited with {self._process.returncode} while waiting for "
                f"{waiting_for}:\n{self.diagnostics()}"
            )
        if time.monotonic() > deadline:
            raise RsyslogError(f"timed out waiting for {waiting_for}:\n{self.diagnostics()}")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self._layout.port_file.read_text().strip())
            self._fail_if_late(deadline, "the listening port")
            time.sleep(_POLL_SECS)

    def _wait_for_start_banner(self) -> None:
        # rsyslogd logs its start banner once every input is set up.
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not re.search(r"\] start$", self.internal_log(), re.MULTILINE):
            self._fail_if_late(deadline, "the start banner")
            time.sleep(_POLL_SECS)

    def internal_log(self) -> str:
        """rsyslogd's own messages so far (start banner, errors)."""
        try:
            return self._layout.internal_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait until rsyslogd's own log matches the regular expression; return the log."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, log := self.internal_log()):
            self._fail_if_late(deadline, f"{pattern!r} in rsyslogd's own log")
            await asyncio.sleep(_POLL_SECS)
        return log

    def diagnostics(self) -> str:
        stderr = self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""
        return f"--- stderr\n{stderr}\n--- internal log\n{self.internal_log()}"

    def records(self) -> list[dict[str, Any]]:
        """Every complete record written so far, with `sd` decoded into a dict."""
        # Read only what was appended since the last call: tests poll this in a loop.
        try:
            with self._layout.records.open("rb") as output:
                output.seek(self._read_offset)
                appended = output.read()
        except FileNotFoundError:
            return []
        complete = appended[: appended.rfind(b"\n") + 1]
        self._read_offset += len(complete)
        self._parsed += [_decode(line) for line in complete.split(b"\n") if line]
        return list(self._parsed)

    def wait_for_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least `count` records arrived; fail after `timeout` seconds."""
        return self.wait_until_records(lambda found: len(found) >= count, timeout)

    def wait_until_records(self, done: Predicate, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until `done(records)` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not done(found := self.records()):
            self._fail_if_late(deadline, f"a condition on the records ({len(found)} so far)")
            time.sleep(_POLL_SECS)
        return found

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """`wait_for_records` for coroutines: polls without blocking the event loop."""
        return await self.wait_until(lambda found: len(found) >= count, timeout)

    async def wait_until(self, done: Predicate, timeout: float = 10.0) -> list[dict[str, Any]]:
        """`wait_until_records` for coroutines.

        rsyslogd writes the records of one connection in order, so waiting for a last, known
        record (a sentinel) proves every record sent before it was written too: a test can then
        assert that nothing more arrived. (Stopping rsyslogd instead would not do: it discards
        what its inputs have not read yet.)
        """
        deadline = time.monotonic() + timeout
        while not done(found := self.records()):
            self._fail_if_late(deadline, f"a condition on the records ({len(found)} so far)")
            await asyncio.sleep(_POLL_SECS)
        return found

    def stop(self) -> list[dict[str, Any]]:
        """Stop rsyslogd and return every record it wrote."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self.records()


def _decode(line: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(line)
    for numeric in ("pri", "severity"):
        record[numeric] = int(record[numeric])
    sd = record.get("sd")
    record["sd"] = json.loads(sd) if isinstance(sd, str) and sd else (sd or {})
    return record


class RsyslogFactory(Protocol):
    def __call__(
        self,
        transport: Transport = "tcp",
        *,
        client_auth: bool = False,
        max_message_size: int | None = 64 * 1024,
        host: str = "127.0.0.1",
    ) -> Rsyslog: ...


@contextlib.contextmanager
def running_rsyslog(
    directory: Path,
    transport: Transport = "tcp",
    *,
    client_auth: bool = False,
    max_message_size: int | None = 64 * 1024,
    host: str = "127.0.0.1",
) -> Iterator[Rsyslog]:
    """One rsyslogd for the `with` block, e.g. inside a module-scoped fixture."""
    server = Rsyslog(
        directory,
        transport,
        client_auth=client_auth,
        max_message_size=max_message_size,
        host=host,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rsyslog_factory(tmp_path: Path) -> Iterator[RsyslogFactory]:
    """Start as many rsyslogd as a test needs; all are stopped when it ends."""
    started: list[Rsyslog] = []

    def start(
        transport: Transport = "tcp",
        *,
        client_auth: bool = False,
        max_message_size: int | None = 64 * 1024,
        host: str = "127.0.0.1",
    ) -> Rsyslog:
        server = Rsyslog(
            tmp_path / f"rsyslog-{len(started)}",
            transport,
            client_auth=client_auth,
            max_message_size=max_message_size,
            host=host,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
