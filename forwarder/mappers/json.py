"""`json`: the normalised event with the console's payload beside it, one JSON document."""

from __future__ import annotations

from typing import Any

from forwarder.events import CanaryEvent
from forwarder.mappers._severity import SeverityConfig
from forwarder.mappers.base import Mapper, Record

__all__ = ["JsonConfig", "JsonMapper"]


class JsonConfig(SeverityConfig):
    include_payload: bool = True
    """Add the console's payload under `payload`, as a JSON object (a repeated key keeps its
    last value, numbers are as JSON reads them)."""
    include_original: bool = False
    """Add the webhook body exactly as received, as a string, under `original`."""


class JsonMapper(Mapper[JsonConfig]):
    config_class = JsonConfig

    def map(self, event: CanaryEvent) -> Record:
        body: dict[str, Any] = event.to_dict()
        if self.config.include_payload:
            body["payload"] = event.payload
        if self.config.include_original:
            # Ingest accepted only valid UTF-8 JSON, so this decoding gives back every byte.
            body["original"] = event.raw.decode("utf-8", "replace")
        return Record(event=event, body=body, severity=self.config.severity.of(event))
