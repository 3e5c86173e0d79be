"""Helpers shared by the test suites: real receivers started by the tests themselves."""
