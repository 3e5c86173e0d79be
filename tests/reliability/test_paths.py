"""Path tricks in every file-path option: a clear configuration or start-up error, never a
traceback, a hang or a write somewhere else.

Options: `${file:...}` and `${credential:...}` secrets, `store.path`, a file output's `path`,
`listen.tls.cert`/`key`, and the `tls` files of the network outputs. Tricks: `..`, symbolic
links (dangling, looping), a NUL byte, a directory where a file belongs, a FIFO, an endless
device, a huge file, an empty path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from forwarder.cli.run import serve
from forwarder.pipeline import build_dispatchers
from forwarder.settings import ConfigError, Settings, StoreConfig, parse_settings
from forwarder.store.outbox import Outbox
from tests.helpers import fifo_released_after

pytestmark = pytest.mark.reliability

T = TypeVar("T")
SECRET = "s" * 24


@pytest.fixture
def tricks(tmp_path: Path) -> Path:
    """A directory with one of each kind of awkward path in it."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "huge").write_bytes(b"s" * (1 << 20))
    (tmp_path / "latin1").write_bytes(b"caf\xe9" * 8)
    os.symlink("loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere" / "x", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


def within(seconds: float, call: Callable[[], T]) -> T:
    """Run `call` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # handed back to the test below
            outcome.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        pytest.fail(f"blocked for more than {seconds:g} s")
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def auth_with(secret: str) -> dict[str, Any]:
    return {
        "listen": {"auth": {"header": "X-Canary-Token", "secret": secret}},
        "outputs": [{"name": "out", "type": "file", "path": "out.jsonl"}],
    }


SECRET_TRICKS = {
    "a directory": ("${file:DIR/dir}", "not a regular file (a directory)"),
    "a NUL byte": ("${file:DIR/sec\x00ret}", "null byte"),
    "a symlink loop": ("${file:DIR/loop}", "Too many levels of symbolic links"),
    "a dangling symlink": ("${file:DIR/dangling}", "No such file or directory"),
    "a FIFO (would block)": ("${file:DIR/fifo}", "not a regular file (a FIFO)"),
    "an endless device": ("${file:/dev/zero}", "not a regular file (a character device)"),
    "a huge file": ("${file:DIR/huge}", "larger than"),
    "not UTF-8": ("${file:DIR/latin1}", "utf-8"),
    "credential with ..": ("${credential:../secret}", "not a plain file name"),
    "credential with a slash": ("${credential:dir/x}", "not a plain file name"),
    "credential hidden file": ("${credential:.secret}", "not a plain file name"),
}


@pytest.mark.parametrize("name", list(SECRET_TRICKS))
def test_secret_file_tricks_are_config_errors(tricks: Path, name: str) -> None:
    reference, reason = SECRET_TRICKS[name]
    data = auth_with(reference.replace("DIR", str(tricks)))
    environ = {"CREDENTIALS_DIRECTORY": str(tricks / "dir")}
    with pytest.raises(ConfigError) as raised:
        within(5, lambda: parse_settings(data, environ=environ))
    [problem] = raised.value.problems
    assert problem.startswith("listen.auth.secret: "), problem
    assert reason.lower() in problem.lower(), problem
    assert SECRET not in problem, "a secret file's content must never be echoed"


def test_dot_dot_in_a_secret_path_reads_the_file_it_names(tricks: Path) -> None:
    """`..` is resolved like any path (it is the operator's file); it is not a way out of
    anything, and the credential form, which must stay in its directory, refuses it above."""
    settings = parse_settings(auth_with(f"${{file:{tricks}/dir/../secret}}"), environ={})
    assert settings.secrets() == [SECRET]


async def run_until_exit(data: dict[str, Any]) -> tuple[int, list[MutableMapping[str, Any]]]:
    """`serve` in this process for a config that must not start; (exit code, log lines)."""
    settings = parse_settings(data, environ={})
    with structlog.testing.capture_logs() as logs:
        code = await serve(settings, None, graceful_secs=1)
    return code, logs


OUTPUT_TRICKS = {
    "a directory": ("dir", "Is a directory"),
    "a NUL byte": ("o\x00ut.jsonl", "null byte"),
    "a symlink loop": ("loop", "Too many levels of symbolic links"),
    "a dangling symlink": ("dangling", "No such file or directory"),
    "a missing directory": ("nowhere/out.jsonl", "No such file or directory"),
    "the empty path": ("", "Is a directory"),
}


@pytest.mark.parametrize("name", list(OUTPUT_TRICKS))
async def test_file_output_path_tricks_stop_the_start_cleanly(
    tricks: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tricks)
    relative, reason = OUTPUT_TRICKS[name]
    before = sorted(p.name for p in tricks.iterdir())
    code, logs = await run_until_exit(
        {
            "listen": {"port": 0},
            "store": {"path": str(tricks / "state")},
            "outputs": [{"name": "out", "type": "file", "path": relative}],
        }
    )
    assert code == 1
    [error] = [line for line in logs if line["log_level"] == "error"]
    assert error["event"] == "Cannot start."
    assert reason in error["error"], error
    # Nothing was created but the store's own directory.
    assert sorted(p.name for p in tricks.iterdir()) == sorted([*before, "state"])
    assert not (tricks / "nowhere").exists()


LISTEN_TLS_TRICKS = {
    "a missing file": ("nope.pem", "No such file or directory"),
    "a directory": ("dir", "not a regular file (a directory)"),
    "a NUL byte": ("ce\x00rt.pem", "null byte"),
    "a symlink loop": ("loop", "Too many levels of symbolic links"),
    "not a certificate": ("secret", "PEM"),
    "a FIFO (would block)": ("fifo", "not a regular file (a FIFO)"),
    "an endless device": ("/dev/zero", "not a regular file (a character device)"),
}


@pytest.mark.parametrize("name", list(LISTEN_TLS_TRICKS))
async def test_listen_tls_path_tricks_stop_the_start_cleanly(tricks: Path, name: str) -> None:
    relative, reason = LISTEN_TLS_TRICKS[name]
    path = str(tricks / relative)
    # Should the start wait on the FIFO for a writer, its event loop cannot end the test.
    with fifo_released_after(10, tricks / "fifo"):
        code, logs = await run_until_exit(
            {
                "listen": {"port": 0, "tls": {"cert": path, "key": path}},
                "store": {"path": str(tricks / "state")},
                "outputs": [{"name": "out", "type": "file", "path": str(tricks / "out.jsonl")}],
            }
        )
    assert code == 1
    [error] = [line for line in logs if line["log_level"] == "error"]
    assert error["event"] == "Cannot listen."
    assert reason.lower() in error["error"].lower(), error


STORE_TRICKS = {
    "a regular file": ("secret", "File exists"),
    "under a regular file": ("secret/state", "Not a directory"),
    "a NUL byte": ("st\x00ate", "null byte"),
    "a symlink loop": ("loop", "File exists"),
    "a dangling symlink": ("dangling", "File exists"),
}


@pytest.mark.parametrize("name", list(STORE_TRICKS))
async def test_store_path_tricks_degrade_to_503_not_a_crash(tricks: Path, name: str) -> None:
    """The daemon keeps running with the store unavailable (posts get 503, /readyz fails, it
    is probed again every few seconds); the error says why. Nothing is created anywhere."""
    relative, reason = STORE_TRICKS[name]
    before = sorted(str(p) for p in tricks.rglob("*"))
    with structlog.testing.capture_logs() as logs:
        outbox = await Outbox.open(StoreConfig(path=tricks / relative))
    try:
        assert not outbox.healthy and not outbox.available
        assert outbox.last_error is not None and reason in outbox.last_error, outbox.last_error
        assert [line["event"] for line in logs if line["log_level"] == "error"] == [
            "Store cannot commit; new posts get 503 until it can."
        ]
        assert await outbox.probe() is False
    finally:
        await outbox.aclose()
    assert sorted(str(p) for p in tricks.rglob("*")) == before


def output_tls_cases(tricks: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    base: dict[str, dict[str, Any]] = {
        "splunk_hec": {"url": "https://127.0.0.1:9", "token": "t" * 20},
        "elasticsearch": {"url": "https://127.0.0.1:9"},
        "syslog": {"hosts": ["127.0.0.1:9"], "transport": "tls"},
    }
    for kind, options in base.items():
        for option in ("ca_file", "cert_file"):
            for relative in ("dir", "loop", "n\x00ul", "dangling"):
                tls = {option: str(tricks / relative)}
                yield (
                    f"{kind}.{option}={relative!r}",
                    {
                        "name": "o",
                        "type": kind,
                        **options,
                        "tls": tls,
                    },
                )


async def test_output_tls_path_tricks_keep_the_events_for_an_operator(tricks: Path) -> None:
    """Every network output starts whatever its TLS files are (so ingest stays up), and a send
    keeps the events with an operator Retry that names the problem; never a traceback."""
    from datetime import UTC, datetime

    from forwarder.events import parse_event
    from forwarder.outputs.base import Retry
    from tests.helpers import sample

    event = parse_event(sample("incident_ftp_login"), received_at=datetime.now(UTC))
    seen = 0
    for label, output in output_tls_cases(tricks):
        try:
            settings: Settings = parse_settings(
                {"store": {"path": str(tricks / "state")}, "outputs": [output]}, environ={}
            )
        except ConfigError:
            continue  # refused up front: fine
        [dispatcher] = build_dispatchers(settings.outputs, None)  # type: ignore[arg-type]
        await dispatcher.output.start()
        try:
            result = await dispatcher.output.send([dispatcher.mapper.map(event)])
        finally:
            with contextlib.suppress(Exception):
                await dispatcher.output.aclose()
        assert isinstance(result, Retry) and result.operator_action, (label, result)
        assert "TLS" in result.reason, (label, result)
        seen += 1
    assert seen >= 20
