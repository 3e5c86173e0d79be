"""Tests against real receivers started by the tests (rsyslogd): the formats proven end to end."""
