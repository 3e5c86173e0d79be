from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import trustme
from aiohttp import web

from forwarder.app import build_app
from forwarder.cli.run import _server_tls
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.helpers import sample


async def test_webhook_over_tls(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(cert)
    server_cert.private_key_pem.write_to_path(key)
    settings = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}})
    server_context = _server_tls(settings)
    assert server_context is not None
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2

    pipeline = await Pipeline.start(settings)
    runner = web.AppRunner(build_app(pipeline))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"https://127.0.0.1:{port}/canary",
                data=sample("test_event"),
                headers={"Content-Type": "application/json"},
                ssl=client_context,
            ) as response:
                assert response.status == 200
                assert (await response.json())["kind"] == "test"
            # A client that does not trust the certificate never gets to post.
            try:
                async with session.post(f"https://127.0.0.1:{port}/canary", data=b"{}"):
                    raise AssertionError("an untrusted certificate was accepted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        await runner.cleanup()
        await pipeline.stop(1)
