"""Tests of the formats (forwarder.mappers) and the helpers they share."""
