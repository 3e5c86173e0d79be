"""Protocol-faithful fakes of the HTTP peers (Splunk HEC, Elasticsearch) for tests and benches.

`fake_hec.FakeHec` and `fake_es.FakeEs` run in the test's event loop (fixtures in
`tests.peers.fixtures`) or as processes (`python -m tests.peers.fake_hec --port 0`).
"""
