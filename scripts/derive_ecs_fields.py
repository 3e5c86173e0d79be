#!/usr/bin/env python3
"""Derive forwarder/data/ecs_fields.json from Elastic's generated/ecs/ecs_flat.yml.

    python scripts/derive_ecs_fields.py path/to/ecs_flat.yml [--ecs-version 9.4.0] [--out FILE]

The table keeps what a test needs to validate a document against ECS: every field name with its
type (`keyword`, `ip`, `date`, `long`, ...; `[]` appended when ECS normalises it to an array),
the value type of `object` fields, the allowed values of the categorisation fields and, per
`event.category`, its expected `event.type` values. Run it again when ECS is upgraded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "forwarder" / "data" / "ecs_fields.json"


def derive(flat: dict[str, Any], ecs_version: str, source_sha256: str) -> dict[str, Any]:
    """The compact table for a parsed ecs_flat.yml."""
    fields: dict[str, str] = {}
    object_types: dict[str, str] = {}
    allowed: dict[str, list[str]] = {}
    expected_types: dict[str, list[str]] = {}
    for name, spec in sorted(flat.items()):
        array = "array" in (spec.get("normalize") or [])
        fields[name] = spec["type"] + ("[]" if array else "")
        if spec.get("object_type"):
            object_types[name] = spec["object_type"]
        for value in spec.get("allowed_values") or []:
            allowed.setdefault(name, []).append(value["name"])
            if name == "event.category":
                expected_types[value["name"]] = list(value.get("expected_event_types") or [])
    return {
        "_source": (
            f"elastic/ecs v{ecs_version} generated/ecs/ecs_flat.yml (sha256 {source_sha256}), "
            "Apache-2.0; derived by scripts/derive_ecs_fields.py"
        ),
        "ecs_version": ecs_version,
        "fields": fields,
        "object_types": object_types,
        "allowed_values": allowed,
        "expected_event_types": expected_types,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ecs_flat", type=Path, help="path to generated/ecs/ecs_flat.yml")
    parser.add_argument("--ecs-version", default="9.4.0", help="the ECS release of that file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    args = parser.parse_args()
    raw = args.ecs_flat.read_bytes()
    # The C loader reads the 1.2 MB file in under a second; both loaders are the safe ones.
    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    flat = yaml.load(raw, Loader=safe_loader)  # noqa: S506
    table = derive(flat, args.ecs_version, hashlib.sha256(raw).hexdigest())
    args.out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(table['fields'])} fields")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
