"""`memory`: keeps records in a list. For tests and for trying a configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from forwarder.mappers.base import Record
from forwarder.outputs.base import Delivered, Output, OutputConfig, SendResult

__all__ = ["MemoryOutput"]


class MemoryOutput(Output[OutputConfig]):
    config_class = OutputConfig

    def __init__(self, config: OutputConfig) -> None:
        super().__init__(config)
        self.records: list[Record] = []
        self.changed = asyncio.Condition()

    async def send(self, batch: Sequence[Record]) -> SendResult:
        async with self.changed:
            self.records.extend(batch)
            self.changed.notify_all()
        return Delivered()

    async def wait_for(self, count: int) -> list[Record]:
        """Wait until at least `count` records arrived; for tests, under their own timeout."""
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.records) >= count)
        return self.records
