"""What several formats read out of an event: the attacker's user name, user agent, URL, file,
DNS name and ports (from AdditionalDetails), the signature id, and the details left over.

AdditionalDetails keys vary in spelling across types and console versions (`User-Agent`,
`user-agent`, `Src Port`, `SrcPort`), so they are matched ignoring case, spaces, `-` and `_`.
The first matching entry is used; every entry not used is returned in `Fields.remaining` so a
format can keep it rather than drop it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from forwarder.events import CanaryEvent, Detail, EventKind, canonical_ip, iso_ms

__all__ = [
    "Fields",
    "epoch_ms",
    "extract",
    "host_or_ip",
    "is_dns_token",
    "is_ipv6_address",
    "iso_ms",
    "leftovers",
    "port",
    "signature_id",
    "slug",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_KEY_NOISE = re.compile(r"[\s_-]+")

# Field -> AdditionalDetails keys (normalised), best first.
_USER_KEYS = ("username", "user")
_USER_AGENT_KEYS = ("useragent",)
_URL_KEYS = ("url",)
_PATH_KEYS = ("path",)
_FILE_KEYS = ("filename", "file")
_DNS_KEYS = ("hostname",)
_DOMAIN_KEYS = ("domain",)
_SOURCE_PORT_KEYS = ("srcport", "sourceport")
_DESTINATION_PORT_KEYS = ("dstport", "destinationport")


class Fields(NamedTuple):
    """The attacker-side facts of one event. Audit events carry the console user instead.

    A named tuple rather than a frozen dataclass: it is built for every record and is several
    times cheaper to create.
    """

    user_name: str | None = None
    user_domain: str | None = None
    user_agent: str | None = None
    url: str | None = None
    path: str | None = None
    file_name: str | None = None
    dns_name: str | None = None
    source_port: int | None = None
    destination_port: int | None = None
    remaining: tuple[Detail, ...] = ()
    """AdditionalDetails entries not used for any field above, in their original order."""


def extract(event: CanaryEvent) -> Fields:
    """The shared fields of `event`."""
    if event.audit is not None:
        return Fields(user_name=event.audit.user, user_agent=event.audit.user_agent)
    picker = _Picker(event.details)
    user_name = picker.text(_USER_KEYS)
    user_domain = picker.text(_DOMAIN_KEYS)
    user_agent = picker.text(_USER_AGENT_KEYS)
    url = picker.text(_URL_KEYS)
    path = picker.text(_PATH_KEYS)
    file_name = picker.text(_FILE_KEYS)
    dns_name = picker.text(_DNS_KEYS) if is_dns_token(event) else None
    source_port = picker.port(_SOURCE_PORT_KEYS)
    destination_port = event.canary_port
    if destination_port is None:
        destination_port = picker.port(_DESTINATION_PORT_KEYS)
    return Fields(
        user_name=user_name,
        user_domain=user_domain,
        user_agent=user_agent,
        url=url,
        path=path,
        file_name=file_name,
        dns_name=dns_name,
        source_port=source_port,
        destination_port=destination_port,
        remaining=picker.remaining(),
    )


class _Picker:
    """Finds details by normalised key and remembers which entries were used."""

    __slots__ = ("_details", "_first", "_used")

    def __init__(self, details: tuple[Detail, ...]) -> None:
        self._details = details
        self._first: dict[str, int] = {}
        for index, detail in enumerate(details):
            self._first.setdefault(_normal_key(detail.key), index)
        self._used: set[int] = set()

    def text(self, keys: tuple[str, ...]) -> str | None:
        for key in keys:
            index = self._first.get(key)
            if index is not None and index not in self._used and self._details[index].value:
                self._used.add(index)
                return self._details[index].value
        return None

    def port(self, keys: tuple[str, ...]) -> int | None:
        for key in keys:
            index = self._first.get(key)
            if index is None or index in self._used:
                continue
            number = port(self._details[index].value)
            if number is not None:
                self._used.add(index)
                return number
        return None

    def remaining(self) -> tuple[Detail, ...]:
        if not self._used:
            return self._details
        return tuple(d for i, d in enumerate(self._details) if i not in self._used)


def leftovers(event: CanaryEvent, fields: Fields) -> tuple[Detail, ...]:
    """What the formats with a fixed key set have no key for: the unused AdditionalDetails or,
    for an audit record, its fields no format has a standard name for."""
    if event.audit is None:
        return fields.remaining
    audit = event.audit
    extra = (
        ("flock_name", audit.flock_name),
        ("user_browser_language", audit.user_language),
        ("user_access_route", audit.access_route),
    )
    return tuple(Detail(key, value) for key, value in extra if value)


@lru_cache(maxsize=4096)
def _normal_key(key: str) -> str:
    # The same few dozen keys arrive in every event of a type.
    return _KEY_NOISE.sub("", key).lower()


def is_dns_token(event: CanaryEvent) -> bool:
    """A Canarytoken of the DNS channel (LogType 16xxx), whose SourceIP is the DNS resolver."""
    if event.kind is not EventKind.CANARYTOKEN:
        return False
    if event.log_type is not None:
        return 16000 <= event.log_type < 17000
    return event.description.startswith("DNS")


def port(text: str | None) -> int | None:
    """A TCP/UDP port number from text, or None when it is not one (Canary uses -1 for none)."""
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    number = int(text)
    return number if number <= 65535 else None


@lru_cache(maxsize=4096)
def host_or_ip(value: str | None) -> tuple[str | None, str | None]:
    """`(ip, None)` for an IP address (in RFC 5952's form), `(None, host)` for anything else,
    `(None, None)` for none.

    Canary IP fields sometimes hold a hostname (`abc123.canary.tools`), so they are validated
    before they go into a field typed as an address. The same few addresses (Canaries, repeat
    attackers) come back again and again, and validating one costs more than mapping a field,
    so answers are cached.
    """
    if not value:
        return None, None
    ip = canonical_ip(value)
    return (ip, None) if ip is not None else (None, value)


def is_ipv6_address(ip: str | None) -> bool:
    """For an address `host_or_ip` accepted: whether it is IPv6 (only those have a colon)."""
    return ip is not None and ":" in ip


def signature_id(event: CanaryEvent) -> str:
    """The event class: its LogType, or a slug of its Description when the console sent none.

    The slug is stable for a given Description, so SIEM rules keyed on it keep working.
    """
    if event.log_type is not None:
        return str(event.log_type)
    return slug(event.description)


@lru_cache(maxsize=1024)
def slug(text: str) -> str:
    """Lower-case words joined by `-`: `"Canary Disconnected"` -> `"canary-disconnected"`."""
    return _NOT_SLUG.sub("-", text.lower()).strip("-")[:128] or "unknown"


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // _MILLISECOND
