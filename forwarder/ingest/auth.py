"""Who may post: the client address allow-list and the console's credentials.

Secrets are compared with `hmac.compare_digest` so the time an answer takes says nothing about how
much of a guess was right. Repeated failures from one address are slowed down by a small
token bucket, so brute force gets 429 long before it gets anywhere.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache, lru_cache

from aiohttp import web

from forwarder.settings import AuthConfig, ListenConfig

__all__ = [
    "FailureLimiter",
    "client_address",
    "client_key",
    "from_trusted_proxy",
    "is_allowed",
    "is_authenticated",
    "may_read_status",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    # Cached: the lists come from the settings, and parsing them costs more than the check.
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _in_any(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    # A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d, which lists name as IPv4.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in network or (mapped is not None and mapped in network) for network in networks)


def _hop_address(hop: str) -> str:
    """The address in one X-Forwarded-For hop, in its one canonical spelling.

    Proxies write a hop as `2001:db8::7`, `[2001:db8::7]` (RFC 7239's form), `[2001:db8::7]:4711`
    or `192.0.2.7:4711`. Read as written, such a hop matched no list, a trusted proxy written
    so was taken for the client, and the source port, new on each connection, made every
    request a client of its own to the failure limiter. A hop that is not an address is kept
    as it came, in ASCII with backslash escapes: no list matches it, and it goes into log lines
    and the quarantine as the client (bytes not UTF-8 would fail both).
    """
    text = hop = hop.encode("ascii", "backslashreplace").decode("ascii")
    if text.startswith("["):
        inside, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return hop
        text = inside
    elif text.count(":") == 1:  # IPv4 (or a name) with a port; an IPv6 address has two or more
        host, _, port = text.partition(":")
        if not port.isdigit():
            return hop
        text = host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return hop
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else ip)


def client_address(request: web.Request, listen: ListenConfig) -> str:
    """The client's address, believing X-Forwarded-For only from a trusted proxy.

    The forwarded chain is read right to left, skipping trusted proxies: the first hop that is
    not one of ours is the client, whatever the client itself put at the left end.
    """
    peer = request.remote or ""
    if not from_trusted_proxy(peer, listen):
        return peer
    proxies = _networks(listen.trusted_proxies)
    # A proxy may add a header line of its own rather than extend the client's (HAProxy does),
    # so the lines in order make one list (RFC 9110 §5.3); the first line alone is the client's.
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
    hops = [_hop_address(hop.strip()) for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, proxies):
            return hop
    return peer


def from_trusted_proxy(address: str, listen: ListenConfig) -> bool:
    """True if `address` is in `listen.trusted_proxies`, whose clients all share its address."""
    # Without proxies (the common case) the address is not even parsed.
    return bool(listen.trusted_proxies) and _in_any(address, _networks(listen.trusted_proxies))


def is_allowed(address: str, listen: ListenConfig) -> bool:
    return not listen.allow or _in_any(address, _networks(listen.allow))


def may_read_status(request: web.Request, listen: ListenConfig) -> bool:
    """True if the client may read /metrics and why /readyz fails (`listen.status_allow`)."""
    return _in_any(client_address(request, listen), _networks(listen.status_allow))


def _equal(presented: str, expected: str) -> bool:
    # aiohttp hands header bytes that are not UTF-8 over as lone surrogates (surrogateescape);
    # surrogatepass encodes every str, one to one, so such a credential is just a wrong one.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def is_authenticated(request: web.Request, auth: AuthConfig, secret_path: str | None) -> bool:
    """True if the request carries any one of the configured credentials."""
    if auth.header is not None and auth.secret is not None:
        presented = request.headers.get(auth.header)
        if presented is not None and _equal(presented, auth.secret.get_secret_value()):
            return True
    if auth.basic is not None:
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is not None:
            user_ok = _equal(credentials[0], auth.basic.username)
            password_ok = _equal(credentials[1], auth.basic.password.get_secret_value())
            if user_ok and password_ok:
                return True
    return (
        auth.secret_path is not None
        and secret_path is not None
        and _equal(secret_path, auth.secret_path.get_secret_value())
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        # binascii.Error (not base64), UnicodeDecodeError (not UTF-8), and b64decode's own
        # ValueError for a str that is not ASCII: all three are a wrong credential.
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


# Every IPv6 host gets a /64 to itself (RFC 7421), 2**64 addresses it may send from.
_IPV6_CLIENT_PREFIX = 64
_IPV6_HOST_MASK = (1 << (128 - _IPV6_CLIENT_PREFIX)) - 1


# Cached: the listener looks up the client of every connection as it accepts it, and parsing
# the address was half of what the per-client cap cost a connection. A client that makes up
# addresses only turns the cache over.
@lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """Which client `address` is, for what is limited per client (failed attempts, open
    connections): an IPv4 address (however written), or an IPv6 /64. Counted per IPv6 address,
    each guess or connection could come from an address of its own and no limit would ever be
    reached, while the entries it made pushed others' out."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    # From the integer: a zone (fe80::1%eth0) has no place in a network.
    network = ipaddress.IPv6Address(int(ip) & ~_IPV6_HOST_MASK)
    return f"{network}/{_IPV6_CLIENT_PREFIX}"


class FailureLimiter:
    """Allows `burst` failed attempts per address (per /64 for IPv6), refilled at `per_minute`;
    bounded memory."""

    def __init__(self, burst: int = 10, per_minute: float = 10, max_clients: int = 10_000):
        self.burst = burst
        self.rate = per_minute / 60
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, address: str, now: float) -> _Bucket:
        address = client_key(address)
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[address] = bucket
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(address)
        return bucket

    def blocked(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None if it may try now."""
        bucket = self._bucket(address, time.monotonic())
        return None if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def failed(self, address: str) -> None:
        bucket = self._bucket(address, time.monotonic())
        bucket.tokens = max(0.0, bucket.tokens - 1)
