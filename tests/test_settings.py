from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forwarder.settings import (
    AuthConfig,
    ConfigError,
    default_settings,
    load_settings,
    parse_settings,
)

FILE_OUTPUT = {"name": "local", "type": "file", "path": "events.jsonl"}
SECRET = "s3cret-s3cret-s3cret"


def problems(data: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, environ={} if environ is None else environ)  # type: ignore[arg-type]
    return caught.value.problems


def test_default_is_loopback_file_output() -> None:
    settings = default_settings()
    assert (settings.listen.host, settings.listen.port, settings.listen.path) == (
        "127.0.0.1",
        8080,
        "/canary",
    )
    assert settings.store.path == Path("state")
    [output] = settings.outputs
    assert output.config.type == "file"
    assert output.config.path == Path("canary-events.jsonl")  # type: ignore[attr-defined]
    assert output.format.type == "json"


def test_unknown_key_is_named_with_its_path() -> None:
    found = problems({"outputs": [FILE_OUTPUT, {**FILE_OUTPUT, "name": "b", "colour": "red"}]})
    assert found == ["outputs[1].colour: Extra inputs are not permitted"]


def test_wrong_type_is_named_with_its_path() -> None:
    assert problems({"listen": {"port": "eighty"}, "outputs": [FILE_OUTPUT]}) == [
        "listen.port: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_bad_value_in_nested_output_option() -> None:
    found = problems({"outputs": [{**FILE_OUTPUT, "batch": {"max_events": 0}}]})
    assert found == ["outputs[0].batch.max_events: Input should be greater than or equal to 1"]


def test_unknown_output_type_and_format() -> None:
    found = problems(
        {"outputs": [{"name": "a", "type": "carrier_pigeon"}, {**FILE_OUTPUT, "format": "morse"}]}
    )
    assert found[0].startswith("outputs[0].type: unknown output type 'carrier_pigeon'")
    assert found[1].startswith("outputs[1].format: unknown format 'morse'")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (
            {"type": "splunk_hec", "url": "https://splunk:8088/services/collector", "token": "t"},
            "outputs[0]: url: https://splunk:8088/services/collector: give the base URL",
        ),
        ({"type": "elasticsearch"}, "outputs[0]: give either url or cloud_id"),
    ],
)
def test_a_problem_found_by_the_output_as_a_whole_is_named_with_its_path(
    output: dict[str, str], problem: str
) -> None:
    [found] = problems({"outputs": [{"name": "out", **output}]})
    assert found.startswith(problem), found


def test_format_options_are_validated_by_the_format() -> None:
    found = problems({"outputs": [{**FILE_OUTPUT, "format": {"type": "json", "pretty": True}}]})
    assert found == ["outputs[0].format.pretty: Extra inputs are not permitted"]


def test_duplicate_output_names() -> None:
    assert problems({"outputs": [FILE_OUTPUT, FILE_OUTPUT]}) == [
        "outputs[1].name: 'local' is used twice"
    ]


def test_no_outputs() -> None:
    assert problems({"outputs": []}) == ["outputs: at least one output is needed"]


def test_environment_and_file_interpolation(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(SECRET + "\n")
    settings = parse_settings(
        {
            "listen": {
                "host": "0.0.0.0",  # noqa: S104 - the point of the test
                "auth": {"header": "X-Canary-Token", "secret": f"${{file:{secret_file}}}"},
            },
            "outputs": [{**FILE_OUTPUT, "path": "${OUT_DIR}/events.jsonl"}],
        },
        environ={"OUT_DIR": str(tmp_path)},
    )
    assert isinstance(settings.listen.auth, AuthConfig)
    assert settings.listen.auth.secret is not None
    assert settings.listen.auth.secret.get_secret_value() == SECRET
    assert settings.outputs[0].config.path == tmp_path / "events.jsonl"  # type: ignore[attr-defined]
    assert settings.secrets() == [SECRET]


def test_credential_interpolation_reads_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "webhook").write_text(SECRET)
    settings = parse_settings(
        {
            "listen": {"auth": {"header": "X-Canary-Token", "secret": "${credential:webhook}"}},
            "outputs": [FILE_OUTPUT],
        },
        environ={"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    assert settings.secrets() == [SECRET]


def test_missing_variable_file_and_credential_are_named(tmp_path: Path) -> None:
    found = problems(
        {
            "listen": {"auth": {"header": "X-A", "secret": "${NOT_SET}"}},
            "outputs": [{**FILE_OUTPUT, "path": f"${{file:{tmp_path}/absent}}"}],
            "store": {"path": "${credential:store}"},
        }
    )
    assert "listen.auth.secret: environment variable NOT_SET is not set" in found
    assert any(
        p.startswith(f"outputs[0].path: cannot read secret file {tmp_path}/absent") for p in found
    )
    assert (
        "store.path: ${credential:store} needs CREDENTIALS_DIRECTORY (systemd LoadCredential)"
        in found
    )


def test_interpolated_value_is_not_parsed_as_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("outputs:\n  - name: local\n    type: file\n    path: ${OUT}\n")
    settings = load_settings(config, environ={"OUT": "a: b - [c] {d} &e *f"})
    assert str(settings.outputs[0].config.path) == "a: b - [c] {d} &e *f"  # type: ignore[attr-defined]


def test_refuses_public_listener_without_auth() -> None:
    found = problems({"listen": {"host": "0.0.0.0"}, "outputs": [FILE_OUTPUT]})  # noqa: S104
    assert found == [
        "listen: refusing to listen on 0.0.0.0 without authentication; "
        "configure listen.auth or say `auth: none` explicitly"
    ]


def test_auth_none_is_an_explicit_choice() -> None:
    settings = parse_settings(
        {"listen": {"host": "0.0.0.0", "auth": "none"}, "outputs": [FILE_OUTPUT]},  # noqa: S104
        environ={},
    )
    assert settings.listen.auth == "none"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"header": "X-A"}, "header and secret go together"),
        ({"header": "X-A", "secret": "short"}, "must be at least 16 characters"),
        ({"basic": {"username": "canary", "password": ""}}, "must be at least 16 characters"),
        ({"basic": {"username": "canary", "password": "short"}}, "must be at least 16 characters"),
        ({}, "configure header and secret, basic, or secret_path; or `auth: none`"),
    ],
)
def test_auth_shapes(auth: dict[str, Any], message: str) -> None:
    found = problems({"listen": {"auth": auth}, "outputs": [FILE_OUTPUT]})
    assert any(message in p for p in found), found
    # The mapping went into the AuthConfig branch: `auth: none`'s complaint would mislead.
    assert not any("Input should be 'none'" in p for p in found), found


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        (
            {"basic": {"username": "can:ary", "password": SECRET}},
            "listen.auth.basic.username: a user name for HTTP basic auth cannot contain ':'",
        ),
        *(
            (
                {"header": "X-A", "secret": secret},
                "listen.auth.secret: begins or ends with whitespace, which HTTP strips",
            )
            for secret in (f" {SECRET}", f"{SECRET} ", f"{SECRET}\t", f"{SECRET}\n")
        ),
        *(
            (
                {"secret_path": f"{SECRET[:8]}{char}{SECRET[8:]}"},
                "listen.auth.secret_path: cannot contain '{', '}', '/', '?', '#' or '%'",
            )
            for char in "{}/?#%"
        ),
    ],
)
def test_credentials_no_post_could_ever_match_are_refused(
    auth: dict[str, Any], problem: str
) -> None:
    found = problems({"listen": {"auth": auth}, "outputs": [FILE_OUTPUT]})
    assert len(found) == 1, found
    assert found[0].startswith(problem), found
    # The refusal says what is wrong, never the secret itself.
    assert SECRET not in found[0]


def test_credentials_with_inner_spaces_and_url_safe_punctuation_are_accepted() -> None:
    auth = {
        "header": "X-A",
        "secret": f"{SECRET[:8]} {SECRET[8:]}",
        "basic": {"username": "canary user", "password": f" {SECRET}: "},
        "secret_path": f"{SECRET}-_.~+;",
    }
    settings = parse_settings({"listen": {"auth": auth}, "outputs": [FILE_OUTPUT]}, environ={})
    assert isinstance(settings.listen.auth, AuthConfig)


def test_bad_cidr_in_allow_list() -> None:
    found = problems({"listen": {"allow": ["10.0.0.0/33"]}, "outputs": [FILE_OUTPUT]})
    assert len(found) == 1
    assert found[0].startswith("listen.allow: '10.0.0.0/33' is not a CIDR")


def test_yaml_errors_and_shapes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("outputs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(listing)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_two_outputs_may_not_share_a_splunk_channel() -> None:
    channel = "0b9a1c57-3f9e-4d0c-9a55-6a0b3c2d1e0f"
    hec = {"type": "splunk_hec", "url": "https://splunk:8088", "token": SECRET}
    found = problems(
        {
            "outputs": [
                {**hec, "name": "a", "channel": channel},
                {**hec, "name": "b"},
                {**hec, "name": "c", "channel": channel.upper()},
            ]
        }
    )
    assert found == [
        "outputs[2].channel: the same as outputs[0].channel; each output needs its own"
    ], found
