"""What the command line says about `dead-letters` before an operator runs it."""

from __future__ import annotations

import argparse

import pytest

from forwarder.cli import dead_letters, main


def dead_letters_actions() -> list[str]:
    """The actions `dead-letters` takes, in the order its own help lists them."""
    parser = argparse.ArgumentParser()
    dead_letters.configure(parser)
    choices = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return list(choices)


def test_the_top_level_help_names_every_dead_letters_action(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    [line] = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.split()[:1] == ["dead-letters"]
    ]
    *first, last = dead_letters_actions()
    assert line.split(None, 1)[1] == f"{', '.join(first)} or {last} dead letters"
