"""The command line as a newcomer meets it: --help in click's words, --version, a mistyped strategy, settings a
command does not use."""

from __future__ import annotations

import dataclasses
import re
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

import fairal
from fairal.acquisition import did_you_mean, parse_strategy
from fairal.cli import app, value_name
from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.owndata.query import QUERY_SETTINGS, query_profile

runner = CliRunner()


def _commands(group, path=()) -> list[list[str]]:
    """Every command of the app, by the words that call it (``export nnunet``): a new command is tested too."""
    found = []
    for name, command in sorted(group.commands.items()):
        sub = getattr(command, "commands", None)
        found += _commands(command, (*path, name)) if sub else [[*path, name]]
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_found():
    # the parametrized checks below run once per command: an empty walk would make them vacuous
    assert {("study",), ("query",), ("calibrate-harm",), ("export", "nnunet")} <= {tuple(c) for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_speaks_no_python(command):
    res = runner.invoke(app, [*command, "--help"], terminal_width=120, prog_name="fairal")
    assert res.exit_code == 0, res.output
    usage = res.output.splitlines()[0]
    assert usage.startswith(f"Usage: fairal {' '.join(command)} [OPTIONS]")
    assert "{" not in usage and "}" not in usage, usage
    for leak in ("list[", "<str>", "<int>", "<float>", "<path>", "Path]", "NoneType"):
        assert leak not in res.output, (leak, res.output)


def test_help_names_arguments_and_values_as_click_does():
    query = runner.invoke(app, ["query", "--help"], terminal_width=120, prog_name="fairal").output
    assert query.splitlines()[0] == "Usage: fairal query [OPTIONS] CSV"
    assert re.search(r"--budget INTEGER\s+How many cases", query)
    assert re.search(r"--group-by COLUMN\s", query) and re.search(r"--set KEY=VALUE\s", query)
    assert re.search(r"--spacing FLOAT\s", query) and re.search(r"--out PATH\s", query)
    fields = runner.invoke(app, ["build-model", "--help"], terminal_width=120, prog_name="fairal").output
    assert fields.splitlines()[0] == "Usage: fairal build-model [OPTIONS] FIELDS..."
    export = runner.invoke(app, ["export", "nnunet", "--help"], terminal_width=120, prog_name="fairal").output
    assert export.splitlines()[0] == "Usage: fairal export nnunet [OPTIONS] DATA_DIR OUT"


def test_value_names():
    assert value_name(int) == "INTEGER" and value_name(Path | None) == "PATH"
    assert value_name(Annotated[list[str] | None, "x"]) == "TEXT"
    assert value_name(tuple[int, int, int]) == "INTEGER INTEGER INTEGER"
    assert value_name(float | None) == "FLOAT" and value_name(bytes) == "VALUE"


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output == f"fairal {fairal.__version__}\n"
    assert fairal.__version__ == version("fairal")  # the package's own number is the installed one


def test_a_mistyped_strategy_gets_a_suggestion():
    with pytest.raises(FairalError, match=r"unknown strategy 'weighted-localised-entropy' \(did you mean "
                                          r"'weighted-localized-entropy'"):
        parse_strategy("weighted-localised-entropy")
    assert did_you_mean("entopy") == " (did you mean 'entropy'?)"
    assert did_you_mean("weigthed-bald-t0.5") == " (did you mean 'weighted-bald-t0.5'?)"  # the temperature kept
    assert did_you_mean("Localized_Entropy") == " (did you mean 'localized-entropy'?)"
    assert did_you_mean("coreset") == " (did you mean 'core-set'?)"
    assert did_you_mean("badge") == ""
    res = runner.invoke(app, ["run", "data", "--strategy", "entopy", "--init", "balanced", "--out", "x"])
    assert res.exit_code == 2 and "(did you mean 'entropy'?)" in res.output, res.output


def test_a_query_refuses_settings_it_does_not_use(tmp_path):
    with pytest.raises(FairalError, match=r"--set final_size: fairal query does not use the setting final_size "
                                          r"\(a query trains one model .* no active-learning schedule"):
        query_profile("standard", {"final_size": "5"})
    with pytest.raises(FairalError, match=r"--set stesp: unknown setting \(did you mean 'steps'\?\)"):
        query_profile("standard", {"stesp": "5"})
    assert query_profile("smoke", {"steps": "7", "roi-dilation": "2"}).roi_dilation == 2
    # every setting a query takes is a profile's (the network one too, which as_dict leaves out at its default)
    assert set(QUERY_SETTINGS) <= {f.name for f in dataclasses.fields(get_profile("smoke"))}
    csv = tmp_path / "study.csv"
    csv.write_text("case_id,image,label\n")
    res = runner.invoke(app, ["query", str(csv), "--budget", "1", "--out", str(tmp_path / "q"),
                              "--set", "final_size=5"])
    assert res.exit_code == 2 and "does not use the setting final_size" in res.output, res.output
    assert "impossible budget" not in res.output and "steps of" not in res.output


def test_an_impossible_schedule_says_what_is_wrong():
    with pytest.raises(FairalError, match=r"settings init_size 10, acquire 4, final_size 85; .* final_size must be "
                                          r"one of 10, 14, 18, 22, \.\.\."):
        get_profile("standard", {"final_size": "85"})
