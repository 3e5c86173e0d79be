"""The log format the daemon picks by itself (`--log-format auto`): JSON lines when stderr is
not a terminal (journald, containers), readable lines when it is; no configured secret in either.

Each test runs the real daemon with stderr on a pipe or a pseudo-terminal, posts one event with
the webhook's header secret, stops it with SIGTERM and reads everything it wrote.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from forwarder.telemetry.logging import configure_logging
from tests.daemon.harness import JSON_HEADERS, Daemon, DaemonFactory, file_output, incident

pytestmark = pytest.mark.slow

SECRET_HEADER = "X-Canary-Token"
SECRET = "hdr-Secret-8e21c4d07b9f3a56"


def _daemon(daemons: DaemonFactory, tmp_path: Path) -> Daemon:
    config = {
        "listen": {"auth": {"header": SECRET_HEADER, "secret": SECRET}},
        "outputs": [file_output("out", tmp_path / "out.jsonl")],
    }
    return daemons(config, extra_args=["--log-format", "auto"])


async def _run_and_read_stderr(daemon: Daemon, reader: int, writer: int) -> str:
    """Start the daemon with stderr on `writer`, post one event, stop it; all it wrote.

    The few lines of one short run fit in the pipe's or terminal's buffer, so reading once the
    daemon has exited cannot leave it blocked on a write.
    """
    try:
        try:
            await daemon.start(stderr=writer)
        finally:
            os.close(writer)  # the daemon holds the only writer left: its exit ends the reading
        _, body = incident()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                daemon.webhook_url, data=body, headers={**JSON_HEADERS, SECRET_HEADER: SECRET}
            ) as answer,
        ):
            assert answer.status == 200, await answer.text()
        assert await daemon.stop() == 0
        return _read_to_end(reader).decode("utf-8", "replace")
    finally:
        os.close(reader)


def _read_to_end(fd: int) -> bytes:
    """Everything left in a pipe or terminal whose writers are all closed."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # Linux's end of a terminal without a writer
                raise
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def test_logs_are_json_lines_when_stderr_is_a_pipe(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    reader, writer = os.pipe()
    text = await _run_and_read_stderr(_daemon(daemons, tmp_path), reader, writer)
    lines = text.splitlines()
    assert all(_json_object(line) for line in lines), text
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"level", "event", "timestamp"} <= record.keys(), record
        datetime.fromisoformat(record["timestamp"])
    events = [record["event"] for record in records]
    assert {"Listening.", "Event accepted.", "Stopped."} <= set(events), events
    assert SECRET not in text


async def test_logs_are_readable_lines_when_stderr_is_a_terminal(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    reader, writer = os.openpty()
    text = await _run_and_read_stderr(_daemon(daemons, tmp_path), reader, writer)
    lines = text.splitlines()
    [listening] = [line for line in lines if "Listening." in line]
    assert "[info" in listening and "[forwarder]" in listening, listening
    assert not [line for line in lines if _json_object(line)], text
    assert any("Event accepted." in line for line in lines), text
    assert SECRET not in text


def test_readable_lines_escape_what_a_terminal_would_act_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Text from outside cannot forge a line, move the cursor or reorder what is shown: not in
    a value, not in a message (aiohttp's own, about a malformed request), not in a traceback."""
    forged = "2026-11-27T00:00:00Z [info     ] Forged."
    hostile = f"first\n{forged}\x1b[2J\u2028\u202eevil\x9b"
    configure_logging(json=False)
    try:
        structlog.get_logger("test").warning("Receiver said no.", reason=hostile)
        try:
            raise ValueError(hostile)
        except ValueError:
            structlog.get_logger("test").exception("Failed.")
        logging.getLogger("aiohttp.server").error("Bad request: %s", hostile)
    finally:
        configure_logging(json=True)
    text = capsys.readouterr().err
    assert "Receiver said no." in text and "Failed." in text
    [foreign] = [line for line in text.splitlines() if "Bad request" in line]
    assert f"first\\x0a{forged}\\x1b[2J\\u2028\\u202eevil\\x9b" in foreign
    assert "ValueError: first" in text  # a traceback keeps its own lines
    for control in ("\x1b", "\x9b", "\u2028", "\u202e"):
        assert control not in text
    # The line break in the exception's message stays one, indented like the whole traceback.
    assert not [line for line in text.splitlines() if line.startswith(forged)]
    assert f"  {forged}\\x1b[2J" in text


def test_json_lines_escape_what_a_terminal_would_act_on(capsys: pytest.CaptureFixture[str]) -> None:
    """`journalctl` shows JSON lines on a terminal too: DEL, C1 controls, line separators and
    bidirectional overrides in a value are written as JSON escapes, standing for the same text."""
    hostile = "a\x7fb\x9b2Jc\u2028d\u202eevil\u2066"
    configure_logging(json=True)
    structlog.get_logger("test").warning("Receiver said no.", reason=hostile, plain="ascii")
    text = capsys.readouterr().err
    [line] = [line for line in text.splitlines() if "Receiver said no." in line]
    for control in ("\x7f", "\x9b", "\u2028", "\u202e", "\u2066"):
        assert control not in line
    record = json.loads(line)
    assert (record["reason"], record["plain"]) == (hostile, "ascii")
