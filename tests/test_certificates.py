"""The shared loader: each file read once, loaded from a copy only this process can open."""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from forwarder import certificates
from forwarder.certificates import KeyPair, load_key_pair
from tests.ingest.test_tls import encrypted, issue


def watching_loads(monkeypatch: pytest.MonkeyPatch, look: Callable[[str], None]) -> list[str]:
    """The paths each `load_cert_chain` is given, each looked at (by `look`) while it loads."""
    seen: list[str] = []
    load_cert_chain = ssl.SSLContext.load_cert_chain

    def watched(self: ssl.SSLContext, certfile: str, keyfile: str | None, **kwargs: Any) -> None:
        for path in (certfile, keyfile):
            if path is not None:
                look(path)
                seen.append(path)
        load_cert_chain(self, certfile, keyfile, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", watched)
    return seen


def server() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def test_the_pair_is_loaded_from_memory_and_the_descriptors_closed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = issue(trustme.CA(), tmp_path)
    targets: list[str] = []
    seen = watching_loads(monkeypatch, lambda path: targets.append(os.readlink(path)))
    load_key_pair(KeyPair.read(cert, key), server(), server())
    monkeypatch.undo()
    # Two loads from the same two copies: the cert's, then the key's, twice.
    assert len(seen) == 4 and seen[:2] == seen[2:]
    assert all(path.startswith("/proc/self/fd/") for path in seen)
    assert all(target.startswith("/memfd:canary-forwarder-pem") for target in targets)
    for path in seen[:2]:
        with pytest.raises(OSError):  # EBADF
            os.fstat(int(Path(path).name))


def take_away(missing: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the host lack `missing` (`memfd_create` or `/proc`), as some containers do."""
    if missing == "memfd_create":
        monkeypatch.delattr(os, "memfd_create", raising=False)
    elif missing == "/proc":
        monkeypatch.setattr(certificates, "_PROC_FD", tmp_path / "no-proc")


@pytest.mark.parametrize("missing", ["memfd_create", "/proc"])
def test_without_memfd_or_proc_a_private_temporary_file_is_used_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    take_away(missing, monkeypatch, tmp_path)
    cert, key = issue(trustme.CA(), tmp_path)
    modes: list[tuple[int, int]] = []

    def look(path: str) -> None:
        modes.append((os.stat(path).st_mode, os.stat(Path(path).parent).st_mode))

    seen = watching_loads(monkeypatch, look)
    load_key_pair(KeyPair.read(cert, key), server())
    monkeypatch.undo()
    assert len(seen) == 2 and str(cert) not in seen and str(key) not in seen
    assert [(stat.S_IMODE(file), stat.S_IMODE(directory)) for file, directory in modes] == [
        (0o600, 0o700),
        (0o600, 0o700),
    ]
    assert not Path(seen[0]).parent.exists()


def direct_load_error(cert: Path, key: Path) -> str:
    """What loading the user's files by their paths says."""
    with pytest.raises(ssl.SSLError) as refused:
        server().load_cert_chain(cert, key)
    return str(refused.value)


@pytest.mark.parametrize("missing", ["nothing", "memfd_create"])
def test_errors_name_the_users_files_not_the_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    take_away(missing, monkeypatch, tmp_path)  # copies in memory, or in a temporary file
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path)
    missing, not_pem = tmp_path / "missing.pem", tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    other_key = tmp_path / "other-key.pem"
    authority.issue_cert("127.0.0.1").private_key_pem.write_to_path(other_key)
    locked = tmp_path / "locked-key.pem"
    encrypted(authority.issue_cert("127.0.0.1"), locked)

    def error(cert: Path, key: Path) -> str:
        with pytest.raises(OSError) as refused:  # ssl.SSLError is an OSError
            load_key_pair(KeyPair.read(cert, key), server())
        return str(refused.value)

    assert error(missing, key) == f"[Errno 2] No such file or directory: '{missing}'"
    assert error(cert, missing) == f"[Errno 2] No such file or directory: '{missing}'"
    assert error(tmp_path, key) == f"[Errno 22] not a regular file (a directory): '{tmp_path}'"
    assert error(cert, locked) == (
        f"the private key is encrypted, and no passphrase can be given: {locked}"
    )
    # OpenSSL's own errors name no file; they are what loading the user's files says.
    assert error(not_pem, key) == direct_load_error(not_pem, key)
    assert error(cert, not_pem) == direct_load_error(cert, not_pem)
    assert "KEY_VALUES_MISMATCH" in error(cert, other_key)
    assert error(cert, other_key) == direct_load_error(cert, other_key)


def test_the_key_is_not_in_the_repr(tmp_path: Path) -> None:
    cert, key = issue(trustme.CA(), tmp_path)
    pair = KeyPair.read(cert, key)
    assert b"PRIVATE KEY" in (pair.key_pem or b"")
    assert "PRIVATE" not in repr(pair) and str(key) in repr(pair)


def test_a_file_too_large_for_a_pem_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    # OpenSSL, given the path, streamed such a file and refused it; read whole into memory (and
    # copied again into a memfd), a disk image or a log put in by mistake takes the memory.
    cert, key = issue(trustme.CA(), tmp_path)
    huge = tmp_path / "huge.pem"
    with huge.open("wb") as sparse:
        sparse.truncate(64 * certificates.MAX_PEM_BYTES)
    for pair in ((huge, key), (cert, huge)):
        with pytest.raises(OSError) as refused:
            KeyPair.read(*pair)
        assert str(refused.value) == (
            f"[Errno 27] larger than {certificates.MAX_PEM_BYTES} bytes: '{huge}'"
        )
    at_the_bound = tmp_path / "at-the-bound.pem"
    at_the_bound.write_bytes(cert.read_bytes().ljust(certificates.MAX_PEM_BYTES, b"\n"))
    load_key_pair(KeyPair.read(at_the_bound, key), server())
