"""A fake peer in its own process, for tests and benchmarks whose subject must not share the
peer's event loop (restarts, outages, load)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["peer_process"]

_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def peer_process(module: str, *args: str, timeout: float = 10.0) -> Iterator[str]:
    """Run `python -m <module> --port 0 <args>` and yield its base URL; stop it after."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the peer prints its port once it listens
        if not line.strip().isdigit():
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
