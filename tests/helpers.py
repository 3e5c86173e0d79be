"""Small helpers for tests: sample payloads and reaching into a running pipeline."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwarder.app import build_app
from forwarder.outputs.base import Output
from forwarder.outputs.memory import MemoryOutput
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings

SAMPLES = Path(__file__).parent / "samples"


def release_a_reader(fifo: Path) -> None:
    """Open `fifo` for writing and close it: a reader blocked opening it goes on, to EOF."""
    with contextlib.suppress(OSError):  # ENXIO: no reader is waiting
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@contextlib.contextmanager
def fifo_released_after(seconds: float, fifo: Path) -> Iterator[None]:
    """Within the block, readers blocked opening `fifo` for longer than `seconds` are let go
    (to EOF), again and again: code that waits on it fails the test instead of hanging the
    suite. The block runs in this thread, so an event loop blocked in it can wait too."""
    done = threading.Event()

    def release() -> None:
        if done.wait(seconds):
            return
        while not done.wait(0.05):
            release_a_reader(fifo)

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        yield
    finally:
        done.set()
        releaser.join()


def finishes_within(seconds: float, call: Callable[[], None], fifo: Path) -> None:
    """Run `call` in a thread; if it is still blocked after `seconds` (opening `fifo`, which
    has no writer), open the FIFO's other end to let it go, and fail."""
    worker = ThreadPoolExecutor(1)
    try:
        future = worker.submit(call)
        try:
            future.exception(timeout=seconds)
        except TimeoutError:
            release_a_reader(fifo)
            pytest.fail(f"blocked for more than {seconds:g} s")
        future.result()
    finally:
        worker.shutdown(wait=True)


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


def closed_port_url() -> str:
    """A URL on which nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


OutputT = TypeVar("OutputT", bound=Output[Any])


@contextlib.asynccontextmanager
async def started_outputs(
    make: Callable[..., OutputT],
) -> AsyncIterator[Callable[..., Awaitable[OutputT]]]:
    """`build(...)` makes an output with `make(...)` and starts it; all are closed at the end."""
    outputs: list[OutputT] = []

    async def build(*args: Any, **options: Any) -> OutputT:
        output = make(*args, **options)
        await output.start()
        outputs.append(output)
        return output

    try:
        yield build
    finally:
        for output in outputs:
            await output.aclose()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@contextlib.asynccontextmanager
async def served_pipelines(
    aiohttp_client: ClientFactory, host: str = "127.0.0.1"
) -> AsyncIterator[Callable[[Settings], Awaitable[tuple[TestClient[Any, Any], Pipeline]]]]:
    """`start(settings)` -> a test client of the daemon's app on `host` and its pipeline, as
    `canary-forwarder run` serves it (compressed bodies reach the handler as sent); stopped
    after."""
    running: list[Pipeline] = []

    async def start(settings: Settings) -> tuple[TestClient[Any, Any], Pipeline]:
        pipeline = await Pipeline.start(settings)
        running.append(pipeline)
        server = TestServer(build_app(pipeline), host=host)
        await server.start_server(auto_decompress=False)
        return await aiohttp_client(server), pipeline

    try:
        yield start
    finally:
        for pipeline in running:
            await pipeline.stop(graceful_secs=5)
