from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from forwarder import __version__
from forwarder.cli import main
from forwarder.cli.example_config import example_config_text
from forwarder.cli.schema import config_schema
from forwarder.settings import EX_CONFIG, ConfigError, parse_settings
from forwarder.store.database import Database, NewEvent


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def file_config(tmp_path: Path, outputs: Sequence[str] = ("local",), store: str = "state") -> Path:
    """A config with the store in tmp_path/`store` and a file output for each name."""
    return write_config(
        tmp_path,
        f"store:\n  path: {tmp_path / store}\noutputs:\n"
        + "".join(
            f"  - name: {name}\n    type: file\n    path: {tmp_path / name}.jsonl\n"
            for name in outputs
        ),
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv)'s exit status, however it ends (a usage error raises), stdout and stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exited:
        assert isinstance(exited.code, int)
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


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


def test_validate_healthcheck_creates_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run as root before the first start, a created file would lock out the service's user.
    assert main(["validate", "-c", str(file_config(tmp_path)), "--healthcheck"]) == 0
    assert "output local: healthy" in capsys.readouterr().out
    assert not (tmp_path / "local.jsonl").exists()
    assert not (tmp_path / "state").exists()


def tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    """A file-output config whose listener serves TLS with `cert` and `key`."""
    return write_config(
        tmp_path,
        f"listen:\n  tls:\n    cert: {cert}\n    key: {key}\n"
        f"store:\n  path: {tmp_path / 'state'}\n"
        f"outputs:\n  - name: local\n    type: file\n    path: {tmp_path / 'local.jsonl'}\n",
    )


def issue_certificate(tmp_path: Path, name: str = "") -> tuple[Path, Path]:
    """A certificate and its key (0600) in tmp_path: (cert, key)."""
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / f"cert{name}.pem", tmp_path / f"key{name}.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def test_validate_loads_the_listeners_certificate_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = issue_certificate(tmp_path)
    assert main(["validate", "-c", str(tls_config(tmp_path, cert, key))]) == 0
    assert "configuration is valid" in capsys.readouterr().out


@pytest.mark.parametrize("healthcheck", [[], ["--healthcheck"]])
@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ("cert", "listen.tls.cert: cannot read {cert}: No such file or directory"),
        ("key", "listen.tls.key: cannot read {key}: No such file or directory"),
        ("cert-not-pem", "listen.tls: cannot load {cert} with {key}: [SSL] PEM lib"),
        (
            "key-of-another",
            "listen.tls: cannot load {cert} with {key}: [X509: KEY_VALUES_MISMATCH]",
        ),
    ],
)
def test_validate_refuses_a_listener_certificate_run_could_not_load(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    broken: str,
    problem: str,
    healthcheck: list[str],
) -> None:
    """`run` failed such a config with "Cannot listen." and status 1, which systemd retries."""
    cert, key = issue_certificate(tmp_path)
    if broken in ("cert", "key"):
        (cert if broken == "cert" else key).unlink()
    elif broken == "cert-not-pem":
        cert.write_text("not a certificate\n")
    else:
        _, key = issue_certificate(tmp_path, "-other")
    config = tls_config(tmp_path, cert, key)
    code, out, err = run_cli(capsys, "validate", "-c", str(config), *healthcheck)
    assert code == EX_CONFIG
    assert err.startswith(f"{config}: invalid configuration:\n  ")
    assert problem.format(cert=cert, key=key) in err, err
    assert "configuration is valid" not in out


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


def seed_dead_letters(tmp_path: Path, counts: Mapping[str, int] | None = None) -> None:
    """Dead letters in tmp_path/state, `counts[output]` of each output (default: 3 of `local`)
    in that order: the n-th has id n, event id f"id{n}" and body {"n": n}."""
    database = Database(tmp_path / "state")
    numbers = itertools.count(1)
    for output, count in (counts or {"local": 3}).items():
        events = [
            NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, b'{"n": %d}' % n)
            for n in itertools.islice(numbers, count)
        ]
        seqs = database.append(events, [output], 0)
        database.dead_letter(output, {s: "400 refused" for s in seqs if s is not None}, 2.0)
    database.close()


def dead_letter_stats(tmp_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(queued, dead letters) by output, as the store holds them now."""
    database = Database(tmp_path / "state")
    try:
        stats = database.stats()
    finally:
        database.close()
    return stats.queued, stats.dead_letters


def test_dead_letters_list_show_replay_purge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path))
    seed_dead_letters(tmp_path)
    assert main(["dead-letters", "list", "-c", config]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["event_id"], d["reason"], d["output"]) for d in listed] == [
        (f"id{n}", "400 refused", "local") for n in range(1, 4)
    ]
    assert main(["dead-letters", "show", "-c", config, "--id", str(listed[0]["id"])]) == 0
    assert capsys.readouterr().out.strip() == '{"n": 1}'
    assert run_cli(capsys, "dead-letters", "replay", "-c", config)[0] == 2  # needs --id or --all
    assert main(["dead-letters", "replay", "-c", config, "--id", str(listed[0]["id"])]) == 0
    assert capsys.readouterr().out.strip() == "replayed 1"
    assert main(["dead-letters", "purge", "-c", config, "--all"]) == 0
    assert capsys.readouterr().out.strip() == "purged 2"
    assert main(["store", "stats", "-c", config]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["queued"] == {"local": 1}
    assert stats["dead_letters"] == {}


def test_dead_letters_output_touches_only_that_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path, ["kept", "replayed", "purged"]))
    seed_dead_letters(tmp_path, {"kept": 2, "replayed": 2, "purged": 2})
    assert main(["dead-letters", "list", "-c", config, "--output", "replayed"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["output"], d["event_id"]) for d in listed] == [
        ("replayed", "id3"),
        ("replayed", "id4"),
    ]
    assert run_cli(
        capsys, "dead-letters", "replay", "-c", config, "--output", "replayed", "--all"
    ) == (0, "replayed 2\n", "")
    assert run_cli(
        capsys, "dead-letters", "purge", "-c", config, "--output", "purged", "--all"
    ) == (0, "purged 2\n", "")
    assert dead_letter_stats(tmp_path) == ({"replayed": 2}, {"kept": 2})
    # An id of another output is not one of the selection: nothing happens to it.
    code, out, err = run_cli(
        capsys, "dead-letters", "purge", "-c", config, "--output", "replayed", "--id", "1"
    )
    assert (code, out) == (1, "")
    assert err.strip() == "no dead letter of output replayed with id 1; nothing purged"
    assert dead_letter_stats(tmp_path) == ({"replayed": 2}, {"kept": 2})


def test_replay_refuses_dead_letters_of_an_output_no_longer_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path, ["local"]))
    seed_dead_letters(tmp_path, {"local": 1, "old": 2})  # ids 1, then 2 and 3
    code, out, err = run_cli(capsys, "dead-letters", "replay", "-c", config, "--all")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"nothing replayed: 2 of the selected dead letters belong to output old, which {config}"
        " does not have (its outputs: local)"
    )
    assert "--allow-unconfigured" in err
    assert dead_letter_stats(tmp_path) == ({}, {"local": 1, "old": 2})
    # Still listed, so the operator can see and purge them.
    code, listing, _ = run_cli(capsys, "dead-letters", "list", "-c", config, "--output", "old")
    assert (code, [json.loads(line)["id"] for line in listing.splitlines()]) == (0, [2, 3])
    replay = ["dead-letters", "replay", "-c", config]
    assert run_cli(capsys, *replay, "--output", "local", "--all") == (0, "replayed 1\n", "")
    assert run_cli(capsys, *replay, "--id", "2", "--allow-unconfigured") == (0, "replayed 1\n", "")
    assert dead_letter_stats(tmp_path) == ({"local": 1, "old": 1}, {"old": 1})


@pytest.mark.parametrize("action", ["replay", "purge"])
@pytest.mark.parametrize("selection", [["--id", "1", "--all"], []], ids=["both", "neither"])
def test_replay_and_purge_need_exactly_one_of_id_and_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, selection: list[str]
) -> None:
    config = str(file_config(tmp_path))
    seed_dead_letters(tmp_path)
    code, out, err = run_cli(capsys, "dead-letters", action, "-c", config, *selection)
    assert (code, out) == (2, "")
    assert f"canary-forwarder dead-letters {action}: error: " in err
    assert dead_letter_stats(tmp_path) == ({}, {"local": 3})


STORE_COMMANDS = [
    ["dead-letters", "list"],
    ["dead-letters", "show", "--id", "1"],
    ["dead-letters", "replay", "--all"],
    ["dead-letters", "purge", "--all"],
    ["store", "stats"],
    ["store", "check"],
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_store_commands_fail_without_creating_a_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = str(file_config(tmp_path, store="mistyped/state"))
    code, out, err = run_cli(capsys, *command, "-c", config)
    assert (code, out) == (1, "")
    missing = tmp_path / "mistyped" / "state" / "outbox.sqlite3"
    assert err.strip() == f"no store at {missing}: check store.path in {config}"
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_store_commands_without_config_do_not_create_the_default_store(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *command)
    assert (code, out) == (1, "")
    default = tmp_path / "state" / "outbox.sqlite3"
    assert err.strip() == (
        f"no store at {default}: that is the built-in default;"
        " give -c with the daemon's configuration"
    )
    assert list(tmp_path.iterdir()) == []


UNKNOWN_OUTPUT = "no output 'nosuch' in {config} (its outputs: local) and no dead letters of it"
NAMING_NOTHING = {
    ("show", "--id", "42", "--id", "1"): "no dead letter with id 42",
    ("replay", "--id", "42"): "no dead letter with id 42; nothing replayed",
    ("purge", "--id", "1", "--id", "42"): "no dead letter with id 42; nothing purged",
    ("purge", "--all", "--output", "nosuch"): UNKNOWN_OUTPUT,
    ("list", "--output", "nosuch"): UNKNOWN_OUTPUT,
}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        pytest.param(command, message, id=" ".join(command))
        for command, message in NAMING_NOTHING.items()
    ],
)
def test_dead_letters_that_name_nothing_fail_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...], message: str
) -> None:
    config = str(file_config(tmp_path))
    seed_dead_letters(tmp_path)
    code, _, err = run_cli(capsys, "dead-letters", *command, "-c", config)
    assert (code, err.strip()) == (1, message.format(config=config))
    assert dead_letter_stats(tmp_path) == ({}, {"local": 3})


def test_an_output_without_dead_letters_selects_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path, ["local", "quiet"]))
    seed_dead_letters(tmp_path)
    purge = ["dead-letters", "purge", "-c", config, "--output", "quiet", "--all"]
    assert run_cli(capsys, *purge) == (0, "purged 0\n", "")
    assert run_cli(capsys, "dead-letters", "list", "-c", config, "--output", "quiet") == (0, "", "")


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


@pytest.mark.parametrize(
    ("output", "valid"),
    [
        ({"type": "syslog", "hosts": ["a:514", "b:514"]}, True),
        ({"type": "syslog", "hosts": "a:514"}, True),
        ({"type": "syslog", "host": "a:514"}, True),
        ({"type": "syslog", "host": "a:514", "hosts": ["b:514"]}, False),
        ({"type": "syslog"}, False),
        ({"type": "splunk_hec", "url": "https://h:8088", "token": "t" * 36}, True),
        (
            {"type": "splunk_hec", "url": ["https://a:8088", "https://b:8088"], "token": "t" * 36},
            True,
        ),
        ({"type": "elasticsearch", "url": "https://es:9200"}, True),
    ],
)
def test_schema_takes_what_validate_takes(output: dict[str, Any], valid: bool) -> None:
    """One value for a list field, and `host:` for `hosts:`: the daemon takes both, so an
    editor using the schema must not flag them."""
    data = {"outputs": [{"name": "out", **output}]}
    schema_valid = jsonschema.Draft202012Validator(config_schema()).is_valid(data)
    try:
        parse_settings(data, environ={})
    except ConfigError:
        daemon_valid = False
    else:
        daemon_valid = True
    assert (schema_valid, daemon_valid) == (valid, valid)


def test_schema_lists_every_output_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(config_schema()))
    branches = schema["properties"]["outputs"]["items"]["oneOf"]
    types = {b["properties"]["type"]["const"] for b in branches}
    assert {"file", "memory"} <= types
    assert schema["additionalProperties"] is False
