"""`canary-forwarder render`: a payload in, one record per line out, clear errors otherwise."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cefp
import pytest

from forwarder.cli import main
from forwarder.settings import EX_CONFIG

SAMPLES = Path(__file__).parent.parent / "samples"
SSH = SAMPLES / "incident_ssh_login.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["render", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def config(tmp_path: Path, format_yaml: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"store:\n  path: {tmp_path / 'state'}\n"
        "outputs:\n"
        f"  - name: local\n    type: file\n    path: {tmp_path / 'out.jsonl'}\n"
        f"  - name: arcsight\n    type: file\n    path: {tmp_path / 'cef.log'}\n"
        f"    format:\n{format_yaml}"
    )
    return path


def test_a_payload_file_becomes_one_cef_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--format", "cef", str(SSH))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 1
    parsed = cefp.parse(lines[0])
    assert parsed["name"] == "SSH Login Attempt"
    assert parsed["extension"]["duser"] == "root"


def test_documents_are_printed_as_compact_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--format", "ecs", str(SSH))
    assert code == 0
    (line,) = out.splitlines()
    assert ", " not in line[:40]
    assert json.loads(line)["event"]["code"] == "4002"


def test_stdin_with_json_lines_gives_one_record_per_payload(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = [
        json.loads((SAMPLES / f"{n}.json").read_text()) for n in ("test_event", "audit_user_login")
    ]
    feed_stdin(monkeypatch, "\n".join(json.dumps(p) for p in payloads).encode() + b"\n")
    code, out, _ = run(capsys, "--format", "rfc5424", "-")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert " test [canary@32473 " in lines[0]
    assert " audit [canary@32473 " in lines[1]


def test_output_options_come_from_the_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config(
        tmp_path, "      type: cef\n      syslog_header: rfc5424\n      hostname: relay-1\n"
    )
    code, out, err = run(capsys, "-c", str(path), "--output", "arcsight", str(SSH))
    assert (code, err) == (0, "")
    assert out.startswith(
        "<131>1 2026-03-05T08:00:01.000000Z relay-1 canary-forwarder - incident - CEF:0|"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"Description": ', "not valid UTF-8 JSON"),
        (b"[1, 2]", "not an object"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b'{"Description": "a"}\n[1]\n', "line 2"),
    ],
)
def test_a_bad_payload_is_a_clear_error_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: bytes, message: str
) -> None:
    path = tmp_path / "payload.json"
    path.write_bytes(payload)
    code, out, err = run(capsys, "--format", "cef", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"render: {path}: ")
    assert message in err


def test_a_missing_file_is_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--format", "cef", str(tmp_path / "nope.json"))
    assert code == 1
    assert "cannot read" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "xml"], "unknown format 'xml'"),
        ([], "give --format FORMAT"),
        (["--output", "arcsight"], "--output needs -c FILE"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv, str(SSH))
    assert (code, out) == (2, "")
    assert message in err


def test_an_unknown_output_lists_the_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config(tmp_path, "      type: leef\n")
    code, _, err = run(capsys, "-c", str(path), "--output", "qradar", str(SSH))
    assert code == 2
    assert "no output 'qradar'" in err and "local, arcsight" in err


def test_a_format_that_contradicts_the_output_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config(tmp_path, "      type: leef\n")
    code, _, err = run(capsys, "-c", str(path), "--output", "arcsight", "--format", "cef", str(SSH))
    assert code == 2
    assert "uses format leef" in err


def test_an_invalid_format_option_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config(tmp_path, "      type: leef\n      delimiter: '|'\n")
    with pytest.raises(SystemExit) as exited:
        main(["render", "-c", str(path), "--output", "arcsight", str(SSH)])
    assert exited.value.code == EX_CONFIG
    assert "outputs[1].format.delimiter" in capsys.readouterr().err
