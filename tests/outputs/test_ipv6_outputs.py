"""Outputs to IPv6 receivers, all on ::1: Splunk HEC and Elasticsearch by `http://[::1]:PORT` (plain
and TLS with a certificate for the address), syslog by `[::1]:PORT` over UDP, TCP and TLS to a
real rsyslogd, and how the nodes are named in reasons and logs."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog
import trustme
from pydantic import ValidationError
from yarl import URL

from forwarder.mappers.base import Record
from forwarder.outputs._http import endpoint_name
from forwarder.outputs.base import Delivered, HealthcheckError, Output, Retry
from forwarder.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchOutput
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from forwarder.outputs.syslog import SyslogConfig, SyslogOutput
from tests.peers.fake_es import FakeEs
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec
from tests.peers.records import make_records
from tests.support.loopback6 import requires_loopback6
from tests.support.rsyslog import RsyslogFactory, requires_rsyslogd
from tests.support.rsyslog import rsyslog_factory as rsyslog_factory  # a fixture


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    """`await started(output)`: the output, started; every one is closed when the test ends."""
    outputs: list[Output[Any]] = []

    async def start(output: Output[Any]) -> Output[Any]:
        await output.start()
        outputs.append(output)
        return output

    yield start
    for output in outputs:
        await output.aclose()


def closed_port6() -> int:
    """A TCP port on ::1 that nothing listens on."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        port: int = probe.getsockname()[1]
        return port


def hec(url: str | list[str], **options: Any) -> SplunkHecOutput:
    config = {"name": "hec", "type": "splunk_hec", "url": url, "token": DEFAULT_TOKEN}
    return SplunkHecOutput(SplunkHecConfig.model_validate({**config, **options}))


def es(url: str | list[str], **options: Any) -> ElasticsearchOutput:
    config = {"name": "es", "type": "elasticsearch", "url": url}
    return ElasticsearchOutput(ElasticsearchConfig.model_validate({**config, **options}))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate names ::1 as an IP address (and nothing else), and
    the CA file that trusts it."""
    ca = trustme.CA()
    server = ca.issue_cert("::1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


# --- how a node is named -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://[::1]:8088", "[::1]:8088"),
        ("https://[2001:db8::1]", "[2001:db8::1]:443"),
        ("http://[fe80::1%25eth0]:9200", "[fe80::1%eth0]:9200"),
        ("https://splunk.example:8088", "splunk.example:8088"),
        ("http://192.0.2.1", "192.0.2.1:80"),
    ],
)
def test_a_node_is_named_host_port_with_an_ipv6_address_in_brackets(url: str, name: str) -> None:
    # `::1:8088` is itself an IPv6 address: which port was meant, and which node?
    assert endpoint_name(URL(url)) == name


@pytest.mark.parametrize("factory", [hec, es])
@pytest.mark.parametrize(
    "urls",
    [
        ["http://[::1]:8088", "http://[0:0::1]:8088"],
        ["http://[2001:db8::1]:80", "http://[2001:DB8::1]"],
        ["https://a.example:443/", "https://a.example"],
    ],
)
def test_one_node_listed_twice_in_other_spellings_is_refused(
    factory: Callable[..., Output[Any]], urls: list[str]
) -> None:
    # Failover tells nodes apart by their URL: a second entry for one node was never benched
    # with the first, so a node that was down kept getting every other request.
    with pytest.raises(ValidationError, match="listed twice"):
        factory(urls)


# --- HEC and Elasticsearch on ::1 ----------------------------------------------------------------


@requires_loopback6
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_hec_delivers_to_an_ipv6_node_and_names_a_dead_one_in_brackets(
    started: Callable[..., Any], certificate: tuple[ssl.SSLContext, Path], tls: bool
) -> None:
    context, ca_file = certificate
    options = {"tls": {"ca_file": str(ca_file)}} if tls else {}
    peer = await FakeHec().start(ssl_context=context if tls else None, host="::1")
    try:
        assert peer.url.startswith(f"{'https' if tls else 'http'}://[::1]:")
        live = await started(hec(peer.url, **options))
        records = make_records(2)
        assert await live.send(records) == Delivered()
        assert peer.values("canary_fingerprint") == [r.event.fingerprint for r in records]
        await live.healthcheck()
    finally:
        await peer.stop()
    port = closed_port6()
    dead = await started(hec(f"http://[::1]:{port}"))
    result = await dead.send(make_records(1))
    assert isinstance(result, Retry)
    assert result.reason.startswith(f"[::1]:{port}: cannot connect")


@requires_loopback6
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_elasticsearch_delivers_to_an_ipv6_node_and_names_a_dead_one_in_brackets(
    started: Callable[..., Any], certificate: tuple[ssl.SSLContext, Path], tls: bool
) -> None:
    context, ca_file = certificate
    options = {"tls": {"ca_file": str(ca_file)}} if tls else {}
    peer = await FakeEs().start(ssl_context=context if tls else None, host="::1")
    try:
        live = await started(es(peer.url, **options))
        records = make_records(2)
        assert await live.send(records) == Delivered()
        assert sorted(peer.all_ids()) == sorted(r.event.fingerprint for r in records)
        await live.healthcheck()
    finally:
        await peer.stop()
    port = closed_port6()
    dead = await started(es(f"http://[::1]:{port}"))
    with pytest.raises(HealthcheckError, match=rf"\[::1\]:{port}: "):
        await dead.healthcheck()


# --- syslog to rsyslogd on ::1 -------------------------------------------------------------------


@requires_loopback6
@requires_rsyslogd
@pytest.mark.integration
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_syslog_delivers_to_rsyslogd_on_ipv6_loopback(
    rsyslog_factory: RsyslogFactory, transport: Literal["udp", "tcp", "tls"]
) -> None:
    server = rsyslog_factory(transport, host="::1")
    assert server.address.startswith("[::1]:")
    options: dict[str, Any] = {"hosts": [server.address], "transport": transport}
    if server.tls is not None:
        # No server_name: the certificate must match the IP literal itself (an IP SAN).
        options["tls"] = {"ca_file": str(server.tls.ca_file)}
    config = {"name": "siem", "type": "syslog", "hostname": "2001:db8::7", **options}
    output = SyslogOutput(SyslogConfig.model_validate(config))
    try:
        [event] = [record.event for record in make_records(1)]
        record = Record(event, "CEF:0|Thinkst|Canary|1|1001|x|5|c6a1=2001:db8::9", severity=5)
        assert await output.send([record]) == Delivered()
        [received] = await server.wait_for(1)
        await output.healthcheck()
    finally:
        await output.aclose()
    assert received["hostname"] == "2001:db8::7"
    assert received["msg"].endswith("c6a1=2001:db8::9")


@requires_loopback6
async def test_a_dead_ipv6_syslog_receiver_is_named_in_brackets() -> None:
    port = closed_port6()
    config = {"name": "siem", "type": "syslog", "hosts": [f"[::1]:{port}"]}
    output = SyslogOutput(SyslogConfig.model_validate(config))
    try:
        with structlog.testing.capture_logs() as logs:
            result = await output.send(make_records(1))
    finally:
        await output.aclose()
    assert isinstance(result, Retry)
    assert f"[::1]:{port}: connection refused" in result.reason
    assert [line["endpoint"] for line in logs] == [f"[::1]:{port}"]


@pytest.mark.parametrize(
    "hosts",
    [
        ["::1", "[::1]:514"],
        ["[::1]", "0:0::1"],
        ["2001:db8::1", "[2001:DB8::1]"],
        ["siem.example", "SIEM.example:514"],
    ],
)
def test_one_syslog_receiver_listed_twice_in_other_spellings_is_refused(hosts: list[str]) -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        SyslogConfig.model_validate({"name": "s", "type": "syslog", "hosts": hosts})


def test_an_ipv6_receiver_on_two_ports_is_two_receivers() -> None:
    config = SyslogConfig.model_validate(
        {"name": "s", "type": "syslog", "hosts": ["[::1]:514", "[::1]:1514", "::2"]}
    )
    assert [str(endpoint) for endpoint in config.endpoints()] == [
        "[::1]:514",
        "[::1]:1514",
        "[::2]:514",
    ]
