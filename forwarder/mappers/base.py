"""The mapper contract: a pure function from a `CanaryEvent` to one `Record`.

A mapper does no I/O. Its options come from the output's `format:` in YAML and are validated by
its own `config_class`, like every other part of the configuration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from forwarder.events import CanaryEvent
from forwarder.mappers._escape import json_text

__all__ = ["Mapper", "MapperConfig", "MappingError", "Record"]


class MapperConfig(BaseModel):
    """Options shared by every format. Subclass it to add a format's own options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    """The format's registered name, such as `json`, `cef` or `ecs`."""


@dataclass(frozen=True, slots=True)
class Record:
    """What a mapper made of one event, ready for an output to frame and send.

    `body` is either one line of text (CEF, LEEF, a syslog message) or a JSON document.
    `syslog_header` is True when the text already starts with a complete syslog header, so the
    syslog output sends it as it is instead of wrapping it in another. `severity` is on the
    0 (lowest) to 10 (highest) scale of CEF, for outputs that need a priority of their own.
    """

    event: CanaryEvent
    body: str | Mapping[str, Any]
    severity: int = 5
    syslog_header: bool = False

    def text(self) -> str:
        """The record on one line: text as it is, a document as compact JSON.

        JSON leaves U+2028, U+2029, DEL and the C1 controls raw inside strings, and line-based
        readers (Python's `str.splitlines`, some JavaScript) break on them, so they are escaped.
        """
        return self.body if isinstance(self.body, str) else json_text(self.body)


class MappingError(ValueError):
    """The event cannot be expressed in this format; the record is dead-lettered with the reason."""


ConfigT = TypeVar("ConfigT", bound=MapperConfig)


class Mapper(ABC, Generic[ConfigT]):
    """Turns events into records of one format. Instances are built once per output."""

    config_class: ClassVar[type[MapperConfig]] = MapperConfig

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @abstractmethod
    def map(self, event: CanaryEvent) -> Record:
        """One record for one event; raise `MappingError` for an event this format cannot carry.

        The event is shared with the other outputs' mappers: read it, never modify it.
        """
