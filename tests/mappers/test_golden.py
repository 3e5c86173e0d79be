"""Golden files: every sample payload in every format, exactly as `render` prints it.

A change to a format shows up here as a diff of tests/golden/. After checking that the diff is
what you meant, regenerate with:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/mappers/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli.render import render
from forwarder.mappers.base import Mapper
from forwarder.registry import mapper_class

from .helpers import RECEIVED_AT, SAMPLES, sample_names

GOLDEN = Path(__file__).parent.parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# Device versions are pinned so a release does not rewrite every golden file.
VARIANTS: dict[str, dict[str, Any]] = {
    "json": {"type": "json"},
    "splunk_console": {"type": "splunk_console"},
    "ecs": {"type": "ecs"},
    "cef": {"type": "cef", "version": "1.0"},
    "cef-rfc5424": {"type": "cef", "version": "1.0", "syslog_header": "rfc5424"},
    "cef-rfc3164": {"type": "cef", "version": "1.0", "syslog_header": "rfc3164"},
    "leef": {"type": "leef", "version": "1.0"},
    "leef-tab-rfc5424": {
        "type": "leef",
        "version": "1.0",
        "delimiter": "x09",
        "syslog_header": "rfc5424",
    },
    "rfc5424": {"type": "rfc5424"},
    "rfc5424-thinkst": {"type": "rfc5424", "thinkst_compat": True},
    "rfc3164": {"type": "rfc3164"},
}


def _mapper(options: dict[str, Any]) -> Mapper[Any]:
    cls = mapper_class(options["type"])
    return cls(cls.config_class.model_validate(options))


def _golden(lines: list[str]) -> tuple[str, str]:
    """File suffix and content: a JSON document indented, so a change reads as a small diff."""
    if len(lines) == 1 and lines[0].startswith("{"):
        return ".json", json.dumps(json.loads(lines[0]), indent=2, ensure_ascii=False) + "\n"
    return ".txt", "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize("sample", sample_names())
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sample_renders_as_its_golden_file(variant: str, sample: str) -> None:
    raw = (SAMPLES / f"{sample}.json").read_bytes()
    suffix, text = _golden(render(_mapper(VARIANTS[variant]), raw, received_at=RECEIVED_AT))
    path = GOLDEN / variant / f"{sample}{suffix}"
    if UPDATE:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="")
        return
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 and review it"
    assert path.read_text(encoding="utf-8") == text


def test_every_golden_file_belongs_to_a_sample_and_a_variant() -> None:
    expected = {(variant, sample) for variant in VARIANTS for sample in sample_names()}
    present = {(path.parent.name, path.stem) for path in GOLDEN.rglob("*") if path.is_file()}
    assert present - expected == set(), "golden files without a sample or variant: delete them"
    assert len(present) == len(list(GOLDEN.rglob("*.*"))), "two golden files for one sample"
