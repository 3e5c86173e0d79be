"""`json`: the normalised event with the console's payload beside it, one JSON document."""

from __future__ import annotations

from typing import Any

from forwarder.events import CanaryEvent
from forwarder.mappers._severity import SeverityConfig
from forwarder.mappers.base import Mapper, Record

__all__ = ["JsonConfig", "JsonMapper"]


class JsonConfig(SeverityConfig):
    include_payload: bool = True
    """Add the console's payload, as it was posted, under `payload`."""


class JsonMapper(Mapper[JsonConfig]):
    config_class = JsonConfig

    def map(self, event: CanaryEvent) -> Record:
        body: dict[str, Any] = event.to_dict()
        if self.config.include_payload:
            body["payload"] = event.payload
        return Record(event=event, body=body, severity=self.config.severity.of(event))
