"""The configuration shown in the README and the docs is configuration the daemon accepts, and
configuration the JSON Schema that `canary-forwarder schema` prints (for editors) accepts too."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from forwarder.cli.schema import config_schema
from forwarder.settings import parse_settings

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.S)
# A well-formed Elastic Cloud ID, for `${ELASTIC_CLOUD_ID}`.
_CLOUD_ID = "demo:" + base64.b64encode(b"es.example.com$0123abcd$4567ef01").decode()


def _config(block: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The configuration a block shows, with an environment for its variables; None when the
    block is not one (a fragment, a compose file): a full configuration, or a recipe (a list
    of outputs)."""
    # Secret files named in the docs do not exist here; a variable stands in for them.
    block = re.sub(r"\$\{file:[^}]+\}", "${SECRET_FROM_FILE}", block)
    data = yaml.safe_load(block)
    if isinstance(data, list) and all(isinstance(item, dict) and "type" in item for item in data):
        data = {"outputs": data}
    if not (isinstance(data, dict) and "outputs" in data):
        return None
    environ = {
        name: _CLOUD_ID if name.endswith("CLOUD_ID") else "x" * 24
        for name in re.findall(r"\$\{([A-Z_]+)\}", block)
    }
    return data, environ


CONFIG_BLOCKS = [
    pytest.param(config, id=f"{page.name}-{index}")
    for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
    for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S))
    if (config := _config(block)) is not None
]


@pytest.mark.parametrize("config", CONFIG_BLOCKS)
def test_documented_yaml_validates(config: tuple[dict[str, Any], dict[str, str]]) -> None:
    data, environ = config
    assert parse_settings(data, environ=environ).outputs


@pytest.mark.parametrize("config", CONFIG_BLOCKS)
def test_documented_yaml_passes_the_json_schema(
    config: tuple[dict[str, Any], dict[str, str]],
) -> None:
    jsonschema.validate(config[0], config_schema())


def test_the_docs_show_configuration() -> None:
    assert len(CONFIG_BLOCKS) >= 10


def test_readme_has_a_recipe_per_siem() -> None:
    for heading in ("Splunk", "Elastic / OpenSearch", "QRadar", "ArcSight", "rsyslog relay"):
        assert re.search(rf"^### .*{re.escape(heading)}", README, re.M), heading
    assert len(BLOCKS) >= 6


EXAMPLE_CONFIG = ROOT / "config" / "example.yaml"
# A commented-out option of the example config: `  # key: value`, to uncomment as it stands.
_COMMENTED_OPTION = re.compile(r"^(\s*)# ([a-z_]+: .*)$", re.M)


@pytest.mark.parametrize(
    "line",
    [m.group(0) for m in _COMMENTED_OPTION.finditer(EXAMPLE_CONFIG.read_text())],
)
def test_each_commented_option_of_the_example_config_works_uncommented(line: str) -> None:
    text = EXAMPLE_CONFIG.read_text()
    option = _COMMENTED_OPTION.match(line)
    assert option is not None
    uncommented = text.replace(line, option.group(1) + option.group(2), 1)
    config = _config(uncommented)
    assert config is not None
    data, environ = config
    assert parse_settings(data, environ=environ).outputs


def test_the_example_config_has_commented_options() -> None:
    assert len(_COMMENTED_OPTION.findall(EXAMPLE_CONFIG.read_text())) >= 3


# `format: {...}` written inline in the prose.
INLINE_FORMATS = sorted(
    {
        snippet
        for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
        for snippet in re.findall(r"`(format: \{[^`]*\})`", page.read_text())
    }
)


@pytest.mark.parametrize("snippet", INLINE_FORMATS)
def test_inline_format_snippets_validate(snippet: str) -> None:
    output = {"name": "o", "type": "file", "path": "events.jsonl", **yaml.safe_load(snippet)}
    assert parse_settings({"outputs": [output]}, environ={}).outputs
