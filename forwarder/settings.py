"""The YAML configuration: load, interpolate secrets, validate, and say exactly what is wrong.

Validation has two stages. The envelope (listen, store, the list of outputs) is checked first;
then each output is checked by the config model its own plug-in declares, and its `format` by the
model of the chosen format. Every error names its path, such as `outputs[1].port`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from forwarder.mappers.base import MapperConfig
from forwarder.outputs.base import OutputConfig
from forwarder.registry import PluginError, mapper_class, output_class

__all__ = [
    "EX_CONFIG",
    "AuthConfig",
    "ConfigError",
    "ListenConfig",
    "OutputSpec",
    "Settings",
    "StoreConfig",
    "default_settings",
    "load_settings",
    "parse_settings",
]

EX_CONFIG = 78  # sysexits.h: configuration error

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """The configuration is unusable. `problems` holds one `path: message` line per fault."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class BasicAuthConfig(BaseModel):
    model_config = _STRICT
    username: str = Field(min_length=1)
    password: SecretStr


class AuthConfig(BaseModel):
    """How a webhook post proves it comes from your console. Any one configured method suffices."""

    model_config = _STRICT

    header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    """Name of a custom header set in the console's webhook settings, e.g. X-Canary-Token."""
    secret: SecretStr | None = None
    """The value that header must carry (compared in constant time)."""
    basic: BasicAuthConfig | None = None
    """HTTP basic credentials, for proxies or consoles that put them in the URL."""
    secret_path: SecretStr | None = None
    """A secret last path segment: the webhook URL becomes <path>/<secret_path>."""

    @field_validator("secret", "secret_path")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _one_method(self) -> Self:
        if (self.header is None) != (self.secret is None):
            raise ValueError("header and secret go together")
        if self.secret is None and self.basic is None and self.secret_path is None:
            raise ValueError("configure header and secret, basic, or secret_path; or `auth: none`")
        return self


class TlsServerConfig(BaseModel):
    model_config = _STRICT
    cert: Path
    """PEM certificate chain."""
    key: Path
    """PEM private key."""


class ListenConfig(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    path: str = Field(default="/canary", pattern=r"^/[A-Za-z0-9/_.-]*$")
    auth: AuthConfig | Literal["none"] | None = None
    """Authentication; required unless host is a loopback address or this is `none`."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    allow: tuple[str, ...] = ()
    """CIDRs allowed to post (empty: everyone). Checked against the client address."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of reverse proxies whose X-Forwarded-For is believed."""
    tls: TlsServerConfig | None = None

    @field_validator("allow", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR: {exc}") from None
        return value

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> Self:
        if self.auth is None and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without authentication; "
                "configure listen.auth or say `auth: none` explicitly"
            )
        return self


class QuarantineConfig(BaseModel):
    """Bounds of the quarantine for authenticated posts that were rejected (bad JSON and so on)."""

    model_config = _STRICT
    max_count: int = Field(default=1000, ge=0)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)


class StoreConfig(BaseModel):
    model_config = _STRICT

    path: Path = Path("state")
    """Directory of the durable outbox (created if missing)."""
    max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    """Payload bytes queued before new posts get 503 with Retry-After."""
    max_age_secs: float = Field(default=7 * 86_400, gt=0)
    """An event not delivered by then goes to dead letters, logged at ERROR."""
    dedupe_window_secs: float = Field(default=600, ge=0)
    """Identical posts within this window are stored once (global and flock webhooks)."""
    sync: Literal["full", "normal"] = "full"
    """`full`: fsync each commit (survives power loss). `normal`: survives a daemon crash."""
    quarantine: QuarantineConfig = QuarantineConfig()


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One validated output: its transport config and the config of its format."""

    config: OutputConfig
    format: MapperConfig

    @property
    def name(self) -> str:
        return self.config.name


class _Envelope(BaseModel):
    model_config = _STRICT
    listen: ListenConfig = Field(default_factory=ListenConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    outputs: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenConfig
    store: StoreConfig
    outputs: tuple[OutputSpec, ...]

    def secrets(self) -> list[str]:
        """Every configured secret value, so logs can be checked never to contain one."""
        found: list[str] = []
        models: list[BaseModel] = [self.listen, *(o.config for o in self.outputs)]
        while models:
            model = models.pop()
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr):
                    found.append(value.get_secret_value())
                elif isinstance(value, BaseModel):
                    models.append(value)
        return [s for s in found if s]


def default_settings() -> Settings:
    """The built-in default: 127.0.0.1:8080/canary, no auth, JSON lines in ./canary-events.jsonl."""
    return parse_settings(
        {"outputs": [{"name": "local", "type": "file", "path": "canary-events.jsonl"}]}
    )


def load_settings(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a YAML file. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return parse_settings(data, environ)


def parse_settings(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate already-parsed YAML. Raises ConfigError listing every fault found."""
    problems: list[str] = []
    data = _interpolate(data, os.environ if environ is None else environ, "", problems)
    if problems:
        raise ConfigError(problems)
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(_describe(exc))) from None
    outputs: list[OutputSpec] = []
    names: set[str] = set()
    for index, raw in enumerate(envelope.outputs):
        spec = _output(raw, f"outputs[{index}]", problems)
        if spec is None:
            continue
        if spec.name in names:
            problems.append(f"outputs[{index}].name: {spec.name!r} is used twice")
        names.add(spec.name)
        outputs.append(spec)
    if not envelope.outputs:
        problems.append("outputs: at least one output is needed")
    if problems:
        raise ConfigError(problems)
    return Settings(listen=envelope.listen, store=envelope.store, outputs=tuple(outputs))


def _output(raw: Any, where: str, problems: list[str]) -> OutputSpec | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    config = _plugin_config(output_class, raw, where, f"{where}.type", problems)
    if not isinstance(config, OutputConfig):
        return None
    fmt = {"type": config.format} if isinstance(config.format, str) else dict(config.format)
    mapper_config = _plugin_config(
        mapper_class, fmt, f"{where}.format", f"{where}.format", problems
    )
    if not isinstance(mapper_config, MapperConfig):
        return None
    return OutputSpec(config=config, format=mapper_config)


def _plugin_config(
    lookup: Callable[[str], Any],
    data: dict[str, Any],
    where: str,
    unknown_where: str,
    problems: list[str],
) -> BaseModel | None:
    """Validate `data` with the config model of the plug-in its `type` names.

    `unknown_where` is the path reported when no plug-in has that name.
    """
    name = data.get("type")
    if not isinstance(name, str):
        problems.append(f"{where}.type: required, a string naming the plug-in")
        return None
    try:
        model: BaseModel = lookup(name).config_class.model_validate(data)
    except PluginError as exc:
        problems.append(f"{unknown_where}: {exc}")
        return None
    except ValidationError as exc:
        problems.extend(_describe(exc, where))
        return None
    return model


def _union_branch(part: str | int) -> bool:
    """Whether a location part is pydantic's name for a branch of a union (`literal['none']`)."""
    return isinstance(part, str) and "[" in part


def _wrong_type(error: ErrorDetails) -> bool:
    return error["type"] == "literal_error" or error["type"].endswith("_type")


def _describe(exc: ValidationError, prefix: str = "") -> Iterable[str]:
    errors = exc.errors(include_url=False, include_input=False)
    # A value of the right type for one branch of a union (a mapping for `auth`) failed inside
    # that branch; the other branches' "wrong type" (`Input should be 'none'`) would mislead.
    entered = {
        e["loc"][:i]
        for e in errors
        for i, part in enumerate(e["loc"])
        if _union_branch(part) and (i + 1 < len(e["loc"]) or not _wrong_type(e))
    }
    for error in errors:
        loc = error["loc"]
        if _union_branch(loc[-1]) and _wrong_type(error) and loc[:-1] in entered:
            continue
        path = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif _union_branch(part):
                continue  # pydantic's names for union branches say nothing to a user
            else:
                path += f".{part}" if path else str(part)
        message = error["msg"].removeprefix("Value error, ")
        yield f"{path or '(top level)'}: {message}"


_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def _interpolate(value: Any, environ: Mapping[str, str], where: str, problems: list[str]) -> Any:
    """Replace `${VAR}`, `${file:/path}` and `${credential:NAME}` inside string values.

    Substitution happens after YAML parsing, so a secret can never change the document's shape.
    `${credential:NAME}` reads $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=).
    """
    if isinstance(value, dict):
        return {
            k: _interpolate(v, environ, f"{where}.{k}" if where else str(k), problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, environ, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        reference = match.group(1)
        if reference.startswith("credential:"):
            directory = environ.get("CREDENTIALS_DIRECTORY")
            name = reference.removeprefix("credential:")
            if not directory:
                needs = "needs CREDENTIALS_DIRECTORY (systemd LoadCredential)"
                problems.append(f"{where}: ${{{reference}}} {needs}")
                return ""
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
                problems.append(f"{where}: credential name {name!r} is not a plain file name")
                return ""
            return _read_secret(Path(directory) / name, where, problems)
        if reference.startswith("file:"):
            return _read_secret(Path(reference.removeprefix("file:")), where, problems)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", reference):
            problems.append(f"{where}: ${{{reference}}} is not a variable name or file: reference")
            return ""
        if reference not in environ:
            problems.append(f"{where}: environment variable {reference} is not set")
            return ""
        return environ[reference]

    return _REFERENCE.sub(replace, value)


_MAX_SECRET_FILE_BYTES = 64 * 1024


def _read_secret(path: Path, where: str, problems: list[str]) -> str:
    try:
        # Only a regular file of sane size: a FIFO would block the start, /dev/zero never ends.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError("not a regular file")
        with path.open("rb") as handle:
            data = handle.read(_MAX_SECRET_FILE_BYTES + 1)
        if len(data) > _MAX_SECRET_FILE_BYTES:
            raise ValueError(f"larger than {_MAX_SECRET_FILE_BYTES} bytes")
        return data.decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: also a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(f"{where}: cannot read secret file {path}: {reason}")
        return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
