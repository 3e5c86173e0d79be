"""End-to-end tests that run the daemon as a subprocess (marked `slow`)."""
