"""One severity table for every format: how much a Canary event matters, on CEF's 0..10 scale.

Thinkst attaches no severity to its events, so the forwarder decides. The defaults follow what
other Canary integrations settled on (Panther rates incidents and tokens High, Thinkst's own
Cloudflare receiver rates scans below attacks and reconnects low) and each output may override
them in YAML:

    format:
      type: cef
      severity:
        by_log_type: {5007: 6, 30001: 10}
        by_kind: {canarytoken: 10, reconnected: 1}

A LogType entry wins over a kind entry, so port scans (incidents with a scan LogType) keep their
own level when `incident` is changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from forwarder.events import CanaryEvent
from forwarder.mappers.base import MapperConfig

__all__ = [
    "DEFAULT_BY_KIND",
    "DEFAULT_BY_LOG_TYPE",
    "KindName",
    "Level",
    "SeverityConfig",
    "SeverityTable",
]

Level = Annotated[int, Field(ge=0, le=10)]

# Event kinds (forwarder.events.EventKind) and, for operational events, their operation.
KindName = Literal[
    "incident",
    "canarytoken",
    "audit",
    "test",
    "operational",
    "unknown",
    "disconnected",
    "reconnected",
    "console_settings_changed",
    "canary_settings_changed",
    "flock_settings_changed",
    "network_settings_rollback",
]

DEFAULT_BY_KIND: Mapping[str, int] = {
    "canarytoken": 9,
    "incident": 8,
    "unknown": 5,
    "disconnected": 5,
    "operational": 3,
    "reconnected": 3,
    "console_settings_changed": 3,
    "canary_settings_changed": 3,
    "flock_settings_changed": 3,
    "network_settings_rollback": 3,
    "audit": 2,
    "test": 0,
}

_SCAN_LOG_TYPES = (3004, 5001, 5002, 5003, 5004, 5005, 5006, 5007, 5008, 5009, 5011, 5012)
DEFAULT_BY_LOG_TYPE: Mapping[int, int] = dict.fromkeys(_SCAN_LOG_TYPES, 5)


class SeverityTable(BaseModel):
    """Overrides of the built-in severity table; unset entries keep their default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by_log_type: dict[int, Level] = Field(default_factory=dict)
    """Severity per Canary LogType, e.g. `{4002: 9}`. Checked first."""
    by_kind: dict[KindName, Level] = Field(default_factory=dict)
    """Severity per event kind or operation (`incident`, `canarytoken`, `disconnected`, ...)."""

    @cached_property
    def _tables(self) -> tuple[dict[int, int], dict[str, int]]:
        # Merged once per table; `of` runs for every record of every output.
        kinds = dict(DEFAULT_BY_KIND)
        for kind, level in self.by_kind.items():
            kinds[kind] = level
        return {**DEFAULT_BY_LOG_TYPE, **self.by_log_type}, kinds

    def of(self, event: CanaryEvent) -> int:
        """The event's severity, 0 (lowest) to 10 (highest)."""
        log_types, kinds = self._tables
        if event.log_type is not None:
            level = log_types.get(event.log_type)
            if level is not None:
                return level
        if event.operation is not None:
            level = kinds.get(event.operation)
            if level is not None:
                return level
        return kinds[event.kind.value]


class SeverityConfig(MapperConfig):
    """Options every built-in format has: the severity table."""

    severity: SeverityTable = Field(default_factory=SeverityTable)
    """Overrides of the default severity per LogType and per kind (see docs/formats.md)."""
