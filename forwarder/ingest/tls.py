"""The listener's TLS: one server context for the life of the process, certificates reloadable.

Reloading loads the certificate files again into the same context: new connections get the
renewed certificate, open ones keep theirs, and a bad file leaves the old certificate in use.
"""

from __future__ import annotations

import ssl

from forwarder.settings import ListenConfig

__all__ = ["reload_certificates", "server_context"]


def server_context(listen: ListenConfig) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context with the configured certificate, or None without `tls`."""
    if listen.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    reload_certificates(context, listen)
    return context


def reload_certificates(context: ssl.SSLContext, listen: ListenConfig) -> None:
    """Read the certificate and key files again; raises (leaving the old ones) if they are bad."""
    if listen.tls is not None:
        context.load_cert_chain(str(listen.tls.cert), str(listen.tls.key))
