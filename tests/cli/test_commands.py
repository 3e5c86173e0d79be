from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from forwarder import __version__
from forwarder.cli import main
from forwarder.cli.example_config import example_config_text
from forwarder.cli.schema import config_schema
from forwarder.settings import EX_CONFIG, parse_settings
from forwarder.store.database import Database, NewEvent


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def file_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        f"store:\n  path: {tmp_path / 'state'}\n"
        f"outputs:\n  - name: local\n    type: file\n    path: {tmp_path / 'out.jsonl'}\n",
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"canary-forwarder {__version__}"


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forwarder", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"canary-forwarder {__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_validate_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(file_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "output local: type file, format json" in out
    assert "configuration is valid" in out


def test_validate_rejects_with_path_and_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "outputs:\n  - name: a\n    type: file\n    port: 1\n")
    with pytest.raises(SystemExit) as exited:
        main(["validate", "-c", str(config)])
    assert exited.value.code == EX_CONFIG == 78
    assert "outputs[0].port: Extra inputs are not permitted" in capsys.readouterr().err


def test_validate_healthcheck_reports_unwritable_file_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        f"outputs:\n  - name: local\n    type: file\n    path: {tmp_path / 'nodir' / 'x'}\n",
    )
    assert main(["validate", "-c", str(config), "--healthcheck"]) == 1
    assert "output local: UNHEALTHY" in capsys.readouterr().out


@dataclass(frozen=True)
class Post:
    headers: CIMultiDict[str]
    body: bytes


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[Post]]]:
    """A webhook on 127.0.0.1 (a free port) that keeps each post and answers how many bytes it
    got: (its URL, the posts so far)."""
    posts: list[Post] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        posts.append(Post(request.headers.copy(), body))
        return web.json_response({"status": "stored", "received": len(body)})

    app = web.Application()
    app.router.add_post("/canary", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/canary")), posts


async def test_send_test_posts_the_console_test_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with webhook_receiver() as (url, posts):
        code = await asyncio.to_thread(
            main, ["send-test", "--url", url, "--header", "X-Canary-Token: abc"]
        )
    assert code == 0
    [post] = posts
    assert post.headers["X-Canary-Token"] == "abc"
    assert post.headers["Content-Type"] == "application/json"
    body = json.loads(post.body)
    assert body["LogType"] == 111111 and body["CanaryID"] == "0000000testnode"
    assert capsys.readouterr().out.startswith('200 {"status": "stored"')


async def test_send_test_posts_a_payload_file_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "incident.json"
    # Spacing, key order, a non-ASCII character and a number's spelling that re-encoding would
    # all change.
    payload.write_bytes(
        b'{"AlertType":"CanaryIncident",\n  "Description": "caf\xc3\xa9", "N": 1.50}\n'
    )
    async with webhook_receiver() as (url, posts):
        code = await asyncio.to_thread(
            main, ["send-test", "--url", url, "--header", "X-Canary-Token: abc", str(payload)]
        )
    assert code == 0
    [post] = posts
    assert post.body == payload.read_bytes()
    assert post.headers["X-Canary-Token"] == "abc"
    answer = f'200 {{"status": "stored", "received": {payload.stat().st_size}}}'
    assert capsys.readouterr().out.strip() == answer


def test_send_test_reports_a_payload_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert main(["send-test", "--url", "http://127.0.0.1:9/canary", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"cannot read {missing}")


def test_send_test_reports_an_unreachable_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send-test", "--url", "http://127.0.0.1:9/canary", "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_send_test_rejects_a_malformed_header() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["send-test", "--header", "no-colon"])
    assert exited.value.code == 2


def seed_dead_letters(tmp_path: Path) -> None:
    database = Database(tmp_path / "state")
    seqs = database.append(
        [NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, b'{"n": %d}' % n) for n in range(3)],
        ["local"],
        0,
    )
    database.dead_letter("local", {s: "400 refused" for s in seqs if s is not None}, 2.0)
    database.close()


def test_dead_letters_list_show_replay_purge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path))
    seed_dead_letters(tmp_path)
    assert main(["dead-letters", "list", "-c", config]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["event_id"], d["reason"], d["output"]) for d in listed] == [
        (f"id{n}", "400 refused", "local") for n in range(3)
    ]
    assert main(["dead-letters", "show", "-c", config, "--id", str(listed[0]["id"])]) == 0
    assert capsys.readouterr().out.strip() == '{"n": 0}'
    assert main(["dead-letters", "replay", "-c", config]) == 2  # needs --id or --all
    capsys.readouterr()
    assert main(["dead-letters", "replay", "-c", config, "--id", str(listed[0]["id"])]) == 0
    assert capsys.readouterr().out.strip() == "replayed 1"
    assert main(["dead-letters", "purge", "-c", config, "--all"]) == 0
    assert capsys.readouterr().out.strip() == "purged 2"
    assert main(["store", "stats", "-c", config]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["queued"] == {"local": 1}
    assert stats["dead_letters"] == {}


def test_example_config_is_complete_and_valid(tmp_path: Path) -> None:
    data = yaml.safe_load(example_config_text())
    environ = {name: "x" * 24 for name in _variables(example_config_text())}
    settings = parse_settings(data, environ=environ)
    assert settings.outputs
    shipped = Path(__file__).parents[2] / "config" / "example.yaml"
    assert shipped.read_text() == example_config_text(), "regenerate config/example.yaml"


def _variables(text: str) -> set[str]:
    import re

    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))


def test_schema_lists_every_output_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(config_schema()))
    branches = schema["properties"]["outputs"]["items"]["oneOf"]
    types = {b["properties"]["type"]["const"] for b in branches}
    assert {"file", "memory"} <= types
    assert schema["additionalProperties"] is False
