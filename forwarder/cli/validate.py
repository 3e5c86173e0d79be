"""`validate`: check a configuration without starting anything; `--healthcheck` also probes
every output the way a real send would.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from forwarder.cli._common import add_config_argument, load_or_exit
from forwarder.outputs.base import Output
from forwarder.pipeline import healthcheck_problem
from forwarder.registry import output_class
from forwarder.settings import Settings

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
    for spec in settings.outputs:
        print(f"output {spec.name}: type {spec.config.type}, format {spec.format.type}")
    print(f"{args.config}: configuration is valid")
    if args.healthcheck:
        return asyncio.run(_healthchecks(settings))
    return 0


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
