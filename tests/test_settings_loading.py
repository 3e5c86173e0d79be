"""Loading a configuration file as careless and hostile operators write them: interpolation,
secret files, YAML quirks, the size of what is read, and what error messages may show.

The last tests run the real daemon: a SIGHUP with a broken file, or with a FIFO, keeps the
running config.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.cli import main
from forwarder.settings import EX_CONFIG, ConfigError, Settings, load_settings
from tests.daemon.harness import (
    Daemon,
    DaemonFactory,
    PostResults,
    daemon_factory,
    file_output,
    ids_in,
    post_event,
    wait_until,
)

SECRET = "s3cret-s3cret-s3cret"
# An Elasticsearch API key: not a host name, an index name or a CIDR either.
API_KEY = "Vnh4NmY6c2VjcmV0LWtleS0xMjM0NTY3OA=="
OUTPUT = "outputs:\n  - name: local\n    type: file\n    path: {path}\n"


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    config = tmp_path / name
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text, "utf-8")
    return config


def load(tmp_path: Path, text: str | bytes, environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), environ={} if environ is None else environ)


def load_problems(
    tmp_path: Path, text: str | bytes, environ: Mapping[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return caught.value.problems


def output_path(settings: Settings) -> str:
    return str(settings.outputs[0].config.path)  # type: ignore[attr-defined]


def with_secret(reference: str) -> str:
    """A config whose webhook secret is `reference` (quoted: it may hold `#` or `: `)."""
    return (
        f"listen:\n  auth:\n    header: X-Canary-Token\n    secret: '{reference}'\n"
        + OUTPUT.format(path="events.jsonl")
    )


def webhook_secret(settings: Settings) -> str:
    auth = settings.listen.auth
    assert auth is not None
    assert auth != "none"
    assert auth.secret is not None
    return auth.secret.get_secret_value()


# Interpolation


def test_references_inside_a_longer_string_and_several_in_one_value(tmp_path: Path) -> None:
    settings = load(tmp_path, OUTPUT.format(path="/srv/${A}/${B}-${A}.jsonl"), {"A": "a", "B": "b"})
    assert output_path(settings) == "/srv/a/b-a.jsonl"


def test_a_value_from_the_environment_is_never_expanded_again(tmp_path: Path) -> None:
    environ = {"A": "${B}/${file:/etc/passwd}/$${C}", "B": "expanded"}
    settings = load(tmp_path, OUTPUT.format(path="/srv/${A}"), environ)
    assert output_path(settings) == "/srv/${B}/${file:/etc/passwd}/$${C}"


def test_a_value_from_a_file_is_never_expanded_again(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("${B}${file:/etc/passwd}" + SECRET + "\n")
    settings = load(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"), {"B": "x"})
    assert webhook_secret(settings) == "${B}${file:/etc/passwd}" + SECRET


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("/srv/$${A}.jsonl", "/srv/${A}.jsonl"),
        ("/srv/$${A}-${A}", "/srv/${A}-a"),
        ("/srv/$${file:/x}", "/srv/${file:/x}"),
        ("/srv/$${unterminated", "/srv/${unterminated"),
        ("/srv/$$/x$", "/srv/$$/x$"),  # only `$${` is special: `$$` alone stays
    ],
)
def test_double_dollar_brace_is_a_literal_dollar_brace(
    tmp_path: Path, written: str, meant: str
) -> None:
    settings = load(tmp_path, OUTPUT.format(path=f"'{written}'"), {"A": "a"})
    assert output_path(settings) == meant


def test_a_literal_dollar_brace_in_a_secret_can_be_written(tmp_path: Path) -> None:
    found = load_problems(tmp_path, with_secret("pa${ss word}0123456789"))
    assert found == [
        "listen.auth.secret: ${ss word} is not a variable name, file: or credential: reference "
        "(write $${ for a literal ${)"
    ]
    settings = load(tmp_path, with_secret("pa$${ss word}0123456789"))
    assert webhook_secret(settings) == "pa${ss word}0123456789"


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_a_secret_file_loses_exactly_one_line_ending(tmp_path: Path, ending: str) -> None:
    (tmp_path / "secret").write_bytes((SECRET + ending).encode())
    settings = load(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"))
    assert webhook_secret(settings) == SECRET


@pytest.mark.parametrize("content", [f"{SECRET} \n", f" {SECRET}\n", f"{SECRET}\t\r\n"])
def test_a_secret_file_keeps_its_spaces_so_a_header_secret_with_them_is_refused(
    tmp_path: Path, content: str
) -> None:
    """HTTP strips them from the header, so the secret could never match; stripping them here
    would break the promise that a file's spaces are kept."""
    (tmp_path / "secret").write_bytes(content.encode())
    found = load_problems(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"))
    assert found == [
        "listen.auth.secret: begins or ends with whitespace, which HTTP strips from a header "
        "value, so no post would ever match; remove it (a ${file:} or ${credential:} value "
        "keeps its spaces: only one line ending is removed)"
    ]


@pytest.mark.parametrize(
    "content", [SECRET + "\n\n", SECRET + "\n" + SECRET + "\n", SECRET + "\r", SECRET + "\n\r\n"]
)
def test_a_secret_file_of_more_than_one_line_is_an_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "secret").write_bytes(content.encode())
    found = load_problems(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"))
    assert found == [
        f"listen.auth.secret: cannot read secret file {tmp_path}/secret: "
        "more than one line (a value ends at its first line break)"
    ]


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_an_empty_secret_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "secret").write_bytes(content)
    found = load_problems(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"))
    assert found == [f"listen.auth.secret: cannot read secret file {tmp_path}/secret: empty"]


def test_a_credential_gets_the_same_rules(tmp_path: Path) -> None:
    (tmp_path / "webhook").write_text(SECRET + "\n\n")
    found = load_problems(
        tmp_path, with_secret("${credential:webhook}"), {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert found == [
        f"listen.auth.secret: cannot read secret file {tmp_path}/webhook: "
        "more than one line (a value ends at its first line break)"
    ]


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_an_environment_variable_loses_exactly_one_line_ending(tmp_path: Path, ending: str) -> None:
    # Kubernetes' `kubectl create secret --from-file` leaves the file's newline in the variable.
    settings = load(tmp_path, with_secret("${WEBHOOK_SECRET}"), {"WEBHOOK_SECRET": SECRET + ending})
    assert webhook_secret(settings) == SECRET


def test_an_environment_variable_of_more_than_one_line_is_an_error(tmp_path: Path) -> None:
    environ = {"WEBHOOK_SECRET": SECRET + "\n" + SECRET}
    found = load_problems(tmp_path, with_secret("${WEBHOOK_SECRET}"), environ)
    assert found == [
        "listen.auth.secret: environment variable WEBHOOK_SECRET: "
        "more than one line (a value ends at its first line break)"
    ]


def test_a_non_utf8_secret_file_is_an_error_that_shows_none_of_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s3cret-caf\xe9-s3cret")
    [problem] = load_problems(tmp_path, with_secret(f"${{file:{tmp_path}/secret}}"))
    assert problem == (
        f"listen.auth.secret: cannot read secret file {tmp_path}/secret: not UTF-8 text"
    )


def test_an_unreadable_secret_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    real_open = os.open

    # Tests may run as root, whom no file mode refuses.
    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path) == secret:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    found = load_problems(tmp_path, with_secret(f"${{file:{secret}}}"))
    assert found == [f"listen.auth.secret: cannot read secret file {secret}: Permission denied"]


def test_a_secret_file_that_is_a_directory_or_too_large_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"a" * (64 * 1024 + 1))
    assert load_problems(tmp_path, with_secret(f"${{file:{tmp_path}}}")) == [
        f"listen.auth.secret: cannot read secret file {tmp_path}: not a regular file (a directory)"
    ]
    assert load_problems(tmp_path, with_secret(f"${{file:{tmp_path}/big}}")) == [
        f"listen.auth.secret: cannot read secret file {tmp_path}/big: larger than 65536 bytes"
    ]


def test_a_relative_secret_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "webhook").write_text(SECRET + "\n")
    config = write(tmp_path / "secrets", with_secret("${file:secrets/webhook}"))
    monkeypatch.chdir(tmp_path)
    assert webhook_secret(load_settings(config, environ={})) == SECRET
    monkeypatch.chdir(tmp_path / "secrets")  # the config's own directory does not count
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert caught.value.problems == [
        "listen.auth.secret: cannot read secret file secrets/webhook "
        f"(relative to the working directory {tmp_path / 'secrets'}): No such file or directory"
    ]


def test_a_reference_gives_a_number_its_option_validates(tmp_path: Path) -> None:
    text = "listen:\n  port: ${PORT}\n" + OUTPUT.format(path="events.jsonl")
    settings = load(tmp_path, text, {"PORT": "9000"})
    assert settings.listen.port == 9000
    assert isinstance(settings.listen.port, int)
    assert load_problems(tmp_path, text, {"PORT": "70000"}) == [
        "listen.port: Input should be less than or equal to 65535"
    ]
    assert load_problems(tmp_path, text, {"PORT": "eighty"}) == [
        "listen.port: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_references_in_comments_are_ignored(tmp_path: Path) -> None:
    text = "# ${NOT_SET}\n" + OUTPUT.format(path="events.jsonl  # ${file:/nonexistent}")
    assert output_path(load(tmp_path, text)) == "events.jsonl"


def test_a_reference_in_a_key_is_an_error_naming_it(tmp_path: Path) -> None:
    text = "listen:\n  ${KEY}: 9000\n" + OUTPUT.format(path="events.jsonl")
    assert load_problems(tmp_path, text, {"KEY": "port"}) == [
        "listen.${KEY}: ${...} is expanded in values only, not in keys"
    ]


# What an error message may show


@pytest.mark.parametrize(
    ("output", "where"),
    [
        ("type: splunk_hec\n    url: ${TOKEN}\n    token: ${TOKEN}", "outputs[0].url"),
        ("type: '${TOKEN}'", "outputs[0].type"),
        ("type: file\n    path: x\n    format: ${TOKEN}", "outputs[0].format"),
        ("type: syslog\n    hosts: ['${TOKEN}:99999']", "outputs[0].hosts"),
        (
            "type: elasticsearch\n    url: https://es:9200\n    index: ${TOKEN}\n"
            "    api_key: ${TOKEN}",
            "outputs[0].index",
        ),
        (
            "type: splunk_hec\n    url: 'https://h:8088/services/collector/${TOKEN}'\n    token: x",
            "outputs[0]",
        ),
    ],
)
def test_an_error_shows_the_reference_never_the_value(
    tmp_path: Path, output: str, where: str
) -> None:
    text = f"outputs:\n  - name: out\n    {output}\n"
    found = load_problems(tmp_path, text, {"TOKEN": API_KEY})
    assert found, found
    assert not any(API_KEY in problem for problem in found), found
    assert any(problem.startswith(f"{where}: ") and "${TOKEN}" in problem for problem in found)


def test_an_error_shows_the_reference_of_a_secret_file_never_its_content(tmp_path: Path) -> None:
    (tmp_path / "cidr").write_text(SECRET + "\n")
    text = f"listen:\n  allow: ['${{file:{tmp_path}/cidr}}']\n" + OUTPUT.format(path="x")
    found = load_problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith(f"listen.allow: '${{file:{tmp_path}/cidr}}' is not a CIDR")
    assert SECRET not in found[0]


def test_an_error_elsewhere_still_shows_its_own_value(tmp_path: Path) -> None:
    text = "listen:\n  allow: ['10.0.0.0/33']\n" + OUTPUT.format(path="/srv/${DIR}/x")
    found = load_problems(tmp_path, text, {"DIR": "canary"})
    assert len(found) == 1
    assert found[0].startswith("listen.allow: '10.0.0.0/33' is not a CIDR")


# YAML


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            OUTPUT.format(path="a.jsonl") + OUTPUT.format(path="b.jsonl"),
            "line 5, column 1: key 'outputs' given twice (first on line 1)",
        ),
        (
            "outputs:\n  - name: hec\n    type: splunk_hec\n    url: https://splunk:8088\n"
            "    token: ${A}\n    index: canary\n    token: ${B}\n",
            "line 7, column 5: key 'token' given twice (first on line 5)",
        ),
        (
            "listen: {port: 1, port: 2}\n" + OUTPUT.format(path="a.jsonl"),
            "line 1, column 19: key 'port' given twice (first on line 1)",
        ),
    ],
)
def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(
    tmp_path: Path, text: str, problem: str
) -> None:
    found = load_problems(tmp_path, text, {"A": "a", "B": "b"})
    assert found == [f"{tmp_path}/config.yaml: not valid YAML: {problem}"]


def test_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "outputs:\n"
        "  - &base {name: base, type: file, path: base.jsonl}\n"
        "  - &first {<<: *base, name: first, path: first.jsonl}\n"
        "  - <<: *first\n    name: one\n"
        "  - <<: [*first, *base]\n    name: two\n",
    )
    paths = [str(spec.config.path) for spec in settings.outputs]  # type: ignore[attr-defined]
    assert paths == ["base.jsonl", "first.jsonl", "first.jsonl", "first.jsonl"]


def test_a_mapping_merged_before_it_is_built_has_no_key_twice(tmp_path: Path) -> None:
    # PyYAML splices merged keys into the anchored mapping itself: here `outputs[0]` is built
    # before `inner`, whose own `path` then follows the one it merged from `base`.
    text = (
        "x_base: &base {type: file, path: base.jsonl}\n"
        "x_holder: {a: {b: {inner: &inner {<<: *base, path: inner.jsonl}}}}\n"
        "outputs:\n  - <<: *inner\n    name: one\n"
    )
    assert load_problems(tmp_path, text) == [
        "x_base: Extra inputs are not permitted",
        "x_holder: Extra inputs are not permitted",
    ]


def test_a_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for previous, name in zip("abcdef", "bcdefg", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    started = time.monotonic()
    found = load_problems(tmp_path, "\n".join(levels) + "\n" + OUTPUT.format(path="x"))
    assert time.monotonic() - started < 2
    assert found == [f"{tmp_path}/config.yaml: more than 100000 values once aliases are expanded"]


@pytest.mark.parametrize(
    "text", ["outputs: &a [*a]\n", "listen: &a {tls: *a}\n", "x: " + "[" * 5000 + "]" * 5000]
)
def test_a_cycle_or_deep_nesting_is_an_error(tmp_path: Path, text: str) -> None:
    [problem] = load_problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path}/config.yaml: ")
    assert "nested more than" in problem


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2001-02-30", "not a !!timestamp: day is out of range for month"),
        ("!!int abc", "invalid literal for int() with base 10: 'abc'"),
        ("!!float abc", "could not convert string to float: 'abc'"),
        ("!!timestamp abc", "not a !!timestamp"),
        ("!!bool maybe", "not a !!bool"),
    ],
)
def test_a_value_yaml_cannot_build_is_an_error_with_its_line(
    tmp_path: Path, value: str, reason: str
) -> None:
    found = load_problems(tmp_path, OUTPUT.format(path="x") + f"    format: {value}\n")
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path}/config.yaml: not valid YAML: line 5, column 13: ")
    assert reason in found[0]


def test_a_yaml_error_is_one_line_that_never_echoes_the_file(tmp_path: Path) -> None:
    text = "outputs:\n  - name: hec\n    type: splunk_hec\n    token: 'literal-secret-123\n"
    [problem] = load_problems(tmp_path, text)
    assert "\n" not in problem
    assert "literal-secret-123" not in problem
    assert problem == (
        f"{tmp_path}/config.yaml: not valid YAML: line 5, column 1: found unexpected end of stream "
        "(while scanning a quoted scalar at line 4, column 12)"
    )


def test_a_tab_for_indentation_is_named(tmp_path: Path) -> None:
    [problem] = load_problems(tmp_path, "outputs:\n\t- name: x\n")
    assert problem == (
        f"{tmp_path}/config.yaml: not valid YAML: line 2, column 1: "
        "found character '\\t' that cannot start any token (while scanning for the next token)"
    )


def test_a_control_character_is_named_by_its_line(tmp_path: Path) -> None:
    text = OUTPUT.format(path="x") + "    format: js\x07on\n"
    assert load_problems(tmp_path, text) == [
        f"{tmp_path}/config.yaml: not valid YAML: line 5: character #x0007 is not allowed in YAML"
    ]


@pytest.mark.parametrize("text", ["hello\n", "- a\n- b\n", "42\n"])
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert load_problems(tmp_path, text) == [
        f"{tmp_path}/config.yaml: the top level must be a mapping"
    ]


def test_an_empty_file_asks_for_outputs(tmp_path: Path) -> None:
    assert load_problems(tmp_path, "") == ["outputs: at least one output is needed"]
    assert load_problems(tmp_path, "# nothing\n") == ["outputs: at least one output is needed"]


def test_several_documents_are_an_error(tmp_path: Path) -> None:
    text = OUTPUT.format(path="a") + "---\n" + OUTPUT.format(path="b")
    [problem] = load_problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path}/config.yaml: not valid YAML: line 5, column 1: ")


def test_a_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    text = OUTPUT.format(path="events.jsonl").replace("\n", "\r\n")
    assert output_path(load(tmp_path, b"\xef\xbb\xbf" + text.encode())) == "events.jsonl"


def test_a_non_utf8_config_names_the_line(tmp_path: Path) -> None:
    text = OUTPUT.format(path="caf\xe9.jsonl").encode("latin-1")
    assert load_problems(tmp_path, text) == [f"{tmp_path}/config.yaml: line 4 is not UTF-8 text"]


def test_a_missing_file_or_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.yaml", environ={})
    assert caught.value.problems == [
        f"{tmp_path}/absent.yaml: cannot read: No such file or directory"
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert caught.value.problems == [f"{tmp_path}: cannot read: Is a directory"]


def test_a_config_larger_than_1_mib_is_refused(tmp_path: Path) -> None:
    text = OUTPUT.format(path="x") + "# padding\n" * (1024 * 1024 // 10 + 1)
    assert load_problems(tmp_path, text) == [
        f"{tmp_path}/config.yaml: larger than 1048576 bytes; is it the configuration file?"
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings("/dev/zero", environ={})
    assert caught.value.problems == [
        "/dev/zero: larger than 1048576 bytes; is it the configuration file?"
    ]


# The command line


@pytest.mark.parametrize(
    "text",
    [
        None,  # no file at all
        "x: 2001-02-30\n",
        "outputs: &a [*a]\n",
        OUTPUT.format(path="a") + OUTPUT.format(path="b"),
        OUTPUT.format(path="'${NOT_SET}'"),
    ],
)
def test_validate_exits_78_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None
) -> None:
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["validate", "-c", str(config)])
    assert exited.value.code == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: invalid configuration:\n  ")
    assert "Traceback" not in err


def test_validate_of_a_directory_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate", "-c", str(tmp_path)])
    assert exited.value.code == EX_CONFIG
    assert f"{tmp_path}: cannot read: Is a directory" in capsys.readouterr().err


# Reload


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    with daemon_factory(Daemon, tmp_path) as make:
        yield make


@pytest.mark.slow
async def test_reload_refuses_every_kind_of_broken_file_and_still_reloads_after(
    daemons: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARY_TEST_OUT_DIR", str(tmp_path))
    good = {"outputs": [file_output("out", "${CANARY_TEST_OUT_DIR}/out.jsonl")]}
    daemon = daemons(good)
    await daemon.start()
    text = daemon.config_path.read_text()
    broken: list[tuple[str, str]] = [
        (text.replace("CANARY_TEST_OUT_DIR", "CANARY_TEST_NOT_SET"), "CANARY_TEST_NOT_SET"),
        (text.replace("${CANARY_TEST_OUT_DIR}", f"${{file:{tmp_path}/absent}}"), "absent"),
        (text + "x: 2001-02-30\n", "day is out of range"),
        (text + "x: &a [*a]\n", "nested more than"),
        (text + "outputs: []\n", "key 'outputs' given twice"),
    ]
    for count, (config, problem) in enumerate(broken, start=1):
        daemon.write_config(config)
        daemon.send_signal(signal.SIGHUP)
        line = await daemon.wait_for_log(
            "New configuration is invalid; the old one keeps running.", level="error", count=count
        )
        assert any(problem in reported for reported in line["problems"]), line
    # The old configuration still runs: a post is stored and delivered.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        results = PostResults()
        event_id = await post_event(session, daemon.webhook_url, results)
        assert results.stored == {event_id}, results.other
    await wait_until(
        lambda: event_id in ids_in(tmp_path / "out.jsonl"), timeout=10, what="the event"
    )
    daemon.write_config(
        {
            "outputs": [
                file_output("out", "${CANARY_TEST_OUT_DIR}/out.jsonl"),
                file_output("second", tmp_path / "second.jsonl"),
            ]
        }
    )
    daemon.send_signal(signal.SIGHUP)
    line = await daemon.wait_for_log("Configuration reloaded.")
    assert line["outputs"] == ["out", "second"]
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.stderr_text()


def _write_into_fifo_once_opened(fifo: Path, data: bytes) -> bool:
    """Write `data` into `fifo` and close it, if a reader has it open; False if none has yet.

    Non-blocking, so that a test polling it never blocks its own event loop.
    """
    try:
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    try:
        assert os.write(descriptor, data) == len(data)  # less than the pipe's buffer
    finally:
        os.close(descriptor)
    return True


@pytest.mark.slow
async def test_a_reload_refuses_a_fifo_without_opening_it_and_keeps_serving(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """The start reads a FIFO (what `-c <(envsubst ...)` gives); a reload must not. It opened the
    FIFO on the event loop, which waited there for a writer: /healthz hung and SIGTERM went
    unheard. An empty pipe read again gave "outputs: at least one output is needed"."""
    daemon = daemons({"outputs": [file_output("out", tmp_path / "out.jsonl")]})
    text = daemon.config_path.read_bytes()
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    daemon.config_path = fifo
    daemon.spawn()
    await wait_until(
        lambda: _write_into_fifo_once_opened(fifo, text),
        timeout=20,
        what="the daemon to open its configuration FIFO",
    )
    await daemon.wait_ready()
    daemon.send_signal(signal.SIGHUP)
    line = await daemon.wait_for_log(
        "The configuration came from a pipe or another file that is not a regular file, which "
        "cannot be read again: a reload needs a regular file (restart to apply a new "
        "configuration). The current configuration keeps running.",
        level="error",
    )
    assert line["config"] == str(fifo)
    assert line["problems"] == [f"{fifo}: not a regular file (a FIFO)"]
    assert not daemon.find_logs("New configuration is invalid; the old one keeps running.")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"{daemon.base_url}/healthz") as response:
            assert response.status == 200
        results = PostResults()
        event_id = await post_event(session, daemon.webhook_url, results)
        assert results.stored == {event_id}, results.other
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.stderr_text()
