"""Plugins: a file or module that registers a strategy or a metric, loaded by the command line, a study file or an
entry point, and sent with the driver's run-time registrations to a grid's worker processes."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal import acquisition, metrics, plugins
from fairal.cli import app
from fairal.errors import FairalError

from .test_loop import TINY

PLUGIN = textwrap.dedent('''
    from fairal.acquisition import Base, Statistic, register

    def plugin_margin(maps):
        """1 - mean |2p - 1| inside R."""
        p = maps.proba.double()
        return float((1 - (2 * p - 1).abs())[maps.roi].mean())

    register(Base("plugin-margin", "plugin_margin", "plugin margin", "margin uncertainty"),
             Statistic("plugin_margin", plugin_margin, "margin uncertainty"))
''')


@pytest.fixture
def clean_tables():
    """Whatever a test registers or loads is gone afterwards (the tables are the process's)."""
    before = (dict(acquisition.BASES), dict(acquisition.STATISTICS), dict(metrics.METRICS),
              dict(plugins._LOADED), set(sys.modules))
    entry_points_loaded = plugins._ENTRY_POINTS_LOADED
    yield
    plugins._ENTRY_POINTS_LOADED = entry_points_loaded
    plugins._RESTORED = None
    tables = (acquisition.BASES, acquisition.STATISTICS, metrics.METRICS, plugins._LOADED)
    for table, old in zip(tables, before[:4], strict=True):
        table.clear()
        table.update(old)
    for name in set(sys.modules) - before[4]:
        if name.startswith(("fairal_plugin_", "fake_fairal_plugin", "margin_plugin")):
            del sys.modules[name]


@pytest.fixture
def plugin_file(tmp_path, clean_tables):
    path = tmp_path / "margin_plugin.py"
    path.write_text(PLUGIN)
    return path


def test_a_plugin_file_registers_once_and_is_recorded(plugin_file, monkeypatch):
    module = plugins.load(plugin_file)
    monkeypatch.chdir(plugin_file.parent)
    # loaded once, whatever the spelling of the path (a second execution would register twice and fail)
    assert plugins.load("margin_plugin.py") is module
    assert plugins.load(f"../{plugin_file.parent.name}/./margin_plugin.py") is module
    assert acquisition.parse_strategy("weighted-plugin-margin").spec.statistic == "plugin_margin"
    assert plugins.loaded() == [str(plugin_file.resolve())]
    assert plugins.record() == {"plugins": [str(plugin_file.resolve())], "bases": ["plugin-margin"],
                                "statistics": ["plugin_margin"]}


def test_no_plugin_leaves_the_records_as_they_were(clean_tables):
    assert plugins.record() is None
    work = object()
    assert plugins.for_workers(work) is work  # nothing to send: the task function as it is


def test_a_file_also_importable_as_a_module_is_one_plugin(plugin_file, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    module = plugins.load(plugin_file)
    assert plugins.load("margin_plugin") is module  # the same source: not executed again
    assert list(acquisition.BASES).count("plugin-margin") == 1


def test_a_module_imported_first_is_not_run_again_as_a_file(plugin_file, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(plugin_file.parent))
    module = importlib.import_module("margin_plugin")  # a script imported it (and so registered its base)
    assert plugins.load(plugin_file) is module


def test_bad_plugins_are_refused_naming_them(tmp_path, clean_tables):
    with pytest.raises(FairalError, match=r"plugin .*nothing\.py: no such file"):
        plugins.load(tmp_path / "nothing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1 / 0\n")
    with pytest.raises(FairalError, match=r"broken\.py failed to load: ZeroDivisionError"):
        plugins.load(broken)
    assert not any(name.startswith("fairal_plugin_broken") for name in sys.modules)
    with pytest.raises(FairalError, match="plugin no_such_module_here: No module named"):
        plugins.load("no_such_module_here")
    needs = tmp_path / "needs.py"
    needs.write_text("import not_installed_dependency\n")
    with pytest.raises(FairalError, match=r"needs\.py failed to load: ModuleNotFoundError: .*not_installed_dep"):
        plugins.load(needs)
    clash = tmp_path / "clash.py"
    clash.write_text("from fairal.acquisition import Base, register\nregister(Base('entropy', None, 'x', 'x'))\n")
    with pytest.raises(FairalError, match=r"clash\.py failed to load: FairalError: the base score 'entropy' "
                                          "exists already"):
        plugins.load(clash)


def test_a_registration_that_cannot_be_sent_is_refused_before_work(clean_tables):
    import threading

    lock = threading.Lock()  # a lock cannot be pickled, not even by cloudpickle
    acquisition.register(acquisition.Base("locked", "locked", "locked", "locked"),
                         acquisition.Statistic("locked", lambda maps: float(lock.locked()), "locked"))
    with pytest.raises(FairalError, match="statistic 'locked' registered in this process cannot be sent"):
        plugins.snapshot()


def test_the_command_line_and_the_environment_load_plugins(plugin_file, tmp_path, monkeypatch):
    ok = CliRunner().invoke(app, ["--plugin", str(plugin_file), "monailabel-app", str(tmp_path / "app"),
                                  "--strategy", "weighted-plugin-margin", "--group-by", "site"])
    assert ok.exit_code == 0, ok.output
    settings = json.loads((tmp_path / "app" / "fairal.json").read_text())
    assert settings["strategy"] == "weighted-plugin-margin"
    assert settings["plugins"] == [str(plugin_file.resolve())]  # the server loads it too
    monkeypatch.setenv(plugins.ENV_VAR, str(tmp_path / "missing.py"))
    bad = CliRunner().invoke(app, ["run", "--help"])
    assert bad.exit_code == 2 and "missing.py: no such file" in bad.output


def _installed(tmp_path, monkeypatch, module: str, base: str, entry: str) -> None:
    """A package installed on sys.path: ``module``.py registering the base score ``base``, with the entry point
    ``entry`` in the group fairal.plugins."""
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("plugin-margin", base)
                                           .replace("plugin_margin", base.replace("-", "_")) +
                                           "\ndef setup():\n    pass\n")
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[fairal.plugins]\nmargin = {entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", False)


def test_an_installed_packages_entry_point_is_loaded(tmp_path, monkeypatch, clean_tables):
    _installed(tmp_path, monkeypatch, "fake_fairal_plugin", "entry-margin", "fake_fairal_plugin")
    assert plugins.load_entry_points() == ["fake_fairal_plugin"]
    assert "entry-margin" in acquisition.BASES
    assert plugins.load_entry_points() == []  # once per process


def test_an_entry_point_naming_an_attribute_is_loaded_as_its_module(tmp_path, monkeypatch, clean_tables):
    """``module:attr``: the plugin is the module (what a worker imports), not the attribute's name."""
    _installed(tmp_path, monkeypatch, "fake_fairal_plugin_attr", "attr-margin", "fake_fairal_plugin_attr:setup")
    assert plugins.load_entry_points() == ["fake_fairal_plugin_attr"]
    assert plugins.loaded() == ["fake_fairal_plugin_attr"] and "attr-margin" in acquisition.BASES


def test_a_worker_takes_the_drivers_current_registrations(clean_tables):
    """A worker that served an earlier grid (Ray keeps its workers) gets the new version of a registration and
    loses one the driver dropped."""
    metrics.register_metric(metrics.Metric("worst", "worst", True, lambda overall, means: 1.0))
    first = plugins.snapshot()
    metrics.unregister_metric("worst")
    metrics.register_metric(metrics.Metric("worst", "worst", True, lambda overall, means: 2.0))
    second = plugins.snapshot()
    metrics.unregister_metric("worst")
    as_worker = {"origin": "another process"}
    plugins.Extensions(first.plugins, first.registrations, **as_worker).restore()
    assert metrics.METRICS["worst"].compute(0.0, None) == 1.0
    plugins.Extensions(second.plugins, second.registrations, **as_worker).restore()
    assert metrics.METRICS["worst"].compute(0.0, None) == 2.0
    plugins.Extensions((), b"", **as_worker).restore()
    assert "worst" not in metrics.METRICS
    second.restore()  # in the driver itself: nothing changes
    assert "worst" not in metrics.METRICS


def test_a_grid_task_carries_its_runs_parsed_strategy_of_a_registered_base(clean_tables, tiny_dataset):
    """The grid sends each run typed (its strategy parsed once, in the driver): a task whose strategy's base was
    registered at run time pickles, unpickles in a worker that does not know the base yet (a Strategy holds its
    parts' names, looked up in the tables when used), and is the driver's strategy once the driver's registrations
    are restored there."""
    import pickle

    from fairal.config import get_profile
    from fairal.grid.executors import Task
    from fairal.run.loop import RunSpec

    acquisition.register(acquisition.Base("run-time-margin", "run_time_margin", "margin", "margin"),
                         acquisition.Statistic("run_time_margin", lambda m: float(m.proba.mean()), "margin"))
    spec = RunSpec(str(tiny_dataset), "power-weighted-run-time-margin-t0.5", "balanced", 0, get_profile("smoke"))
    sent = pickle.dumps((plugins.snapshot(), Task.for_lockstep([Task.for_run(spec, "out/a")], "out")))
    acquisition.unregister("run-time-margin")  # as in a fresh worker
    extensions, task = pickle.loads(sent)
    got = task.runs[0].spec
    assert got == spec and got.strategy.weighted and got.strategy.temperature == 0.5
    assert "run-time-margin" not in acquisition.BASES
    plugins.Extensions(extensions.plugins, extensions.registrations, origin="another process").restore()
    assert got.strategy.spec.statistic == "run_time_margin" and not got.strategy.needs_dropout


def test_study_plugins_and_run_time_registrations_reach_the_grid_workers(plugin_file, tiny_dataset, tmp_path):
    """A study file's plugin and a metric registered here (a lambda) are known in the grid's worker processes
    (spawned: they import fairal afresh), so their columns are in the records the workers write."""
    from fairal.config import get_profile
    from fairal.grid.driver import run_study
    from fairal.grid.spec import load_study

    study_file = tmp_path / "plugin.toml"
    study_file.write_text(textwrap.dedent(f'''
        plugins = ["{plugin_file.name}"]
        strategies = ["weighted-plugin-margin"]
        reference = "weighted-plugin-margin"
        inits = ["balanced"]
        seeds = 1
        [datasets.tiny]
        folder = "{tiny_dataset}"
    '''))
    without = tmp_path / "without.toml"
    without.write_text(study_file.read_text().replace(f'plugins = ["{plugin_file.name}"]', ""))
    with pytest.raises(FairalError, match="unknown strategy"):
        load_study(without)  # the strategy is the plugin's
    study = load_study(study_file)
    metrics.register_metric(metrics.Metric("worst_dice", "worst-group Dice", True,
                                           lambda overall, means: means.min(axis=-1)))
    out = tmp_path / "out"
    run_study(study, out, get_profile("smoke", TINY), jobs=1, progress=False)
    run = out / "runs" / "tiny" / "balanced" / "weighted-plugin-margin" / "seed-0"
    rounds = pd.read_csv(run / "rounds.csv")
    assert (rounds["worst_dice"] == rounds[["dice_g1", "dice_g2"]].min(axis=1)).all()
    selections = pd.read_csv(run / "selections.csv")
    assert selections["plugin_margin"].between(0, 1).all()
    assert selections["score"].to_numpy() == pytest.approx((selections["weight"] *
                                                             selections["plugin_margin"]).to_numpy())
    extensions = json.loads((run / "config.json").read_text())["extensions"]
    assert extensions["plugins"] == [str(plugin_file.resolve())] and extensions["metrics"] == ["worst_dice"]
    assert json.loads((out / "study.json").read_text())["study"]["plugins"] == [str(plugin_file.resolve())]
    from fairal.report import build_report

    build_report(run, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "metrics worst_dice" in page and "margin_plugin.py" in page  # the settings say what the run used


def test_the_report_shows_a_runs_extensions():
    from fairal.report.tidy import recorded

    about = recorded({"extensions": {"plugins": ["/lab/margin.py"], "bases": ["margin"], "metrics": ["worst_dice"]}})
    assert about["extensions"] == "plugins /lab/margin.py; bases margin; metrics worst_dice"
    assert "extensions" not in recorded({"versions": {"fairal": "1"}})  # a plain run's records: no such line


def test_the_strategies_command_lists_a_plugins_base_and_its_source(plugin_file, monkeypatch):
    from rich.console import Console

    from fairal import cli

    monkeypatch.setattr(cli, "stdout", Console(width=300))  # the plugin's path on one line
    with pytest.raises(FairalError, match="a base score of a plugin is known once the plugin is loaded"):
        acquisition.parse_strategy("weighted-plugin-margin")  # not loaded yet
    res = CliRunner().invoke(app, ["--plugin", str(plugin_file), "strategies"], terminal_width=200)
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "plugin-margin" in line)
    assert "margin uncertainty" in row and "plugin " in row and "margin_plugin.py" in row
    assert re.search(r"│ entropy\s+│ mean entropy\s+│\s+│ built in", res.output)


def test_the_documented_extension_loads_as_a_plugin(tmp_path, clean_tables):
    """docs/api.md's example, as a file: a plugin that adds the strategy and the metric it says."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_metric(" in b)
    (tmp_path / "margin.py").write_text(block)
    plugins.load(tmp_path / "margin.py")
    assert acquisition.parse_strategy("stochastic-weighted-margin-t0.5").spec.statistic == "margin"
    assert "worst_dice" in metrics.METRICS
