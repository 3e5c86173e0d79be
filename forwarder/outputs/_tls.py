"""TLS client options shared by every network output. Verification is on unless turned off."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["TlsClientConfig"]


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
        """A fresh client context; called again on reload so renewed files are read."""
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            context.load_cert_chain(
                str(self.cert_file), str(self.key_file) if self.key_file is not None else None
            )
        return context
