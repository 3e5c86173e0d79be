"""Small helpers for tests: sample payloads and reaching into a running pipeline."""

from __future__ import annotations

from pathlib import Path

from forwarder.outputs.memory import MemoryOutput
from forwarder.pipeline import Pipeline

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> bytes:
    """The raw bytes of tests/samples/<name>.json."""
    return (SAMPLES / f"{name}.json").read_bytes()


def memory_output(pipeline: Pipeline, name: str = "mem") -> MemoryOutput:
    """The MemoryOutput instance behind the output called `name`."""
    for dispatcher in pipeline.dispatchers:
        if dispatcher.name == name:
            assert isinstance(dispatcher.output, MemoryOutput)
            return dispatcher.output
    raise LookupError(name)
