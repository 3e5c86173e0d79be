"""Transports: one module per destination, each an `Output` that sends and classifies."""
