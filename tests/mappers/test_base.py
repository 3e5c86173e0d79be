from __future__ import annotations

import orjson
import pytest

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from tests.mappers.helpers import sample_event


@pytest.fixture
def event() -> CanaryEvent:
    return sample_event("incident_ssh_login")


def test_text_record_is_its_own_text(event: CanaryEvent) -> None:
    assert Record(event, "CEF:0|Thinkst|Canary|x").text() == "CEF:0|Thinkst|Canary|x"


@pytest.mark.parametrize("breaker", ["\u2028", "\u2029", "\x85", "\x7f", "\x9b"])
def test_document_text_stays_one_line_and_reads_back_the_same(
    event: CanaryEvent, breaker: str
) -> None:
    document = {"Username": f'root{breaker}{{"kind": "forged"}}', "n": 1}
    text = Record(event, document).text()
    assert breaker not in text
    assert len(text.splitlines()) == 1
    assert orjson.loads(text) == document
