"""Secrets never reach a log: a realistic run, all of its output collected and searched.

The daemon runs at debug level with every kind of secret configured: the webhook's header
secret, basic credentials and secret path; a HEC token; an Elasticsearch API key and basic
credentials; and two outputs whose credentials the receivers refuse (401/403, logged as needing
an operator). Clients post with each method and fail with wrong credentials; the configuration
is reloaded with new secrets; `validate --healthcheck` and `dead-letters list` run beside it.
No configured secret (`Settings.secrets()`, before and after the reload), no encoded form of
one (base64 of basic credentials) and no wrong guess a client sent appears anywhere in the
output.
"""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path
from typing import Any

import pytest

from forwarder.settings import load_settings
from tests.peers.fake_es import FakeEs, encode_api_key
from tests.peers.fake_hec import FakeHec
from tests.reliability._support import (
    fast_retry,
    incident_body,
    session,
    wait_until,
)
from tests.reliability.conftest import DaemonFactory

pytestmark = pytest.mark.reliability

HEADER_SECRET = "hdr-Secret-0f3c9a71e2b4d658"
BASIC_USER, BASIC_PASSWORD = "canary-console", "basic-Pass-7a1e93c04d2b"
PATH_SECRET = "pathSecret-5d8c2e61f0a94b37"
HEC_TOKEN = "6c1b7f0e-3a52-4d89-9e17-2f4a6b8c0d31"
HEC_WRONG_TOKEN = "00000000-dead-4bad-8bad-000000000001"
HEC_WRONG_TOKEN_AFTER_RELOAD = "00000000-dead-4bad-8bad-000000000002"
ES_KEY = encode_api_key("kId41", "esKey-b5e0c7d93a1f2468")
ES_WRONG_KEY = encode_api_key("kId99", "esKey-wrong-0000000000")
ES_USER, ES_PASSWORD = "es-writer", "esPass-c49d1e7a0b3f"
WRONG_GUESSES = ["hdr-Secret-0f3c9a71e2b4d659", "basic-Pass-guess-000000", "pathSecret-guess-00000"]


def config(workdir: Path, hec: FakeHec, es: FakeEs, hec_wrong_token: str) -> dict[str, Any]:
    quick = fast_retry(retry={"initial_backoff_secs": 0.05, "max_backoff_secs": 0.3})
    return {
        "listen": {
            "auth": {
                "header": "X-Canary-Token",
                "secret": HEADER_SECRET,
                "basic": {"username": BASIC_USER, "password": BASIC_PASSWORD},
                "secret_path": PATH_SECRET,
            }
        },
        "outputs": [
            {"name": "hec", "type": "splunk_hec", "url": hec.url, "token": HEC_TOKEN, **quick},
            {
                "name": "hec_refused",
                "type": "splunk_hec",
                "url": hec.url,
                "token": hec_wrong_token,
                **quick,
            },
            {"name": "es_key", "type": "elasticsearch", "url": es.url, "api_key": ES_KEY, **quick},
            {
                "name": "es_basic",
                "type": "elasticsearch",
                "url": es.url,
                "username": ES_USER,
                "password": ES_PASSWORD,
                **quick,
            },
            {
                "name": "es_refused",
                "type": "elasticsearch",
                "url": es.url,
                "api_key": ES_WRONG_KEY,
                **quick,
            },
            {"name": "file", "type": "file", "path": str(workdir / "out.jsonl"), **quick},
        ],
    }


def encoded_forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode()]


async def test_no_secret_or_token_appears_in_any_log(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    async with (
        FakeHec(HEC_TOKEN) as hec,
        FakeEs(api_keys=[ES_KEY], users={ES_USER: ES_PASSWORD}) as es,
    ):
        daemon = daemons(
            config(tmp_path, hec, es, HEC_WRONG_TOKEN),
            extra_args=["--log-level", "debug"],
            graceful_secs=2,
        )
        secrets = set(load_settings(daemon.config_path, environ={}).secrets())
        await daemon.start()
        basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        attempts = [
            (daemon.webhook_url, {"X-Canary-Token": HEADER_SECRET}, 200),
            (daemon.webhook_url, {"Authorization": f"Basic {basic}"}, 200),
            (f"{daemon.webhook_url}/{PATH_SECRET}", {}, 200),
            (daemon.webhook_url, {"X-Canary-Token": WRONG_GUESSES[0]}, 401),
            (
                daemon.webhook_url,
                {
                    "Authorization": "Basic "
                    + base64.b64encode(f"{BASIC_USER}:{WRONG_GUESSES[1]}".encode()).decode()
                },
                401,
            ),
            (f"{daemon.webhook_url}/{WRONG_GUESSES[2]}", {}, 401),
        ]
        async with session() as client:
            for url, headers, expected in attempts:
                _, body = incident_body()
                headers = {"Content-Type": "application/json", **headers}
                async with client.post(url, data=body, headers=headers) as answer:
                    assert answer.status == expected, (url, await answer.text())

        def refused_logged() -> bool:
            lines = daemon.find_logs(
                "Output needs an operator (credentials or configuration); events are kept.",
                level="error",
            )
            return {"hec_refused", "es_refused"} <= {line.get("output") for line in lines}

        await wait_until(refused_logged, timeout=20, what="both refused outputs to log an ERROR")
        await wait_until(
            lambda: (len(hec.events) >= 3 and len(es.all_ids()) >= 3) or None,
            timeout=20,
            what="deliveries to HEC and Elasticsearch",
        )

        # Reload with new secrets: the old ones and the new ones must both stay out of the logs.
        daemon.write_config(config(tmp_path, hec, es, HEC_WRONG_TOKEN_AFTER_RELOAD))
        secrets |= set(load_settings(daemon.config_path, environ={}).secrets())
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("Configuration reloaded.", timeout=20)
        await wait_until(
            lambda: (
                len(
                    daemon.find_logs(
                        "Output needs an operator (credentials or configuration); events are kept.",
                        level="error",
                    )
                )
                >= 3
                or None
            ),
            timeout=20,
            what="the refused output to fail again after the reload",
        )
        tools = await asyncio.to_thread(daemon.cli_output, "validate", "--healthcheck")
        assert "hec_refused: UNHEALTHY" in tools
        tools += await asyncio.to_thread(daemon.cli_output, "dead-letters", "list")
        assert await daemon.stop() == 0

    logs = "\n".join(
        (daemon.workdir / f"daemon-{run}.log").read_text("utf-8", "replace")
        for run in range(1, daemon.runs + 1)
    )
    everything = logs + "\n" + tools
    assert len(everything) > 5_000, "too little output to prove anything"
    assert {HEADER_SECRET, BASIC_PASSWORD, PATH_SECRET, HEC_TOKEN, ES_KEY, ES_PASSWORD} <= secrets
    forbidden = {form for secret in secrets for form in encoded_forms(secret)}
    forbidden |= {basic, *WRONG_GUESSES, HEC_WRONG_TOKEN_AFTER_RELOAD}
    leaked = sorted(secret for secret in forbidden if secret in everything)
    assert not leaked, f"secrets in the logs: {leaked}"
