"""Every built-in format leaves the event it maps untouched (the event is shared by outputs)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from forwarder.events import parse_event
from forwarder.registry import BUILTIN_MAPPERS, mapper_class
from tests.helpers import SAMPLES


@pytest.mark.parametrize("format_name", sorted(BUILTIN_MAPPERS))
def test_mapping_does_not_modify_the_event(format_name: str) -> None:
    cls = mapper_class(format_name)
    mapper = cls(cls.config_class(type=format_name))
    for path in sorted(SAMPLES.glob("*.json")):
        event = parse_event(path.read_bytes(), received_at=datetime(2026, 4, 1, tzinfo=UTC))
        before = copy.deepcopy(event.to_dict()), copy.deepcopy(dict(event.payload))
        mapper.map(event)
        assert (event.to_dict(), dict(event.payload)) == before, path.name
