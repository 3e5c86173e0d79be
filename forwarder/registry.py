"""Where format and output names are looked up.

Built-ins are a literal table of "module:attr" strings imported on first use, so an output's
client library is only needed when that output is configured. Third-party plug-ins come from the
entry-point groups `forwarder.mappers` and `forwarder.outputs`; a name clash is an error.
Set FORWARDER_DISABLE_PLUGIN_AUTOLOAD=1 to load built-ins only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forwarder.mappers.base import Mapper
    from forwarder.outputs.base import Output

__all__ = ["BUILTIN_MAPPERS", "BUILTIN_OUTPUTS", "PluginError", "mapper_class", "output_class"]

BUILTIN_MAPPERS: Mapping[str, str] = {
    "json": "forwarder.mappers.json:JsonMapper",
    "splunk_console": "forwarder.mappers.splunk_console:SplunkConsoleMapper",
    "cef": "forwarder.mappers.cef:CefMapper",
    "leef": "forwarder.mappers.leef:LeefMapper",
    "ecs": "forwarder.mappers.ecs:EcsMapper",
    "rfc5424": "forwarder.mappers.rfc5424:Rfc5424Mapper",
    "rfc3164": "forwarder.mappers.rfc3164:Rfc3164Mapper",
}

BUILTIN_OUTPUTS: Mapping[str, str] = {
    "file": "forwarder.outputs.file:FileOutput",
    "memory": "forwarder.outputs.memory:MemoryOutput",
    "splunk_hec": "forwarder.outputs.splunk_hec:SplunkHecOutput",
    "syslog": "forwarder.outputs.syslog:SyslogOutput",
    "elasticsearch": "forwarder.outputs.elasticsearch:ElasticsearchOutput",
}

MAPPER_GROUP = "forwarder.mappers"
OUTPUT_GROUP = "forwarder.outputs"


class PluginError(LookupError):
    """A name that no built-in or installed plug-in provides, or two plug-ins with one name."""


@cache
def _table(group: str) -> Mapping[str, str]:
    builtins = BUILTIN_MAPPERS if group == MAPPER_GROUP else BUILTIN_OUTPUTS
    table = dict(builtins)
    if os.environ.get("FORWARDER_DISABLE_PLUGIN_AUTOLOAD"):
        return table
    for entry in entry_points(group=group):
        if entry.name in table:
            raise PluginError(
                f"plug-in {entry.name!r} from {entry.value} clashes with {table[entry.name]}"
            )
        table[entry.name] = entry.value
    return table


def _load(group: str, name: str) -> Any:
    table = _table(group)
    try:
        target = table[name]
    except KeyError:
        kind = "format" if group == MAPPER_GROUP else "output type"
        raise PluginError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def mapper_names() -> list[str]:
    return sorted(_table(MAPPER_GROUP))


def output_names() -> list[str]:
    return sorted(_table(OUTPUT_GROUP))


def mapper_class(name: str) -> type[Mapper[Any]]:
    """The mapper registered under `name`."""
    cls: type[Mapper[Any]] = _load(MAPPER_GROUP, name)
    return cls


def output_class(name: str) -> type[Output[Any]]:
    """The output registered under `name`."""
    cls: type[Output[Any]] = _load(OUTPUT_GROUP, name)
    return cls
