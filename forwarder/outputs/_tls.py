"""TLS client options shared by every network output. Verification is on unless turned off."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from forwarder.certificates import KeyPair, load_key_pair
from forwarder.files import open_regular_file

__all__ = ["TlsClientConfig", "TlsFilesUnusable"]

_OPENSSL_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class TlsFilesUnusable(Exception):
    """A configured CA, certificate or key file cannot be loaded; the message names the option,
    the file and why. Waiting does not help: an operator has to fix the file or the option."""


class TlsClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    """PEM bundle of CAs to trust instead of the system store."""
    cert_file: Path | None = None
    """PEM client certificate (with chain), for servers that require one."""
    key_file: Path | None = None
    """PEM private key of the client certificate."""
    server_name: str | None = None
    """Name to check the server's certificate against (and send as SNI) instead of the host."""
    verify: bool = True
    """Verify the server's certificate and name. Turning it off invites interception."""

    @model_validator(mode="after")
    def _key_with_cert(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self

    def context(self) -> ssl.SSLContext:
        """A fresh client context; called again on reload so renewed files are read.

        Raises `TlsFilesUnusable` when a configured file cannot be read or loaded.
        """
        self._check_readable()
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (OSError, ValueError) as exc:
            source = (
                f"tls.ca_file {self.ca_file}" if self.ca_file is not None else "the system CA store"
            )
            raise TlsFilesUnusable(_unusable(source, exc)) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            try:
                load_key_pair(KeyPair.read(self.cert_file, self.key_file), context)
            except (OSError, ValueError) as exc:
                source = f"tls.cert_file {self.cert_file}"
                if self.key_file is not None:
                    source += f" with tls.key_file {self.key_file}"
                raise TlsFilesUnusable(_unusable(source, exc)) from exc
        return context

    def _check_readable(self) -> None:
        # OpenSSL reports a missing or unreadable file without its name; opening each file
        # first tells the operator which one it is.
        files = {
            "tls.ca_file": self.ca_file,
            "tls.cert_file": self.cert_file,
            "tls.key_file": self.key_file,
        }
        for option, path in files.items():
            if path is None:
                continue
            try:
                # A FIFO or a device would block or never end, and this runs on the event loop.
                with open_regular_file(path):
                    pass
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                raise TlsFilesUnusable(_unusable(f"{option} {path}", exc)) from exc


def _unusable(source: str, error: OSError | ValueError | str) -> str:
    if isinstance(error, ssl.SSLError):
        why = _OPENSSL_SOURCE_LINE.sub("", str(error))
    elif isinstance(error, OSError) and error.strerror:
        why = error.strerror
    else:
        why = str(error)
    return f"cannot load the TLS files: {source}: {why}"
