from __future__ import annotations

import asyncio
import contextlib
import os
import select
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from forwarder.app import build_app
from forwarder.ingest.tls import reload_certificates, server_context
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from forwarder.telemetry import metrics
from tests.helpers import finishes_within, sample


def issue(
    authority: trustme.CA, directory: Path, *, not_after: datetime | None = None
) -> tuple[Path, Path]:
    issued = authority.issue_cert("127.0.0.1", not_after=not_after)
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return cert, key


def client_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


async def post(port: int, context: ssl.SSLContext) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{port}/canary",
            data=sample("test_event"),
            headers={"Content-Type": "application/json"},
            ssl=context,
        ) as response,
    ):
        return response.status


async def test_webhook_over_tls_and_certificate_reload(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    first_ca, renewed_ca = trustme.CA(), trustme.CA()
    cert, key = issue(first_ca, tmp_path)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    context = server_context(settings.listen)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2

    pipeline = await Pipeline.start(settings)
    runner = web.AppRunner(build_app(pipeline))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await post(port, client_context(first_ca)) == 200
        # A client that does not trust the certificate never gets to post.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(port, client_context(renewed_ca))

        # Renewal: new files at the same paths, reloaded into the running listener.
        issue(renewed_ca, tmp_path)
        reload_certificates(context, settings.listen)
        assert await post(port, client_context(renewed_ca)) == 200

        # A broken renewal is refused and the current certificate stays in use.
        cert.write_text("not a certificate")
        with pytest.raises(ssl.SSLError):
            reload_certificates(context, settings.listen)
        assert await post(port, client_context(renewed_ca)) == 200
    finally:
        await runner.cleanup()
        await pipeline.stop(1)


def test_no_tls_configured_means_no_context(make_settings: Callable[..., Settings]) -> None:
    assert server_context(make_settings().listen) is None


async def serving(context: ssl.SSLContext, pipeline: Pipeline) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(build_app(pipeline))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner, runner.addresses[0][1]


async def test_a_key_that_does_not_match_is_refused_and_the_old_certificate_stays(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """A renewal that replaced the certificate but not yet the key (a new key per renewal, as
    certbot makes, with the files swapped one at a time) must not leave the listener without a
    key: it used to keep the new certificate and drop the old key, failing every handshake."""
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    context = server_context(settings.listen)
    assert context is not None
    pipeline = await Pipeline.start(settings)
    runner, port = await serving(context, pipeline)
    try:
        authority.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(cert)
        with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
            reload_certificates(context, settings.listen)
        assert await post(port, client_context(authority)) == 200
    finally:
        await runner.cleanup()
        await pipeline.stop(1)


def encrypted(issued: trustme.LeafCert, path: Path) -> None:
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )


_ON_A_TERMINAL = """
import os, sys
os.open(sys.argv[1], os.O_RDWR)  # a session leader's first terminal becomes its own
cert, key = sys.argv[2], sys.argv[3]
try:
"""
# The listener's certificate, and an output's client certificate.
LOADS = {
    "listener": """
    from forwarder.ingest.tls import server_context
    from forwarder.settings import parse_settings
    config = {
        "listen": {"tls": {"cert": cert, "key": key}},
        "outputs": [{"name": "m", "type": "memory"}],
    }
    server_context(parse_settings(config).listen)
""",
    "output": """
    from forwarder.outputs._tls import TlsClientConfig, TlsFilesUnusable
    try:
        TlsClientConfig(cert_file=cert, key_file=key).context()
    except TlsFilesUnusable as exc:
        raise OSError(str(exc)) from None
""",
}
_REFUSED = """
except OSError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("side", sorted(LOADS))
def test_an_encrypted_key_is_refused_at_once_even_from_a_terminal(
    tmp_path: Path, side: str
) -> None:
    """OpenSSL asks for a key's passphrase on the terminal if there is one: a daemon started
    from a shell (or `docker run -it`), or reloading there, stopped for an answer. Now the key
    is refused, with a message that says why, terminal or not: the listener's key, and the key
    of an output's client certificate."""
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    encrypted(issued, key)
    script = _ON_A_TERMINAL + LOADS[side] + _REFUSED
    terminal, child_end = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", script, os.ttyname(child_end), str(cert), str(key)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(child_end)
    shown = b""
    try:
        deadline = time.monotonic() + 20
        # Until the child is done, or OpenSSL prompts on its terminal (and waits there).
        while child.poll() is None and b"pass phrase" not in shown:
            assert time.monotonic() < deadline, shown
            if select.select([terminal], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):  # EIO once the child is gone
                    shown += os.read(terminal, 1024)
    finally:
        child.kill()
        output = child.communicate()[0].decode()
        os.close(terminal)
    assert b"pass phrase" not in shown, shown
    assert "refused:" in output and "the private key is encrypted" in output, output


def test_an_expired_certificate_or_a_key_all_may_read_is_loaded_with_a_warning(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    key.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        assert server_context(settings.listen) is not None
    assert logs == []

    expired = authority.issue_cert(
        "127.0.0.1",
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2021, 1, 1, tzinfo=UTC),
    )
    expired.cert_chain_pems[0].write_to_path(cert)
    expired.private_key_pem.write_to_path(key)
    key.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        assert server_context(settings.listen) is not None
    assert [(line["log_level"], line["event"]) for line in logs] == [
        ("warning", "The listener's private key file is world-readable; make it 0600 or 0640."),
        ("warning", "The listener's certificate has expired; clients will refuse it."),
    ]
    assert logs[0]["mode"] == "0644"
    assert logs[1]["not_after"] == "2021-01-01T00:00:00+00:00"

    future = authority.issue_cert("127.0.0.1", not_before=datetime(2090, 1, 1, tzinfo=UTC))
    future.cert_chain_pems[0].write_to_path(cert)
    future.private_key_pem.write_to_path(key)
    key.chmod(0o600)
    context = server_context(settings.listen)
    assert context is not None
    with structlog.testing.capture_logs() as logs:
        reload_certificates(context, settings.listen)
    assert [line["event"] for line in logs] == [
        "The listener's certificate is not valid yet; clients will refuse it."
    ]


async def test_protocol_settings_of_the_listener(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """TLS 1.2 at least, Python's default ciphers, no compression, no renegotiation (OpenSSL
    1.1.1 grants a client's by default), and HTTP/1.1: a client offering h2 does not get it."""
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    context = server_context(settings.listen)
    assert context is not None
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.get_ciphers() == ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()

    pipeline = await Pipeline.start(settings)
    runner, port = await serving(context, pipeline)
    try:
        offering_h2 = client_context(authority)
        offering_h2.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=offering_h2, server_hostname="127.0.0.1"
        )
        tls = writer.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        assert tls.compression() is None
        writer.close()
        await writer.wait_closed()

        old = client_context(authority)
        with warnings.catch_warnings(category=DeprecationWarning, action="ignore"):
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        # Refused with a protocol_version alert, or the connection reset just after it.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="127.0.0.1")
    finally:
        await runner.cleanup()
        await pipeline.stop(1)


def served_certificate(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """The certificate (DER) a client gets in a handshake with `server`, over memory buffers."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_hostname="127.0.0.1")
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    pending = [client_end, server_end]
    for _ in range(5):  # each turn passes one flight on; TLS 1.2 needs four at most
        for end in list(pending):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
                pending.remove(end)
    assert not pending
    served = client_end.getpeercert(binary_form=True)
    assert served is not None
    return served


@pytest.mark.parametrize(
    ("replaced_after", "replaced"),
    [
        # The new certificate in place, its key not yet: the pair the trial load refuses.
        pytest.param(1, ("cert",), id="the cert after the trial load"),
        pytest.param(2, ("cert", "key"), id="both after the live load"),
    ],
)
def test_files_replaced_during_a_reload_do_not_mix_with_the_pair_it_read(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    replaced_after: int,
    replaced: tuple[str, ...],
) -> None:
    """A renewal (certbot, a secret rotated) can swap the files while a reload is reading them.
    Each step read them again: the live load could get the new certificate with the old key
    after the trial had passed the old pair (and fail, leaving the listener with no key), and
    the expiry exported could be the new certificate's while the old one was served."""
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path, not_after=datetime(2031, 2, 1, tzinfo=UTC))
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    context = server_context(settings.listen)
    assert context is not None

    read = datetime(2031, 5, 1, 12, tzinfo=UTC)
    issue(authority, tmp_path, not_after=read)
    read_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    renewal = tmp_path / "renewal"
    renewal.mkdir()
    issue(authority, renewal, not_after=datetime(2031, 8, 1, 12, tzinfo=UTC))

    load_cert_chain = ssl.SSLContext.load_cert_chain
    loads = 0

    def load_then_renew(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        nonlocal loads
        load_cert_chain(self, *args, **kwargs)
        loads += 1
        if loads == replaced_after:  # the renewal lands just after this load
            for name in replaced:
                (renewal / f"{name}.pem").replace(tmp_path / f"{name}.pem")

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_then_renew)
    reload_certificates(context, settings.listen)
    monkeypatch.undo()
    assert loads >= replaced_after  # the renewal did land in the middle of the reload

    assert served_certificate(context, client_context(authority)) == read_der
    expiry = metrics.REGISTRY.get_sample_value(
        "canary_forwarder_listener_certificate_expiry_timestamp_seconds", {"cert": str(cert)}
    )
    assert expiry == read.timestamp()


@pytest.mark.parametrize("which", ["cert", "key"])
@pytest.mark.parametrize("kind", ["a device that never ends", "a FIFO with no writer"])
def test_a_path_that_is_no_regular_file_is_refused_at_reload_and_the_old_certificate_stays(
    tmp_path: Path, make_settings: Callable[..., Settings], which: str, kind: str
) -> None:
    """/dev/zero as the key: OpenSSL, reading the path, refused it at once; read whole into
    memory, it took all there was, then the daemon. A FIFO blocked the reload's open, and the
    event loop with it, until something wrote to it."""
    authority = trustme.CA()
    cert, key = issue(authority, tmp_path)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    context = server_context(settings.listen)
    assert context is not None
    served = served_certificate(context, client_context(authority))

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    wrong, described = ("/dev/zero", "a character device") if "device" in kind else (fifo, "a FIFO")
    files = {"cert": str(cert), "key": str(key), which: str(wrong)}
    mistaken = make_settings(listen={"tls": files})

    def reload() -> None:
        with pytest.raises(OSError, match=rf"not a regular file \({described}\): '{wrong}'"):
            reload_certificates(context, mistaken.listen)

    finishes_within(10, reload, fifo)
    assert served_certificate(context, client_context(authority)) == served
