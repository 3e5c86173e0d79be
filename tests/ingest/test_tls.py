from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from forwarder.app import build_app
from forwarder.ingest.tls import reload_certificates, server_context
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.helpers import sample


def issue(authority: trustme.CA, directory: Path) -> tuple[Path, Path]:
    issued = authority.issue_cert("127.0.0.1")
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
