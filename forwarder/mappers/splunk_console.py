"""`splunk_console`: the `event` the Canary console's own Splunk HEC integration sends, so
searches and dashboards written for that integration keep working.

The console's Splunk documentation shows three shapes, each with its sourcetype:

- `canary_alerts`: incidents and Canarytokens, the webhook's JSON object without `LogType` and
  `MatchedAnnotations`, which the Splunk integration does not send;
- `canary_console_audit`: the bare audit record (the webhook's `payload`, no `type` wrapper);
- `canary_test_connection`: a plain string instead of the test incident.

The HEC output puts the record body in HEC's `event` and asks `splunk_sourcetype` for the
sourcetype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwarder.events import CanaryEvent, EventKind
from forwarder.mappers._severity import SeverityConfig
from forwarder.mappers.base import Mapper, Record

__all__ = [
    "ALERTS",
    "AUDIT",
    "TEST_CONNECTION",
    "TEST_CONNECTION_MESSAGE",
    "SplunkConsoleConfig",
    "SplunkConsoleMapper",
    "splunk_sourcetype",
]

ALERTS = "canary_alerts"
AUDIT = "canary_console_audit"
TEST_CONNECTION = "canary_test_connection"
TEST_CONNECTION_MESSAGE = (
    "Hello from your Canary Console, this event was created in order to test the connection "
    "from your Canary Console webhook integration to your Splunk HEC"
)
WEBHOOK_ONLY_KEYS = frozenset({"LogType", "MatchedAnnotations"})


def splunk_sourcetype(event: CanaryEvent) -> str:
    """The sourcetype the console's Splunk integration gives this event.

    `canary_console_audit` for audit records, `canary_test_connection` for the console's test
    event, `canary_alerts` for everything else (incidents, Canarytokens, operational alerts).
    """
    if event.kind is EventKind.AUDIT:
        return AUDIT
    if event.kind is EventKind.TEST:
        return TEST_CONNECTION
    return ALERTS


class SplunkConsoleConfig(SeverityConfig):
    """Options of the `splunk_console` format."""

    include_webhook_only_keys: bool = False
    """Keep `LogType` and `MatchedAnnotations`, which the generic webhook has and the console's
    Splunk integration leaves out."""


class SplunkConsoleMapper(Mapper[SplunkConsoleConfig]):
    config_class = SplunkConsoleConfig

    def map(self, event: CanaryEvent) -> Record:
        return Record(event=event, body=self._body(event), severity=self.config.severity.of(event))

    def _body(self, event: CanaryEvent) -> str | Mapping[str, Any]:
        if event.kind is EventKind.TEST:
            return TEST_CONNECTION_MESSAGE
        if event.kind is EventKind.AUDIT:
            record = event.payload.get("payload")
            return dict(record) if isinstance(record, Mapping) else {}
        if self.config.include_webhook_only_keys:
            return dict(event.payload)
        return {key: value for key, value in event.payload.items() if key not in WEBHOOK_ONLY_KEYS}
