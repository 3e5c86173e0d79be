"""`validate`: check a configuration without starting anything; `--healthcheck` also probes
every output the way a real send would.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from forwarder.cli._common import add_config_argument, exit_invalid, load_or_exit
from forwarder.ingest.tls import server_context
from forwarder.outputs.base import Output
from forwarder.pipeline import healthcheck_problem
from forwarder.registry import output_class
from forwarder.settings import ListenConfig, Settings

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=True)
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="also connect to every output and check it would accept a send",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    tls_problem = _listener_tls_problem(settings.listen)
    if tls_problem is not None:
        exit_invalid(args.config, [tls_problem])
    for spec in settings.outputs:
        print(f"output {spec.name}: type {spec.config.type}, format {spec.format.type}")
    print(f"{args.config}: configuration is valid")
    if args.healthcheck:
        return asyncio.run(_healthchecks(settings))
    return 0


def _listener_tls_problem(listen: ListenConfig) -> str | None:
    """Why the listener's certificate and key cannot be loaded, as `run` loads them; None if
    they can (or there is no `listen.tls`).

    Without this, a missing or unreadable file passed `validate`, and `run` then failed with
    "Cannot listen." and exit status 1, which systemd retries until it gives up.
    """
    if listen.tls is None:
        return None
    cert, key = listen.tls.cert, listen.tls.key
    try:
        server_context(listen)
    except OSError as exc:  # ssl.SSLError is one too
        # A file that cannot be read is named in the error. OpenSSL does not say which of the
        # two it could not use (a file that is not PEM, a key that does not match), and an
        # encrypted key's refusal names the key in its text.
        for option, path in (("cert", cert), ("key", key)):
            if exc.filename == str(path) and exc.strerror:
                return f"listen.tls.{option}: cannot read {path}: {exc.strerror}"
        return f"listen.tls: cannot load {cert} with {key}: {exc}"
    except ValueError as exc:  # a NUL in a path
        return f"listen.tls: {exc}"
    return None


async def _healthchecks(settings: Settings) -> int:
    failed = 0
    for spec in settings.outputs:
        output: Output[Any] = output_class(spec.config.type)(spec.config)
        try:
            await output.start_for_healthcheck()
            problem = await healthcheck_problem(output.healthcheck)
        except OSError as exc:
            problem = str(exc)
        finally:
            await output.aclose()
        if problem is None:
            print(f"output {spec.name}: healthy")
        else:
            failed += 1
            print(f"output {spec.name}: UNHEALTHY: {problem}")
    return 1 if failed else 0
