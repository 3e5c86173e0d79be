"""The `canary-forwarder` command. Each subcommand is a module with `configure` and `main`.

Exit codes: 0 success; 1 a runtime failure (the daemon could not start, a request failed);
2 wrong usage; 78 (EX_CONFIG) an invalid configuration.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence

from forwarder import __version__

__all__ = ["COMMANDS", "main"]

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: Mapping[str, tuple[str, str]] = {
    "run": ("forwarder.cli.run", "run the daemon (the built-in default without -c)"),
    "validate": ("forwarder.cli.validate", "check a configuration without starting anything"),
    "send-test": ("forwarder.cli.send_test", "post the console's test event to a running daemon"),
    "render": ("forwarder.cli.render", "print what a payload becomes in a format"),
    "dead-letters": ("forwarder.cli.dead_letters", "list, replay or purge dead letters"),
    "store": ("forwarder.cli.store", "inspect the durable store"),
    "example-config": ("forwarder.cli.example_config", "print a complete, commented config"),
    "schema": ("forwarder.cli.schema", "print the JSON Schema of the configuration"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canary-forwarder",
        description="Receive Thinkst Canary webhooks and forward them to your SIEM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module_name)
        importlib.import_module(module_name).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = importlib.import_module(args.module).main(args)
    return code
