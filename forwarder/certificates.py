"""Loading a certificate and its private key, for the listener and the outputs alike."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["load_key_pair"]


def load_key_pair(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """`context.load_cert_chain`, refusing an encrypted key with an OSError that says so.

    Without the refusal, OpenSSL asks for the passphrase on the terminal when there is one:
    the daemon would wait there, its event loop stopped, for an answer nobody gives. Without a
    terminal it fails with a bare "Invalid argument".
    """

    def no_passphrase() -> str:
        raise OSError(
            f"the private key is encrypted, and no passphrase can be given: {key or cert}"
        )

    context.load_cert_chain(cert, key, password=no_passphrase)
