"""The shipped systemd unit: systemd itself accepts it, rates it OK, and Python runs under it.

`systemd-analyze verify` refuses a unit whose commands do not exist, and the real executable
lives in a venv this machine does not have; so the unit is checked as a copy whose executable
path points at a stand-in script. Every other line is verified as shipped.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from forwarder.cli import build_parser
from forwarder.settings import ConfigError, load_settings

PROJECT = Path(__file__).resolve().parents[2]
UNIT = PROJECT / "systemd" / "canary-forwarder.service"
EXAMPLE_CONFIG = PROJECT / "config" / "systemd.yaml"
PRIVILEGED_PORT_DROP_IN = PROJECT / "systemd" / "canary-forwarder-privileged-port.conf"
INSTALLED_EXECUTABLE = "/opt/canary-forwarder/bin/canary-forwarder"
CONFIG = "/etc/canary-forwarder/config.yaml"
MAX_EXPOSURE = 2.0  # systemd-analyze calls 2.0 and below "OK"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys are kept."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(text: str, key: str) -> list[str]:
    return [value for _, name, value in directives(text) if name == key]


def seconds(timespan: str) -> float:
    """A systemd time span made of s/min units, enough for the spans this unit uses."""
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(min|s)", timespan):
        total += int(number) * (60 if unit == "min" else 1)
    return total


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The shipped unit with its executable pointing at a stand-in script in tmp_path."""
    stand_in = tmp_path / "bin" / "canary-forwarder"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    copy = tmp_path / "canary-forwarder.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_EXECUTABLE, str(stand_in)))
    return copy


def with_privileged_port_drop_in(unit: Path) -> Path:
    # systemd-analyze looks for drop-ins in `<unit>.d/` next to a unit given by path.
    drop_ins = unit.parent / f"{unit.name}.d"
    drop_ins.mkdir()
    shutil.copy(PRIVILEGED_PORT_DROP_IN, drop_ins / "privileged-port.conf")
    return unit


def analyze(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--no-pager", *arguments],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )


def verify(unit: Path) -> None:
    result = analyze("verify", "--man=no", str(unit))
    # verify exits 0 for some warnings (an unknown key is "ignored"), so read what it said too.
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def exposure(unit: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match is not None, result.stdout
    return float(match.group(1)), match.group(2)


def test_every_command_uses_the_documented_venv_executable() -> None:
    """The path the tests rewrite is the one the unit runs, so the rewrite hides nothing else."""
    text = UNIT.read_text()
    commands = [
        value
        for _, key, value in directives(text)
        if key in ("ExecStartPre", "ExecStart", "ExecReload") and "canary-forwarder" in value
    ]
    assert len(commands) == 2
    assert all(command.startswith(f"{INSTALLED_EXECUTABLE} ") for command in commands)
    assert values(text, "ExecStart") == [f"{INSTALLED_EXECUTABLE} run -c {CONFIG}"]
    assert values(text, "ExecReload")[0] == f"{INSTALLED_EXECUTABLE} validate -c {CONFIG}"


def test_a_bad_configuration_is_not_restarted() -> None:
    """RestartPreventExitStatus= looks at the main process only (systemd#11868): an
    ExecStartPre= validate exiting 78 would be restarted until the start limit. `run` exits 78
    itself on a bad configuration (tests/daemon/test_lifecycle.py), so nothing runs before it."""
    text = UNIT.read_text()
    assert values(text, "ExecStartPre") == []
    assert "78" in values(text, "RestartPreventExitStatus")[0].split()


def test_the_unit_matches_what_the_daemon_does() -> None:
    graceful_timeout_secs = build_parser().parse_args(["run"]).graceful_timeout
    text = UNIT.read_text()
    assert values(text, "Type") == ["notify"]
    assert values(text, "NotifyAccess") == ["main"]
    assert values(text, "ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    # Shutdown takes the graceful timeout from the SIGTERM, whatever is under way, then closes
    # the outputs and the store (tests/daemon/test_signals.py measures it); systemd must not
    # SIGKILL it while it closes the store. No more than that either: a daemon stuck in its stop
    # should be killed and restarted soon.
    stop_secs = seconds(values(text, "TimeoutStopSec")[0])
    assert graceful_timeout_secs + 10 <= stop_secs <= 2 * graceful_timeout_secs
    assert seconds(values(text, "WatchdogSec")[0]) > 0
    assert "78" in values(text, "RestartPreventExitStatus")[0].split()
    assert values(text, "CapabilityBoundingSet") == [""]
    assert values(text, "AmbientCapabilities") == [""]
    assert values(text, "UMask") == ["0077"]


def test_the_unit_leaves_the_process_metrics_their_proc_files() -> None:
    # prometheus_client's process collector reads the boot time from /proc/stat; under
    # ProcSubset=pid that file is hidden and the collector reports nothing at all.
    assert values(UNIT.read_text(), "ProcSubset") in ([], ["all"])


def test_the_example_config_fits_the_sandbox(tmp_path: Path) -> None:
    """config/systemd.yaml takes its secret from a credential and writes only where it may."""
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_settings(EXAMPLE_CONFIG, environ={})
    (tmp_path / "webhook-secret").write_text("a-webhook-secret-of-32-characters\n")
    settings = load_settings(EXAMPLE_CONFIG, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    text = UNIT.read_text()
    (state_directory,) = values(text, "StateDirectory")
    (configuration_directory,) = values(text, "ConfigurationDirectory")
    assert f"/etc/{configuration_directory}/config.yaml" == CONFIG
    # ProtectSystem=strict: the state directory is the only writable place.
    writable = Path("/var/lib") / state_directory
    written = [settings.store.path, *(getattr(o.config, "path", None) for o in settings.outputs)]
    for path in written:
        if path is not None:
            assert Path(path).is_relative_to(writable), path


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(unit_copy: Path) -> None:
    verify(unit_copy)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_privileged_port_drop_in(unit_copy: Path) -> None:
    verify(with_privileged_port_drop_in(unit_copy))


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok(unit_copy: Path) -> None:
    score, verdict = exposure(unit_copy)
    assert score <= MAX_EXPOSURE, f"exposure {score} {verdict}"


@needs_systemd_analyze
def test_the_privileged_port_drop_in_adds_only_net_bind_service(unit_copy: Path) -> None:
    baseline, _ = exposure(unit_copy)
    score, verdict = exposure(with_privileged_port_drop_in(unit_copy))
    assert baseline < score <= MAX_EXPOSURE, f"exposure {baseline} -> {score} {verdict}"
    drop_in = PRIVILEGED_PORT_DROP_IN.read_text()
    assert values(drop_in, "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    assert values(drop_in, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    # A capability held in the unit's private user namespace cannot bind a host port.
    assert values(drop_in, "PrivateUsers") == ["no"]


# MemoryDenyWriteExecute=yes is a seccomp filter. The same rules, installed here before the
# interpreter starts, show that the daemon's stack needs no writable executable memory:
#   mmap with PROT_WRITE and PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, and shmat with
#   SHM_EXEC fail with EPERM.
_SYSCALLS = {  # audit arch, mmap, mprotect, pkey_mprotect, shmat
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
_BPF_LD_ABS, _BPF_JEQ, _BPF_JSET, _BPF_AND, _BPF_RET = 0x20, 0x15, 0x45, 0x54, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0x8000
_ARG2 = 16 + 8 * 2  # offsetof(struct seccomp_data, args[2]), low 32 bits on little-endian
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def memory_deny_write_execute_filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jump if true, jump if false, k) rows; jumps are relative."""
    arch, mmap, mprotect, pkey_mprotect, shmat = _SYSCALLS[machine]
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    write_exec = _PROT_WRITE | _PROT_EXEC
    return [
        (_BPF_LD_ABS, 0, 0, 4),  # 0: arch
        (_BPF_JEQ, 0, 13, arch),  # 1: another ABI -> allow (15)
        (_BPF_LD_ABS, 0, 0, 0),  # 2: syscall number
        (_BPF_JEQ, 3, 0, mmap),  # 3: -> 7
        (_BPF_JEQ, 5, 0, mprotect),  # 4: -> 10
        (_BPF_JEQ, 4, 0, pkey_mprotect),  # 5: -> 10
        (_BPF_JEQ, 5, 8, shmat),  # 6: -> 12, else allow (15)
        (_BPF_LD_ABS, 0, 0, _ARG2),  # 7: mmap prot
        (_BPF_AND, 0, 0, write_exec),  # 8
        (_BPF_JEQ, 4, 5, write_exec),  # 9: both -> deny (14)
        (_BPF_LD_ABS, 0, 0, _ARG2),  # 10: mprotect prot
        (_BPF_JSET, 2, 3, _PROT_EXEC),  # 11: exec -> deny (14)
        (_BPF_LD_ABS, 0, 0, _ARG2),  # 12: shmat flags
        (_BPF_JSET, 0, 1, _SHM_EXEC),  # 13: exec -> deny (14)
        (_BPF_RET, 0, 0, deny),  # 14
        (_BPF_RET, 0, 0, _SECCOMP_RET_ALLOW),  # 15
    ]


# Runs in a child process: installs the filter, then becomes a fresh interpreter running WORKLOAD.
_INSTALL_FILTER_AND_EXEC = textwrap.dedent(
    """
    import ctypes, json, os, sys

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    rows = json.loads(sys.argv[1])
    program = (SockFilter * len(rows))(*(SockFilter(*row) for row in rows))
    fprog = SockFprog(len(rows), program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({no_new_privs}, 1, 0, 0, 0) or libc.prctl(
        {set_seccomp}, {mode_filter}, ctypes.byref(fprog), 0, 0
    ):
        print("seccomp unavailable:", os.strerror(ctypes.get_errno()))
        sys.exit(77)
    os.execv(sys.executable, [sys.executable, "-c", *sys.argv[2:]])
    """
).format(
    no_new_privs=_PR_SET_NO_NEW_PRIVS, set_seccomp=_PR_SET_SECCOMP, mode_filter=_SECCOMP_MODE_FILTER
)

# What the daemon does, in small: parse a config, SQLite in WAL mode, orjson, TLS, Prometheus,
# and an aiohttp server answering an aiohttp client.
_WORKLOAD = textwrap.dedent(
    """
    import asyncio, mmap, sqlite3, ssl, sys
    import orjson
    from aiohttp import ClientSession, web
    from prometheus_client import generate_latest
    from forwarder.settings import parse_settings
    from forwarder.telemetry.metrics import REGISTRY

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("the filter is not active: a writable executable mapping was allowed")

    state = sys.argv[1]
    parse_settings({"outputs": [{"name": "audit", "type": "file", "path": state + "/out"}]})
    db = sqlite3.connect(state + "/outbox.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE event (body BLOB)")
    db.execute("INSERT INTO event VALUES (?)", (orjson.dumps({"incident": 1}),))
    db.commit()
    assert orjson.loads(db.execute("SELECT body FROM event").fetchone()[0]) == {"incident": 1}
    ssl.create_default_context()
    generate_latest(REGISTRY)

    async def healthz(request):
        return web.json_response({"ok": True})

    async def roundtrip():
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert await response.json() == {"ok": True}
        await runner.cleanup()

    asyncio.run(roundtrip())
    print("workload ok")
    """
)


def run_under_memory_deny_write_execute(
    workload: str, arguments: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    rows = memory_deny_write_execute_filter(platform.machine())
    environment = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONDONTWRITEBYTECODE": "1"}
    environment.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-c", _INSTALL_FILTER_AND_EXEC, json.dumps(rows), workload, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in _SYSCALLS,
    reason="the MemoryDenyWriteExecute emulation knows Linux x86_64 and aarch64 only",
)
def test_the_daemon_stack_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    result = run_under_memory_deny_write_execute(_WORKLOAD, [str(tmp_path)])
    if result.returncode == 77:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "workload ok"


def test_every_filter_jump_stays_inside_the_program() -> None:
    """A guard for edits to the filter, whose jumps are hand-counted: the kernel would refuse a
    jump out of the program, and the test above would then skip instead of failing."""
    for machine in _SYSCALLS:
        rows = memory_deny_write_execute_filter(machine)
        assert rows[-1][0] == _BPF_RET
        for index, (code, jump_true, jump_false, _) in enumerate(rows):
            if code in (_BPF_JEQ, _BPF_JSET):
                assert index + 1 + max(jump_true, jump_false) < len(rows)
