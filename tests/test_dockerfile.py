"""The Dockerfile's facts, checked without a container engine (CI has none).

Each test reads the Dockerfile as Docker would (continuation lines joined, comments dropped) and
holds it against the code: the console script pyproject.toml declares, the real CLI parser, the
shipped container config, and the real /healthz route for the HEALTHCHECK.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import os
import re
import shlex
import socket
import ssl
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from forwarder.app import build_app
from forwarder.cli import build_parser
from forwarder.pipeline import Pipeline
from forwarder.settings import ConfigError, load_settings

PROJECT = Path(__file__).resolve().parents[1]
DOCKERFILE = PROJECT / "Dockerfile"
DOCKERIGNORE = PROJECT / ".dockerignore"
CONTAINER_CONFIG = PROJECT / "config" / "container.yaml"
SECRET_LOOKING_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form"
        return [str(item) for item in value]


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each FROM starts one)."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments and blank lines may sit inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def assignments(instruction: Instruction) -> dict[str, str]:
    """Names and values of an ENV or ARG: `K=V K2="V 2"`, or the legacy `ENV K V`."""
    words = shlex.split(instruction.arguments)
    if instruction.keyword == "ENV" and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return {name: value for name, _, value in (word.partition("=") for word in words)}


STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def final(keyword: str) -> list[Instruction]:
    return [instruction for instruction in FINAL if instruction.keyword == keyword]


def final_environment() -> dict[str, str]:
    environment: dict[str, str] = {}
    for instruction in final("ENV"):
        environment.update(assignments(instruction))
    return environment


def test_the_image_is_built_in_stages_on_a_slim_python() -> None:
    assert len(STAGES) >= 2
    base = FINAL[0].arguments.split()[0]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    builder_runs = " ".join(i.arguments for i in STAGES[0] if i.keyword == "RUN")
    assert "pip wheel" in builder_runs
    # The runtime installs the builder's wheels and nothing from an index.
    runtime_runs = " ".join(i.arguments for i in final("RUN"))
    assert "from=builder" in runtime_runs
    assert "--no-index" in runtime_runs


def test_the_final_stage_runs_as_an_unprivileged_user() -> None:
    users = final("USER")
    assert users, "the final stage has no USER, so it runs as root"
    user, _, group = users[-1].arguments.partition(":")
    assert user not in ("root", "0")
    assert group not in ("root", "0")
    # A numeric uid lets Kubernetes' runAsNonRoot check it without reading /etc/passwd.
    assert user.isdigit()


def test_the_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = final("ENTRYPOINT")
    assert entrypoint.exec_form() == ["canary-forwarder"]
    assert entrypoint.exec_form()[0] in scripts


def test_the_cmd_is_a_run_the_real_cli_accepts() -> None:
    (cmd,) = final("CMD")
    args = build_parser().parse_args(cmd.exec_form())
    assert args.command == "run"
    assert args.config == Path("/etc/canary-forwarder/config.yaml")


def test_the_default_config_is_the_shipped_container_config() -> None:
    (cmd,) = final("CMD")
    config_path = str(build_parser().parse_args(cmd.exec_form()).config)
    copies = [shlex.split(i.arguments) for i in final("COPY")]
    assert any(words[-2:] == ["config/container.yaml", config_path] for words in copies)


def test_the_container_config_needs_its_secret_from_outside(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CANARY_WEBHOOK_SECRET"):
        load_settings(CONTAINER_CONFIG, environ={})
    settings = load_settings(CONTAINER_CONFIG, environ={"CANARY_WEBHOOK_SECRET": "s" * 32})
    assert ipaddress.ip_address(settings.listen.host).is_unspecified  # every interface
    assert settings.listen.auth not in (None, "none")
    # Everything the daemon writes lands on the volume, so it survives the container.
    (volume,) = (json.loads(i.arguments)[0] for i in final("VOLUME"))
    written = [settings.store.path, *(getattr(o.config, "path", None) for o in settings.outputs)]
    for path in written:
        if path is not None:
            assert Path(path).is_relative_to(volume), path
    assert final("EXPOSE")[0].arguments == f"{settings.listen.port}"


def test_stop_signal_is_sigterm() -> None:
    assert [i.arguments for i in final("STOPSIGNAL")] == ["SIGTERM"]


def test_python_neither_buffers_output_nor_writes_bytecode() -> None:
    environment = final_environment()
    assert environment.get("PYTHONUNBUFFERED") == "1"
    assert environment.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_no_secret_is_baked_into_the_image() -> None:
    for stage in STAGES:
        for instruction in stage:
            if instruction.keyword not in ("ENV", "ARG"):
                continue
            for name, value in assignments(instruction).items():
                assert not (SECRET_LOOKING_NAME.search(name) and value), (
                    f"{instruction.keyword} {name} has a value baked into the image"
                )


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (last matching rule wins)."""
    excluded = False
    parts = path.split("/")
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/").removeprefix("**/")
        # A rule matches a path or any of its parent directories, as in Docker.
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if raw.strip().removeprefix("!").startswith("**/"):
            candidates += parts
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negated
    return excluded


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    for stage in STAGES:
        for instruction in stage:
            if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
                continue
            sources = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
            for source in sources[:-1]:
                assert (PROJECT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore drops it"


@pytest.mark.parametrize(
    "path", [".git/config", ".venv/bin/python", "state/outbox.sqlite3", "config.yaml", "tests"]
)
def test_the_build_context_leaves_out_what_the_image_must_not_hold(path: str) -> None:
    assert dockerignore_excludes(path)


@pytest.mark.parametrize("path", ["forwarder/__pycache__/app.cpython-311.pyc"])
def test_the_build_context_leaves_out_caches_inside_the_package(path: str) -> None:
    assert dockerignore_excludes(path)
    assert not dockerignore_excludes("forwarder/app.py")


def healthcheck_command() -> list[str]:
    (healthcheck,) = final("HEALTHCHECK")
    _, _, command = healthcheck.arguments.partition(" CMD ")
    words = json.loads(command)
    assert isinstance(words, list)
    return [str(word) for word in words]


async def run_healthcheck(url: str, **extra_environment: str) -> int:
    """The image's HEALTHCHECK command with this interpreter, probing `url`."""
    program, *arguments = healthcheck_command()
    assert program == "python"  # the slim image has no curl or wget
    environment = {**os.environ, **extra_environment, "CANARY_FORWARDER_HEALTHCHECK_URL": url}
    process = await asyncio.create_subprocess_exec(sys.executable, *arguments, env=environment)
    return await asyncio.wait_for(process.wait(), timeout=30)


async def served(
    pipeline: Pipeline, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Callable[[str], str]]:
    """The real app on a free loopback port; yields a function from path to URL."""
    runner = web.AppRunner(build_app(pipeline))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "http" if tls is None else "https"
    yield lambda path: f"{scheme}://127.0.0.1:{port}{path}"
    await runner.cleanup()


@pytest.fixture
async def serving(pipeline: Pipeline) -> AsyncIterator[Callable[[str], str]]:
    async for url in served(pipeline):
        yield url


@pytest.fixture
async def serving_tls(pipeline: Pipeline) -> AsyncIterator[Callable[[str], str]]:
    """As `serving`, over TLS with a certificate for a name that is not 127.0.0.1, as a
    listener's real certificate is."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("forwarder.example").configure_cert(context)
    async for url in served(pipeline, context):
        yield url


def test_the_healthcheck_probes_healthz_on_the_exposed_port() -> None:
    url = final_environment()["CANARY_FORWARDER_HEALTHCHECK_URL"]
    assert url == f"http://127.0.0.1:{final('EXPOSE')[0].arguments}/healthz"


async def test_the_healthcheck_passes_against_the_real_healthz(
    serving: Callable[[str], str],
) -> None:
    assert await run_healthcheck(serving("/healthz")) == 0


async def test_the_healthcheck_passes_against_a_tls_listener(
    serving_tls: Callable[[str], str],
) -> None:
    assert await run_healthcheck(serving_tls("/healthz")) == 0


async def test_the_healthcheck_over_tls_still_fails_on_an_error_status(
    serving_tls: Callable[[str], str],
) -> None:
    assert await run_healthcheck(serving_tls("/no-such-endpoint")) != 0


async def test_the_healthcheck_ignores_a_proxy_meant_for_the_outputs(
    serving: Callable[[str], str],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert (
        await run_healthcheck(serving("/healthz"), http_proxy=dead_proxy, HTTP_PROXY=dead_proxy)
        == 0
    )


async def test_the_healthcheck_fails_on_an_error_status(serving: Callable[[str], str]) -> None:
    assert await run_healthcheck(serving("/no-such-endpoint")) != 0


async def test_the_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert await run_healthcheck(f"http://127.0.0.1:{closed_port}/healthz") != 0
