"""Opt-in tests against a real Splunk or Elasticsearch named by environment variables."""
