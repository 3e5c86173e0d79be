"""The configuration shown in the README is configuration the daemon accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from forwarder.settings import parse_settings

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.S)


def _environ(text: str) -> dict[str, str]:
    return {name: "x" * 24 for name in re.findall(r"\$\{([A-Z_]+)\}", text)}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_yaml_validates(block: str) -> None:
    # Secret files named in the README do not exist here; a variable stands in for them.
    block = re.sub(r"\$\{file:[^}]+\}", "${SECRET_FROM_FILE}", block)
    data = yaml.safe_load(block)
    if isinstance(data, list):  # a recipe: one entry under outputs
        data = {"outputs": data}
    settings = parse_settings(data, environ=_environ(block))
    assert settings.outputs


def test_readme_has_a_recipe_per_siem() -> None:
    for heading in ("Splunk", "Elastic / OpenSearch", "QRadar", "ArcSight", "rsyslog relay"):
        assert re.search(rf"^### .*{re.escape(heading)}", README, re.M), heading
    assert len(BLOCKS) >= 6
