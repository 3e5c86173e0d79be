"""Loading a certificate and its private key, for the listener and the outputs alike."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forwarder.files import read_regular_file

__all__ = ["MAX_PEM_BYTES", "KeyPair", "load_key_pair"]

# A certificate chain and its key take a few kilobytes; a CA bundle put in as well, a few
# hundred. Past this the file is no PEM (/dev/zero, a disk image, a log): read whole, it would
# take the memory, twice with the copy, where OpenSSL, which read the path before, streamed it.
MAX_PEM_BYTES = 1 << 20

# Where a memfd can be opened again by path. A module constant so that a test can take it away,
# as a container without /proc does.
_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True)
class KeyPair:
    """A certificate file and its key file, each read once.

    Everything done with the pair (a trial load, the load that counts, its dates) is done with
    these bytes: files replaced in the meantime, by certbot renewing or a secret rotated, cannot
    make one step see one pair and the next another.
    """

    cert: Path
    key: Path | None
    # Not in the repr: a pair that ends up in a log line or a traceback must not carry its key.
    cert_pem: bytes = field(repr=False)
    key_pem: bytes | None = field(repr=False)

    @classmethod
    def read(cls, cert: Path, key: Path | None) -> KeyPair:
        """Raises OSError (naming the file) if one cannot be read, is not a regular file or is
        over `MAX_PEM_BYTES`."""
        cert_pem = read_regular_file(cert, MAX_PEM_BYTES)  # first: its error is named first
        return cls(
            cert, key, cert_pem, None if key is None else read_regular_file(key, MAX_PEM_BYTES)
        )


def load_key_pair(pair: KeyPair, *contexts: ssl.SSLContext) -> None:
    """`load_cert_chain` of the pair into each context in turn, refusing an encrypted key with
    an OSError that says so; the first context that refuses the pair raises, and the contexts
    after it are left alone.

    Without the refusal, OpenSSL asks for the passphrase on the terminal when there is one:
    the daemon would wait there, its event loop stopped, for an answer nobody gives. Without a
    terminal it fails with a bare "Invalid argument".
    """

    def no_passphrase() -> str:
        # The user's file by name: the path OpenSSL was given is a private copy's.
        named = pair.key or pair.cert
        raise OSError(f"the private key is encrypted, and no passphrase can be given: {named}")

    with _private_copies(pair.cert_pem, pair.key_pem) as (cert, key):
        for context in contexts:
            context.load_cert_chain(cert, key, password=no_passphrase)


@contextlib.contextmanager
def _private_copies(cert: bytes, key: bytes | None) -> Iterator[tuple[str, str | None]]:
    """Paths to copies of the two that no other process can open, gone after the block.

    `load_cert_chain` takes paths only, and the user's files are what may change under us.
    In memory where Linux allows (no key written to a disk); else in a temporary directory of
    our own. Neither path shows in errors: Python's OSError from `load_cert_chain` names no
    file, and OpenSSL's SSLError names none either.
    """
    with contextlib.ExitStack() as cleanup:
        try:
            cert_path = _in_memory(cert, cleanup)
            key_path = None if key is None else _in_memory(key, cleanup)
        except OSError:
            cleanup.close()  # the cert's memfd, when only the key's failed
            directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))  # 0700
            cert_path = _in_directory(cert, directory / "cert.pem")
            key_path = None if key is None else _in_directory(key, directory / "key.pem")
        yield cert_path, key_path


def _in_memory(data: bytes, cleanup: contextlib.ExitStack) -> str:
    """Raises OSError where there is no memfd_create (not Linux, an old libc, a seccomp filter
    refusing it) or no /proc to open one by."""
    if not hasattr(os, "memfd_create"):
        raise OSError("memfd_create is not available")
    descriptor = os.memfd_create("canary-forwarder-pem", os.MFD_CLOEXEC)
    cleanup.callback(os.close, descriptor)
    _write_all(descriptor, data)
    path = _PROC_FD / str(descriptor)
    path.stat()  # /proc not mounted: the fallback, rather than an error naming this path
    return str(path)


def _in_directory(data: bytes, path: Path) -> str:
    # O_EXCL: the directory is new and ours, so the name cannot be anyone else's file.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(descriptor, data)
    finally:
        os.close(descriptor)
    return str(path)


def _write_all(descriptor: int, data: bytes) -> None:
    # os.write may write less than it is given.
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]
