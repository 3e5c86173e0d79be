"""`example-config`: print a complete, commented configuration to start from."""

from __future__ import annotations

import argparse
from importlib import resources

__all__ = ["configure", "example_config_text", "main"]


def example_config_text() -> str:
    return resources.files("forwarder").joinpath("data/example-config.yaml").read_text("utf-8")


def configure(parser: argparse.ArgumentParser) -> None:
    """No options: the example goes to stdout."""


def main(args: argparse.Namespace) -> int:
    print(example_config_text(), end="")
    return 0
