"""The listener's TLS: one server context for the life of the process, certificates reloadable.

Reloading loads the certificate files again into the same context: new connections get the
renewed certificate, open ones keep theirs, and a bad file leaves the old certificate in use.
A certificate that has expired or is not valid yet, and a world-readable private key file, are
loaded but logged as warnings: a client refusing the certificate fails its handshake, which
the daemon does not log (the Internet fails handshakes all day). The expiry of each certificate
loaded is exported as `canary_forwarder_listener_certificate_expiry_timestamp_seconds`, to alert
on well before that.
"""

from __future__ import annotations

import contextlib
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path

import structlog

from forwarder.certificates import KeyPair, load_key_pair
from forwarder.settings import ListenConfig
from forwarder.telemetry import metrics

__all__ = ["reload_certificates", "server_context"]

log = structlog.get_logger("forwarder.ingest")


def server_context(listen: ListenConfig) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context with the configured certificate, or None without `tls`."""
    if listen.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # OpenSSL 3 refuses a client's renegotiation by itself; OpenSSL 1.1.1, which some
    # distributions still build Python with, grants it: a full handshake's work on demand.
    context.options |= ssl.OP_NO_RENEGOTIATION
    reload_certificates(context, listen)
    return context


def reload_certificates(context: ssl.SSLContext, listen: ListenConfig) -> None:
    """Read the certificate and key files again; raises (leaving the old ones) if they are bad."""
    if listen.tls is None:
        return
    cert, key = listen.tls.cert, listen.tls.key
    # Each file read once, and both loads and the dates taken from those bytes: read again for
    # each step, a renewal landing in between could pass the trial with one pair and load
    # another (the new certificate with the old key), or export the new certificate's expiry
    # for the old one still served.
    pair = KeyPair.read(cert, key)
    # Tried on a context of their own first: loading into the live one replaces its certificate
    # before the key is checked against it, so a key that does not match (a certificate renewed
    # with a new key, the old key still in place) left the listener with no key at all, and
    # every handshake failing.
    load_key_pair(pair, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), context)
    validity = _validity(pair.cert_pem.decode("latin-1"))
    _publish_expiry(cert, validity)
    _warn_about(cert, key, validity)


def _publish_expiry(cert: Path, validity: tuple[datetime, datetime] | None) -> None:
    gauge = metrics.listener_certificate_expiry
    if validity is not None:
        gauge.labels(str(cert)).set(validity[1].timestamp())
        return
    # Loaded, but its dates could not be read here: no figure rather than the last one's.
    with contextlib.suppress(KeyError):
        gauge.remove(str(cert))


def _warn_about(cert: Path, key: Path, validity: tuple[datetime, datetime] | None) -> None:
    try:
        mode = key.stat().st_mode
    except OSError:
        mode = 0
    if mode & stat.S_IROTH:
        log.warning(
            "The listener's private key file is world-readable; make it 0600 or 0640.",
            key=str(key),
            mode=f"{stat.S_IMODE(mode):04o}",
        )
    if validity is None:
        return
    not_before, not_after = validity
    now = datetime.now(UTC)
    if now >= not_after:
        log.warning(
            "The listener's certificate has expired; clients will refuse it.",
            cert=str(cert),
            not_after=not_after.isoformat(),
        )
    elif now < not_before:
        log.warning(
            "The listener's certificate is not valid yet; clients will refuse it.",
            cert=str(cert),
            not_before=not_before.isoformat(),
        )


_PEM_BEGIN, _PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def _validity(pem: str) -> tuple[datetime, datetime] | None:
    """notBefore and notAfter of the first certificate in PEM text; None if unreadable.

    `pem` is the file decoded as latin-1, as OpenSSL reads it: text around the block, in any
    encoding (a friendlyName, a subject in UTF-8), is skipped; decoded as ASCII, the first byte
    not ASCII hid the dates. Read from the DER: the ssl module has no public way to the dates
    of a certificate it loaded.
    """
    try:
        begin = pem.index(_PEM_BEGIN)
        end = pem.index(_PEM_END, begin) + len(_PEM_END)
        [(_, certificate)] = _der_elements(ssl.PEM_cert_to_DER_cert(pem[begin:end]))
        fields = _der_elements(_der_elements(certificate)[0][1])  # the TBSCertificate's
        if fields[0][0] == 0xA0:  # the optional [0] version
            fields = fields[1:]
        # serialNumber, signature, issuer, then validity: a sequence of two times.
        not_before, not_after = _der_elements(fields[3][1])
        return _der_time(*not_before), _der_time(*not_after)
    except (ValueError, IndexError):  # UnicodeError is a ValueError
        return None


def _der_elements(data: bytes) -> list[tuple[int, bytes]]:
    """The tag and contents of each DER element in `data`, in order."""
    elements: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        tag, length = data[at], data[at + 1]
        at += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[at : at + size], "big")
            at += size
        if at + length > len(data):
            raise ValueError("truncated DER")
        elements.append((tag, data[at : at + length]))
        at += length
    return elements


def _der_time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280 §4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError(f"not a time: tag {tag:#x}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
