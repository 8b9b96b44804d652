"""``twin-sidecar --help`` is complete: every option of every command says what it takes."""

from __future__ import annotations

import argparse

import pytest

from sidecar.cli import build_parser
from sidecar.engine.forecast import ForecastBank, model_names


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_action_has_help(command: str) -> None:
    parser = _subparsers()[command]
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == [], f"twin-sidecar {command}: options without help: {missing}"
    parser.format_help()   # every %(default)s expands


def test_every_command_has_help() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {c.dest for c in sub._choices_actions} == set(_subparsers())
    assert all(c.help for c in sub._choices_actions)


@pytest.mark.parametrize("command", ["forecast", "backtest"])
def test_model_lists_the_banks_models(command: str) -> None:
    text = " ".join(_subparsers()[command].format_help().split())
    names = model_names()
    assert names == ForecastBank((300.0,)).model_names
    assert all(n in text for n in names) and "'auto'" in text
