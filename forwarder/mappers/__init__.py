"""Formats: one module per format, each a pure `Mapper` from a `CanaryEvent` to a `Record`."""
