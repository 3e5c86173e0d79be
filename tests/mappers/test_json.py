from __future__ import annotations

from datetime import UTC, datetime

import orjson

from forwarder.events import parse_event
from forwarder.mappers.json import JsonConfig, JsonMapper

# A repeated key and a number written oddly: parsing normalises both.
RAW = (
    b'{"AlertType": "CanaryIncident", "CanaryID": "c", "Intro": "first", "Intro": "second",'
    b' "CanaryPort": 2.50e1, "Description": "caf\\u00e9 \xc3\xa9"}'
)
EVENT = parse_event(RAW, received_at=datetime(2026, 3, 1, tzinfo=UTC))


def test_payload_is_the_parsed_object_and_no_original_by_default() -> None:
    body = JsonMapper(JsonConfig(type="json")).map(EVENT).body
    assert isinstance(body, dict)
    assert body["payload"]["Intro"] == "second"
    assert "original" not in body


def test_original_gives_back_the_body_byte_for_byte() -> None:
    record = JsonMapper(JsonConfig(type="json", include_original=True)).map(EVENT)
    assert isinstance(record.body, dict)
    assert record.body["original"].encode("utf-8") == RAW
    # and survives the trip through a written line
    assert orjson.loads(record.text())["original"].encode("utf-8") == RAW


def test_payload_can_be_left_out() -> None:
    body = JsonMapper(JsonConfig(type="json", include_payload=False)).map(EVENT).body
    assert isinstance(body, dict)
    assert "payload" not in body
