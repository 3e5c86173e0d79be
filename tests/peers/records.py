"""Records of distinct Canary events, to send to the fake peers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.mappers.json import JsonConfig, JsonMapper
from forwarder.registry import mapper_class

__all__ = ["RECEIVED", "make_records", "sample_records"]

_SAMPLES = Path(__file__).resolve().parents[1] / "samples"
_SAMPLE = _SAMPLES / "incident_ssh_login.json"
RECEIVED = datetime(2026, 3, 5, 8, 0, 2, tzinfo=UTC)


def make_records(
    count: int, *, body: Literal["json", "text"] = "json", start: int = 0
) -> list[Record]:
    """`count` records of distinct SSH-login incidents (distinct ids and fingerprints)."""
    template = orjson.loads(_SAMPLE.read_bytes())
    mapper = JsonMapper(JsonConfig(type="json"))
    records: list[Record] = []
    for number in range(start, start + count):
        payload = {**template, "IncidentHash": f"{number:032x}"}
        event = parse_event(orjson.dumps(payload), received_at=RECEIVED)
        if body == "json":
            records.append(mapper.map(event))
        else:
            text = f"CEF:0|Thinkst|Canary|1|4002|SSH Login Attempt|5|cs1={event.id}"
            records.append(Record(event=event, body=text))
    return records


def sample_records(format_name: str) -> list[Record]:
    """Every sample payload in tests/samples, mapped by the format `format_name`."""
    cls = mapper_class(format_name)
    mapper = cls(cls.config_class.model_validate({"type": format_name}))
    return [
        mapper.map(parse_event(path.read_bytes(), received_at=RECEIVED))
        for path in sorted(_SAMPLES.glob("*.json"))
    ]
