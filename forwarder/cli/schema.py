"""`schema`: the JSON Schema of the configuration file, for editors and CI checks.

Built from the same pydantic models that validate the file, with one branch per registered
output type and format, so the schema and `validate` cannot disagree.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from forwarder.registry import mapper_class, mapper_names, output_class, output_names
from forwarder.settings import ListenConfig, StoreConfig

__all__ = ["config_schema", "configure", "main"]


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    defs.update(schema.pop("$defs", {}))
    return schema


def config_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    formats = []
    for name in mapper_names():
        model = _inline(mapper_class(name).config_class.model_json_schema(), defs)
        model["properties"]["type"] = {"const": name}
        formats.append(model)
    outputs = []
    for name in output_names():
        model = _inline(output_class(name).config_class.model_json_schema(), defs)
        model["properties"]["type"] = {"const": name}
        model["properties"]["format"] = {
            "anyOf": [{"enum": mapper_names()}, {"oneOf": formats}],
            "description": model["properties"].get("format", {}).get("description", ""),
        }
        model["required"] = sorted({*model.get("required", []), "type"})
        outputs.append(model)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "canary-forwarder configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "listen": _inline(ListenConfig.model_json_schema(), defs),
            "store": _inline(StoreConfig.model_json_schema(), defs),
            "outputs": {"type": "array", "minItems": 1, "items": {"oneOf": outputs}},
        },
        "required": ["outputs"],
        "$defs": defs,
    }


def configure(parser: argparse.ArgumentParser) -> None:
    """No options: the schema goes to stdout."""


def main(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0
