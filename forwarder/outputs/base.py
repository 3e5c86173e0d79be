"""The output contract: send one batch, then say what happened. Never sleep, never loop.

Outputs *classify*; `forwarder.delivery` *retries*. Each send returns one of the results below and
the dispatcher acks, backs off, splits or dead-letters accordingly. That split keeps backoff and
the store in one place, as in Vector's sinks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from forwarder.mappers.base import Record

__all__ = [
    "BatchConfig",
    "Delivered",
    "HealthcheckError",
    "Output",
    "OutputConfig",
    "Partial",
    "Reject",
    "Retry",
    "RetryConfig",
    "SendResult",
    "TooLarge",
    "one_or_many",
]


def one_or_many(field: str, *, alias: str | None = None) -> ConfigDict:
    """The model config of an output whose list `field` also takes one value (a `mode="before"`
    validator makes it a list), and `alias` as another name for it: the JSON Schema then takes
    what `validate` takes, so an editor does not flag `url: https://...` or `host: a:514`."""

    def widen(schema: dict[str, Any]) -> None:
        properties = schema["properties"]
        listed = properties[field]
        described = {
            key: listed.pop(key) for key in ("title", "description", "default") if key in listed
        }
        properties[field] = {**described, "anyOf": [listed["items"], listed]}
        if alias is not None:
            properties[alias] = properties[field]
            schema["required"] = [name for name in schema.get("required", []) if name != field]
            schema["oneOf"] = [{"required": [field]}, {"required": [alias]}]

    return ConfigDict(extra="forbid", frozen=True, json_schema_extra=widen)


class BatchConfig(BaseModel):
    """How many records one send may carry, and how long to wait to fill it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_events: int = Field(default=500, ge=1, le=100_000)
    """Most records in one send."""
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Most bytes of stored payload in one send."""
    timeout_secs: float = Field(default=0.05, ge=0, le=60)
    """How long a partly filled batch may wait for more events before it is sent anyway."""


class RetryConfig(BaseModel):
    """Backoff between failed sends: exponential with full jitter, capped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_backoff_secs: float = Field(default=1.0, gt=0, le=3600)
    """Upper bound of the first wait."""
    max_backoff_secs: float = Field(default=60.0, gt=0, le=86_400)
    """No wait is longer than this, even when a server asks for more with Retry-After."""


class OutputConfig(BaseModel):
    """Options every output has. Subclass it for an output's own options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Unique name of this output; it keys delivery state in the store, so keep it stable."""
    type: str
    """The output's registered name: `file`, `splunk_hec`, `syslog`, `elasticsearch`, ..."""
    format: str | dict[str, object] = "json"
    """A format name (`json`, `cef`, ...) or a mapping with `type:` and that format's options."""
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()

    def own_values(self) -> dict[str, str]:
        """Options whose value no other output of the configuration may share, by name.

        The configuration refuses a value two outputs give (a Splunk HEC channel: its ack ids
        count per channel, so one sender's acknowledgement would confirm another's request).
        """
        return {}


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every record in the batch reached the destination."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Nothing in the batch is known to have arrived; send it again later.

    `retry_after` is the server's own wish in seconds. `operator_action` marks failures that no
    amount of waiting fixes (bad credentials): the events are kept, an ERROR is logged and the
    output is reported unhealthy until a send succeeds.
    """

    reason: str
    retry_after: float | None = None
    operator_action: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """The destination refused the whole batch for good; every record goes to dead letters."""

    reason: str


@dataclass(frozen=True, slots=True)
class TooLarge:
    """The batch was too big for the destination; the dispatcher halves it and sends again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Partial:
    """Per-record results, by index in the batch. An index that is absent was delivered."""

    results: Mapping[int, Retry | Reject] = field(default_factory=dict)


SendResult = Delivered | Retry | Reject | TooLarge | Partial


class HealthcheckError(Exception):
    """The destination cannot take records right now; the message says why."""


ConfigT = TypeVar("ConfigT", bound=OutputConfig)


class Output(ABC, Generic[ConfigT]):
    """A transport to one destination. One instance per configured output."""

    config_class: ClassVar[type[OutputConfig]] = OutputConfig

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Open what the output needs (sessions, files). Called once before the first send."""

    async def start_for_healthcheck(self) -> None:
        """What `validate --healthcheck` opens before `healthcheck`: `start` by default. An
        output whose `start` leaves something behind (a file it creates) opens less."""
        await self.start()

    @abstractmethod
    async def send(self, batch: Sequence[Record]) -> SendResult:
        """Send the records in order and classify the outcome. Must not raise for I/O errors."""

    async def healthcheck(self) -> None:
        """Raise `HealthcheckError` unless a real send would be accepted right now."""

    async def liveness(self) -> None:
        """Raise `HealthcheckError` unless the destination is there; run every 30 s.

        The healthcheck itself by default. An output whose healthcheck writes something the
        destination keeps overrides this with a check that writes nothing.
        """
        await self.healthcheck()

    async def reopen(self) -> None:
        """Reopen files and reload certificates (SIGHUP, logrotate)."""

    async def aclose(self) -> None:
        """Release everything `start` opened."""
