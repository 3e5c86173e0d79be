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
from typing import Any, BinaryIO, Literal, Self

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

from forwarder.credentials import basic_auth_username
from forwarder.files import not_a_regular_file, open_regular_file, read_regular_file
from forwarder.mappers.base import MapperConfig
from forwarder.outputs.base import OutputConfig
from forwarder.registry import PluginError, mapper_class, output_class

__all__ = [
    "EX_CONFIG",
    "PRIVATE_NETWORKS",
    "AuthConfig",
    "ConfigError",
    "ListenConfig",
    "NotRereadable",
    "OutputSpec",
    "Settings",
    "StoreConfig",
    "default_settings",
    "load_settings",
    "parse_settings",
    "reload_settings",
]

EX_CONFIG = 78  # sysexits.h: configuration error

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """The configuration is unusable. `problems` holds one `path: message` line per fault."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class NotRereadable(ConfigError):
    """At a reload, the configuration path is not a regular file: a pipe (`-c <(envsubst ...)`)
    gave its content once, at the start, and a FIFO would block until someone writes to it."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__([f"{path}: {not_a_regular_file(mode)}"])
        self.path = path


def _at_least_16(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < 16:
        raise ValueError("must be at least 16 characters")
    return value


class BasicAuthConfig(BaseModel):
    model_config = _STRICT
    username: str = Field(min_length=1)
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _sendable(cls, value: str) -> str:
        return basic_auth_username(value)

    @field_validator("password")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        # The same floor as a header secret: an empty `${VAR}` would otherwise let anyone who
        # knows the user name post (the failure limiter slows guessing; it cannot stop it).
        return _at_least_16(value)


# What HTTP strips around a header value (RFC 9110 §5.5), and the line ends no header carries.
_HTTP_WHITESPACE = " \t\r\n"
# What the `{secret}` segment of the webhook route cannot match as the console sends it: '{'
# and '}' never, '/' only as %2F; '?' and '#' end the path, and '%' starts an escape the
# listener decodes, so the segment it matches is no longer the secret.
_UNROUTABLE = frozenset("{}/?#%")


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
        return None if value is None else _at_least_16(value)

    @field_validator("secret")
    @classmethod
    def _no_surrounding_whitespace(cls, value: SecretStr | None) -> SecretStr | None:
        # aiohttp strips a header value's leading and trailing whitespace before anything
        # compares it, so such a secret never matches. Refused rather than stripped: the docs
        # promise a ${file:} value keeps its spaces, and a silent strip would change a secret.
        secret = None if value is None else value.get_secret_value()
        if secret is not None and secret != secret.strip(_HTTP_WHITESPACE):
            raise ValueError(
                "begins or ends with whitespace, which HTTP strips from a header value, so no "
                "post would ever match; remove it (a ${file:} or ${credential:} value keeps its "
                "spaces: only one line ending is removed)"
            )
        return value

    @field_validator("secret_path")
    @classmethod
    def _routable(cls, value: SecretStr | None) -> SecretStr | None:
        # The secret is the `{secret}` segment of an aiohttp route, and a URL pasted into the
        # console is sent as it stands (see _UNROUTABLE).
        if value is not None and _UNROUTABLE.intersection(value.get_secret_value()):
            raise ValueError(
                "cannot contain '{', '}', '/', '?', '#' or '%': it is one segment of the webhook "
                "URL's path, where a post with it would never match"
            )
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


# Addresses no Internet client has: loopback, RFC 1918, shared (RFC 6598), link-local and
# unique local. What an operator's Prometheus, kubelet or load balancer scrapes from.
PRIVATE_NETWORKS = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
)  # fmt: skip


class ListenConfig(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    """An address or a name: listens on each address it resolves to. `::` is every IPv6
    address only; an empty string is every IPv4 and every IPv6 address."""
    port: int = Field(default=8080, ge=0, le=65535)
    path: str = Field(default="/canary", pattern=r"^/[A-Za-z0-9/_.-]*$")
    auth: AuthConfig | Literal["none"] | None = None
    """Authentication; required unless host is a loopback address or this is `none`."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    allow: tuple[str, ...] = ()
    """CIDRs allowed to post (empty: everyone). Checked against the client address."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of reverse proxies whose X-Forwarded-For is believed."""
    status_allow: tuple[str, ...] = PRIVATE_NETWORKS
    """CIDRs that may read /metrics and the reasons /readyz gives (default: loopback and
    private ranges). Others get 403 from /metrics and only the status from /readyz: the
    webhook listener may face the Internet, and those name outputs, hosts and errors."""
    max_connections_per_client: int = Field(default=64, ge=0, le=65536)
    """Connections one client (an IPv4 address, an IPv6 /64) may hold open at once; past it a
    new one is closed as it is accepted. 0: no cap. Connections from `trusted_proxies` are not
    capped: every client behind a proxy shares its address."""
    tls: TlsServerConfig | None = None

    @field_validator("host")
    @classmethod
    def _bindable(cls, value: str) -> str:
        # Each of these passed validation and then failed the start with a resolver or socket
        # error ("Name or service not known", "invalid argument") that did not say what to write.
        if "[" in value or "]" in value or value.count(":") == 1:
            raise ValueError(
                f"{value!r}: write an address without brackets (::1, not [::1]) and the port "
                "in listen.port"
            )
        if ":" not in value:
            return value
        try:
            ip = ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address") from None
        if ip.ipv4_mapped is not None:
            # IPv6 sockets here take IPv6 only (IPV6_V6ONLY), so the kernel refuses this one.
            raise ValueError(f"{value!r} is an IPv4-mapped address; write {ip.ipv4_mapped}")
        if ip.is_link_local and not ip.scope_id:
            raise ValueError(
                f"{value!r} is a link-local address, which needs its interface: {value}%eth0"
            )
        return value

    @field_validator("allow", "trusted_proxies", "status_allow")
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
                f"refusing to listen on {self.host or 'every address'} without authentication; "
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
    """An event not delivered by then goes to dead letters, logged at ERROR. Measured on the
    monotonic clock while the daemon runs, so a stepped wall clock does not age the queue."""
    dedupe_window_secs: float = Field(default=600, ge=0)
    """Identical posts within this window are stored once (global and flock webhooks). The
    latest 100,000 stored posts are remembered: a flood past that shortens the window, with a
    warning."""
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
    return parse_settings(_read_yaml(Path(path), _open_any_file), environ)


def _open_any_file(path: Path) -> BinaryIO:
    # Any kind of file, not only a regular one: `-c <(envsubst < template)` is a pipe.
    return path.open("rb")


def reload_settings(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    """`load_settings` for a reload, which takes a regular file only.

    A pipe was emptied at the start: read again it gives nothing, which would read as a
    configuration without outputs. A FIFO's open would wait for a writer. So the path is looked
    at first and, unless it is a regular file, never opened.

    Raises:
        NotRereadable: the path is not a regular file.
        ConfigError: any other fault.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError([f"{path}: cannot read: {_reason(exc)}"]) from None
    if not stat.S_ISREG(mode):
        raise NotRereadable(path, mode)
    # open_regular_file looks again, at what it opened: the path may have changed meanwhile.
    return parse_settings(_read_yaml(path, open_regular_file), environ)


def parse_settings(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate already-parsed YAML. Raises ConfigError listing every fault found."""
    interpolation = _Interpolation(os.environ if environ is None else environ)
    data = interpolation.expand(data, "")
    if interpolation.problems:
        raise ConfigError(interpolation.problems)
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(interpolation.redact(_describe(exc))) from None
    problems: list[str] = []
    outputs: list[OutputSpec] = []
    names: set[str] = set()
    # (option, value) -> the index of the output that gave it first (see `own_values`).
    owners: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(envelope.outputs):
        spec = _output(raw, f"outputs[{index}]", problems)
        if spec is None:
            continue
        if spec.name in names:
            problems.append(f"outputs[{index}].name: {spec.name!r} is used twice")
        names.add(spec.name)
        for option, value in spec.config.own_values().items():
            first = owners.setdefault((option, value), index)
            if first != index:
                problems.append(
                    f"outputs[{index}].{option}: the same as outputs[{first}].{option}; "
                    "each output needs its own"
                )
        outputs.append(spec)
    if not envelope.outputs:
        problems.append("outputs: at least one output is needed")
    if problems:
        raise ConfigError(interpolation.redact(problems))
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
        # An empty location: a check of a whole output (its model validator), named by `prefix`.
        if loc and _union_branch(loc[-1]) and _wrong_type(error) and loc[:-1] in entered:
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


# Bounds of what is read: a configuration is a few kilobytes, nested a few levels. A wrong -c
# (a log file, /dev/zero) or an alias-heavy file (a "billion laughs", an alias inside its own
# anchor) must end in an error, not fill the memory or hang the start or a reload.
_MAX_CONFIG_BYTES = 1024 * 1024
_MAX_VALUES = 100_000
_MAX_DEPTH = 64


def _read_yaml(path: Path, opener: Callable[[Path], BinaryIO]) -> dict[str, Any]:
    try:
        with opener(path) as handle:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError([f"{path}: cannot read: {_reason(exc)}"]) from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{path}: larger than {_MAX_CONFIG_BYTES} bytes; is it the configuration file?"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{path}: line {line} is not UTF-8 text"]) from None
    try:
        loader = _Loader(text)  # already reads the text: refuses control characters
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {_yaml_problem(exc, text)}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested more than {_MAX_DEPTH} levels deep"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    problem = _expansion_problem(data)
    if problem is not None:
        raise ConfigError([f"{path}: {problem}"])
    return data


class _Loader(yaml.SafeLoader):
    """The safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last
    silently: a second `token:` or `outputs:` would win unnoticed), and so is a value it cannot
    build (`2001-02-30`, `!!int abc`), with its line, instead of a traceback."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[yaml.MappingNode] = set()  # nodes hash by identity

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # The first flatten of a mapping sees only the keys written in it: PyYAML then splices
        # the keys merged with `<<: *anchor` into the node itself, where an override repeats one.
        if node not in self._checked:
            self._checked.add(node)
            self._refuse_repeated_keys(node)
        super().flatten_mapping(node)

    def _refuse_repeated_keys(self, node: yaml.MappingNode) -> None:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice (first on line {first[key].line + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
            kind = str(node.tag).rpartition(":")[2]
            # Only ValueError says something useful (`day is out of range for month`).
            why = f": {exc}" if isinstance(exc, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"not a !!{kind}{why}", node.start_mark
            ) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line with the line and column. PyYAML's own text quotes the line at fault, which may
    hold a secret written in the file; and a message on several lines breaks log lines."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return f"line {line}: character #x{exc.character:04x} is not allowed in YAML"
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return " ".join(str(exc).split())
    mark = exc.problem_mark
    found = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context:
        context = exc.context_mark
        at = f" at line {context.line + 1}, column {context.column + 1}" if context else ""
        found += f" ({exc.context}{at})"
    return found


def _expansion_problem(data: Any) -> str | None:
    """Whether the parsed document is too big once its aliases are expanded (the walk stops at
    the first bound, so a billion laughs costs no more than a large real configuration)."""
    count = 0
    pending: list[tuple[Any, int]] = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > _MAX_VALUES:
            return f"more than {_MAX_VALUES} values once aliases are expanded"
        if depth > _MAX_DEPTH:
            return f"nested more than {_MAX_DEPTH} levels deep (an alias inside its own anchor?)"
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
    return None


# `$${` is a literal `${` (as in Terraform and Compose), so a secret written in the file can
# hold one; `$` alone and `$$` stay as they are, as they always did.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
# A substituted value shorter than this is not masked in error messages: it would mangle words of
# the message, and no secret is that short.
_MIN_MASKED_CHARS = 4


class _Interpolation:
    """Replace `${VAR}`, `${file:/path}` and `${credential:NAME}` inside string values.

    Substitution happens after YAML parsing, so a secret can never change the document's shape,
    and in one pass, so a substituted value is never expanded again. `${credential:NAME}` reads
    $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=). Every substituted value is remembered
    so that error messages can show the reference instead of the secret it became.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self._substituted: list[tuple[str, str, str]] = []  # (where, value, reference)

    def expand(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            expanded: dict[Any, Any] = {}
            for key, item in value.items():
                inner = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and "${" in key:
                    # Expanding keys would let the environment change the document's shape.
                    self.problems.append(
                        f"{inner}: ${{...}} is expanded in values only, not in keys"
                    )
                expanded[key] = self.expand(item, inner)
            return expanded
        if isinstance(value, list):
            return [self.expand(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            reference = match.group(1)
            if reference is None:
                return "${"
            found = self._resolve(reference, where)
            if found:
                self._substituted.append((where, found, match.group(0)))
            return found

        return _REFERENCE.sub(replace, value)

    def _resolve(self, reference: str, where: str) -> str:
        if reference.startswith("credential:"):
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            name = reference.removeprefix("credential:")
            if not directory:
                needs = "needs CREDENTIALS_DIRECTORY (systemd LoadCredential)"
                self.problems.append(f"{where}: ${{{reference}}} {needs}")
                return ""
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
                self.problems.append(f"{where}: credential name {name!r} is not a plain file name")
                return ""
            return _read_secret(Path(directory) / name, where, self.problems)
        if reference.startswith("file:"):
            return _read_secret(Path(reference.removeprefix("file:")), where, self.problems)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", reference):
            self.problems.append(
                f"{where}: ${{{reference}}} is not a variable name, file: or credential: "
                "reference (write $${ for a literal ${)"
            )
            return ""
        if reference not in self.environ:
            self.problems.append(f"{where}: environment variable {reference} is not set")
            return ""
        try:
            return _one_line(self.environ[reference])
        except ValueError as exc:
            self.problems.append(f"{where}: environment variable {reference}: {exc}")
            return ""

    def redact(self, problems: Iterable[str]) -> list[str]:
        """`problems` with each substituted value shown as the reference it came from.

        Validators quote the value they refuse (`'...' is not a URL`); a token put under the
        wrong option must not end up in a terminal or a log. Only problems about the option the
        value went into, or about a mapping that holds it, are touched.
        """
        by_length = sorted(self._substituted, key=lambda s: len(s[1]), reverse=True)
        redacted: list[str] = []
        for problem in problems:
            path, colon, message = problem.partition(": ")
            for where, value, reference in by_length:
                if len(value) < _MIN_MASKED_CHARS or not _within(where, path):
                    continue
                message = message.replace(value, reference)
                # As repr() shows it, when the value holds a quote or a backslash.
                message = message.replace(repr(value)[1:-1], reference)
            redacted.append(f"{path}{colon}{message}")
        return redacted


def _within(where: str, path: str) -> bool:
    """Whether the value at `where` is at or under the option a problem names."""
    return (
        path in ("", "(top level)") or where == path or where.startswith((f"{path}.", f"{path}["))
    )


_MAX_SECRET_FILE_BYTES = 64 * 1024


def _read_secret(path: Path, where: str, problems: list[str]) -> str:
    try:
        data = read_regular_file(path, _MAX_SECRET_FILE_BYTES)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Python's message quotes the byte at fault: a piece of the secret.
            raise ValueError("not UTF-8 text") from None
        text = _one_line(text)
        if not text:
            raise ValueError("empty")
        return text
    except (OSError, ValueError) as exc:  # ValueError: also a NUL in the path
        problems.append(f"{where}: cannot read secret file {_shown(path)}: {_reason(exc)}")
        return ""


def _one_line(text: str) -> str:
    """`text` less exactly one trailing line ending: the one `echo`, editors and Kubernetes'
    `--from-file` add. Any other line break would stay in the value, where a secret never
    matches (a header cannot even carry it), so it is refused: no option takes several lines.

    Raises:
        ValueError: a line break is left.
    """
    text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
    if "\n" in text or "\r" in text:
        raise ValueError("more than one line (a value ends at its first line break)")
    return text


def _shown(path: Path) -> str:
    """A relative path, with what it is relative to: under systemd the unit's
    WorkingDirectory (the shipped unit's state directory), not the directory the operator
    tried it from."""
    if path.is_absolute():
        return str(path)
    try:
        return f"{path} (relative to the working directory {os.getcwd()})"
    except OSError:
        return str(path)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
