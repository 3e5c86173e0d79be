"""Tests of forwarder.telemetry: the log format and what the logs must never carry."""
