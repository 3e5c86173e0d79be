"""Start the real daemon with test-only fault injection applied first (never used in production).

`python -c <BOOT> <patches-json> run -c CONFIG ...` runs `forwarder.cli.main` unchanged after
applying the patches named in the JSON object:

- `"disk_limit_file": PATH`: before every write transaction the store reads PATH (a number of
  pages) and sets SQLite's `PRAGMA max_page_count` to it, so a test can make the store's "disk"
  full and later free space again, from outside the process. SQLite then fails writes that need
  a new page with SQLITE_FULL ("database or disk is full"), exactly as on a full disk.
- `"constants": {"module.NAME": value}`: set module-level constants (shorter timeouts), so an
  in-suite test does not wait out a production default.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["boot_command", "main"]

_ROOT = Path(__file__).resolve().parents[2]


def boot_command(patches: dict[str, Any]) -> list[str]:
    """The argv prefix that runs the daemon's command line with `patches` applied."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from tests.reliability._boot import main; "
        "raise SystemExit(main(sys.argv[2], sys.argv[3:]))"
    )
    return [sys.executable, "-c", code, str(_ROOT), json.dumps(patches)]


def _limit_disk(limit_file: Path) -> None:
    from forwarder.store import database

    original = database.Database._transaction

    @contextlib.contextmanager
    def limited(self: database.Database) -> Iterator[sqlite3.Connection]:
        try:
            pages = int(limit_file.read_text().strip())
        except (OSError, ValueError):
            pages = 0
        if pages > 0:
            self._db.execute(f"PRAGMA max_page_count={pages}")
        with original(self) as db:
            yield db

    database.Database._transaction = limited  # type: ignore[method-assign]


def main(patches_json: str, argv: Sequence[str]) -> int:
    patches: dict[str, Any] = json.loads(patches_json)
    if "disk_limit_file" in patches:
        _limit_disk(Path(patches["disk_limit_file"]))
    for dotted, value in patches.get("constants", {}).items():
        module_name, _, name = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"boot: {module_name} has no {name} to patch")
        setattr(module, name, value)
    from forwarder.cli import main as cli_main

    return cli_main(list(argv))
