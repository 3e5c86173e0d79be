"""The `canary-forwarder` command. Each subcommand is a module with `configure` and `main`.

Exit codes: 0 success; 1 a runtime failure (the daemon could not start, a request failed);
2 wrong usage; 78 (EX_CONFIG) an invalid configuration.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

from forwarder import __version__

__all__ = ["COMMANDS", "hangup_held", "main"]

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: Mapping[str, tuple[str, str]] = {
    "run": ("forwarder.cli.run", "run the daemon (the built-in default without -c)"),
    "validate": ("forwarder.cli.validate", "check a configuration without starting anything"),
    "send-test": ("forwarder.cli.send_test", "post the console's test event to a running daemon"),
    "render": ("forwarder.cli.render", "print what a payload becomes in a format"),
    "dead-letters": ("forwarder.cli.dead_letters", "list, show, replay or purge dead letters"),
    "store": ("forwarder.cli.store", "inspect the durable store"),
    "example-config": ("forwarder.cli.example_config", "print a complete, commented config"),
    "schema": ("forwarder.cli.schema", "print the JSON Schema of the configuration"),
}


# A SIGHUP that reaches `run` before its event loop handles signals would kill it (the default
# action), and systemd counts that as a clean exit, so it would not restart it: logrotate or an
# operator may send one while the daemon starts. It is held from the first moment and becomes a
# reload once the loop takes over.
_held_hangups: list[int] = []


def _hold_hangup(signum: int, frame: FrameType | None) -> None:
    _held_hangups.append(signum)


def hangup_held() -> bool:
    """Whether a SIGHUP came before `run` handled signals itself."""
    return bool(_held_hangups)


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
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["run"]:
        # Before anything slow: importing the commands below takes a good part of a second.
        signal.signal(signal.SIGHUP, _hold_hangup)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = importlib.import_module(args.module).main(args)
    return code
