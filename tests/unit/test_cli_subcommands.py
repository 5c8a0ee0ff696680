"""Every subcommand module loads, and one that cannot is an error naming it, never silently absent."""

from __future__ import annotations

import sys
import types

import pytest

from vqaserve import cli

pytestmark = pytest.mark.unit


def test_every_subcommand_is_registered() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers here
    assert set(commands.choices) == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("how", ["missing", "broken"])
def test_a_subcommand_that_cannot_load_is_one_line_and_exit_1(how: str, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, "frobnicate"])
    if how == "broken":  # the module is there, but fails on import (a missing dependency, a syntax slip)
        broken = types.ModuleType("vqaserve.cli.frobnicate")
        broken.__dict__["register"] = None  # not callable: registering it fails
        monkeypatch.setitem(sys.modules, "vqaserve.cli.frobnicate", broken)
    assert cli.main(["--help"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vqa: error: the subcommand 'frobnicate' could not be loaded") and "Traceback" not in err
    assert err.count("\n") == 1
    with pytest.raises(cli.BrokenSubcommand):  # --debug shows the cause
        cli.main(["--debug", "ask", "--help"])
