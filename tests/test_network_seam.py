"""The network seam (fairal.run.network): a network registered by a plugin is the one that every part of fairal
trains and loads, in this process and in the processes it starts: the baselines, a grid's spawned workers,
`fairal query` (training and --model) and the MONAI Label app. The plugin's network writes a line to a log file each
time it is built (the process id and how), so the test sees who built it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fairal import plugins
from fairal.cli import app
from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.run import network
from fairal.run.network import Network, build_network, load_network, register_network

from .own_data import make_study
from .test_loop import TINY
from .test_plugins import clean_tables  # noqa: F401  (the fixture)

LOG_VAR = "FAIRAL_TEST_NETWORK_LOG"
PLUGIN = textwrap.dedent('''
    """A plugin network: one convolution block and a 1x1x1 head, which logs each build."""
    import math
    import os

    from torch import nn

    from fairal.run.network import Network, register_network


    class TinyNet(nn.Module):
        def __init__(self, settings):
            super().__init__()
            self.body = nn.Sequential(nn.Conv3d(settings.in_channels, 4, 3, padding=1), nn.ReLU(),
                                      nn.Dropout3d(settings.dropout))
            self.head = nn.Conv3d(4, settings.out_channels, 1)
            if settings.foreground_prior is not None:
                p = settings.foreground_prior
                nn.init.constant_(self.head.bias, math.log(p / (1 - p)))

        def feature_layers(self):
            return [self.body]

        def forward(self, x):
            return self.head(self.body(x))


    def build(settings):
        with open(os.environ["FAIRAL_TEST_NETWORK_LOG"], "a") as log:
            log.write(f"{os.getpid()} dropout={settings.dropout} prior={settings.foreground_prior is not None}\\n")
        return TinyNet(settings)


    register_network(Network("tiny", build, "a one-block network that logs its builds"))
''')
SETS = ["--set", "steps=20", "--set", "batch_size=4", "--set", "network=tiny"]


@pytest.fixture
def tiny_plugin(tmp_path, monkeypatch, clean_tables):  # noqa: F811
    """The plugin file (not loaded yet), its build log (an environment variable: spawned processes inherit it) and
    a table of networks restored afterwards."""
    before = dict(network.NETWORKS)
    path = tmp_path / "tiny_network.py"
    path.write_text(PLUGIN)
    log = tmp_path / "builds.log"
    log.touch()
    monkeypatch.setenv(LOG_VAR, str(log))
    yield path, log
    network.NETWORKS.clear()
    network.NETWORKS.update(before)


def _builders(log: Path) -> list[int]:
    """The process id of each build in the log."""
    return [int(line.split()[0]) for line in log.read_text().splitlines()]


def test_the_built_in_network_is_the_papers_unet_bit_for_bit():
    from fairal.run.model import UNet3D

    profile = get_profile("smoke")
    assert "network" not in profile.as_dict()  # records of the built-in network keep their form
    torch.manual_seed(3)
    seam = build_network(profile, dropout=0.2, foreground_prior=0.1)
    torch.manual_seed(3)
    direct = UNet3D(features=profile.features, foreground_prior=0.1, dropout=0.2)
    for (name, a), b in zip(seam.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert get_profile("smoke", {"network": "other"}).as_dict()["network"] == "other"


def test_registration_and_profile_names_are_checked(tiny_plugin):
    entry = Network("twin", lambda settings: torch.nn.Identity())
    register_network(entry)
    for bad, says in ((entry, "exists already"), (Network("unet", entry.build), "exists already"),
                      (Network("Bad Name", entry.build), "lower-case letters"),
                      (Network("nobuild", None), "build must be callable"), ("twin", "takes a fairal.run.network")):
        with pytest.raises(FairalError, match=says):
            register_network(bad)
    with pytest.raises(FairalError, match="is built in"):
        network.unregister_network("unet")
    with pytest.raises(FairalError, match="setting network must be a network's name"):
        get_profile("smoke", {"network": "../x"})
    with pytest.raises(FairalError, match="unknown network 'absent'; networks: unet, twin"):
        build_network(get_profile("smoke", {"network": "absent"}))
    register_network(Network("notamodule", lambda settings: "a string"))
    with pytest.raises(FairalError, match="build must return a torch.nn.Module"):
        build_network(get_profile("smoke", {"network": "notamodule"}))
    assert plugins.record() == {"plugins": [], "networks": ["notamodule", "twin"]}


def test_a_checkpoint_is_loaded_only_into_its_network(tiny_plugin, tmp_path):
    from fairal.run.model import save_checkpoint

    plugins.load(tiny_plugin[0])
    tiny = get_profile("smoke", {"network": "tiny"})
    model = build_network(tiny, foreground_prior=0.2)
    save_checkpoint(model, tmp_path / "tiny.pt", {"round": 0, **network.network_meta(tiny)})
    loaded, meta = load_network(tmp_path / "tiny.pt", tiny, dropout=0.1)
    assert meta == {"round": 0, "network": "tiny"} and type(loaded).__name__ == "TinyNet"
    assert torch.equal(loaded.head.bias, model.head.bias)
    with pytest.raises(FairalError, match="holds the network 'tiny', the profile's network is 'unet'"):
        load_network(tmp_path / "tiny.pt", get_profile("smoke"))
    save_checkpoint(build_network(get_profile("smoke")), tmp_path / "unet.pt", {"round": 0})
    with pytest.raises(FairalError, match="holds the network 'unet', the profile's network is 'tiny'"):
        load_network(tmp_path / "unet.pt", tiny)


def test_the_documented_network_loads_as_a_plugin_and_trains(tiny_plugin, tmp_path):
    """docs/api.md's network, as a file: a plugin whose network the profile's setting builds and that learns."""
    import re

    from fairal.run.train import TrainConfig, train_model

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_network(" in b)
    (tmp_path / "small.py").write_text(block)
    plugins.load(tmp_path / "small.py")
    profile = get_profile("smoke", {"network": "small", "features": "4"})
    images = torch.rand(4, 1, 8, 8, 8)
    labels = (images > 0.5).to(torch.uint8)
    result = train_model(images, labels, TrainConfig(steps=30, lr=1e-2, batch_size=4, seed=0, min_train_dice=0.0),
                         lambda: build_network(profile, dropout=0.1, foreground_prior=0.5))
    assert type(result.model).__name__ == "Small" and result.train_dice > 0.8


def test_a_run_time_network_reaches_a_worker(tiny_plugin):
    """A network registered in the driver (no plugin file) is sent to the workers with the other registrations."""
    register_network(Network("here", lambda settings: torch.nn.Identity()))
    sent = plugins.snapshot()
    network.unregister_network("here")
    plugins.Extensions(sent.plugins, sent.registrations, origin="another process").restore()
    assert "here" in network.NETWORKS
    assert isinstance(build_network(get_profile("smoke", {"network": "here"})), torch.nn.Identity)


def test_baselines_and_spawned_grid_workers_build_the_plugins_network(tiny_plugin, tiny_dataset, tmp_path):
    from fairal.grid.driver import run_study
    from fairal.grid.spec import load_study

    plugin, log = tiny_plugin
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(textwrap.dedent(f'''
        plugins = ["{plugin.name}"]
        strategies = ["entropy", "weighted-localized-entropy"]
        reference = "weighted-localized-entropy"
        inits = ["balanced"]
        seeds = 1
        baselines = true
        [datasets.tiny]
        folder = "{tiny_dataset}"
    '''))
    out = tmp_path / "out"
    profile = get_profile("smoke", {**TINY, "network": "tiny", "cohort_size": "4"})
    run_study(load_study(study_file), out, profile, jobs=2, pack="off", progress=False)
    builders = _builders(log)
    assert builders and os.getpid() not in builders  # every build was in a spawned worker
    run = out / "runs" / "tiny" / "balanced" / "entropy" / "seed-0"
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["profile"]["network"] == "tiny"
    assert config["extensions"]["networks"] == ["tiny"]
    model, meta = load_network(run / "checkpoints" / "round-02.pt", profile)
    assert meta["network"] == "tiny" and type(model).__name__ == "TinyNet"
    baseline = json.loads(next(out.glob("baseline/**/baseline.json")).read_text())
    assert baseline["profile"]["network"] == "tiny"
    n_builds = len(_builders(log))
    # the same study without the plugin's network: refused before any work, naming it
    plugins._LOADED.clear()
    network.unregister_network("tiny")
    with pytest.raises(FairalError, match="unknown network 'tiny'"):
        run_study(_without_plugin(study_file), tmp_path / "out2", profile, jobs=1, progress=False)
    assert not (tmp_path / "out2").exists() and len(_builders(log)) == n_builds


def _without_plugin(study_file: Path):
    from fairal.grid.spec import load_study

    bare = study_file.with_name("bare.toml")
    bare.write_text("\n".join(line for line in study_file.read_text().splitlines() if not line.startswith("plugins")))
    return load_study(bare)


def test_query_trains_and_loads_the_plugins_network(tiny_plugin, tmp_path):
    plugin, log = tiny_plugin
    csv = make_study(tmp_path / "study", per_site=4, labeled_per_site=2, unknown=1)
    runner = CliRunner()
    base = ["query", str(csv), "--budget", "1", "--group-by", "site", "--profile", "smoke", "--quiet"]
    res = runner.invoke(app, ["--plugin", str(plugin), *base, "--out", str(tmp_path / "q0"), *SETS])
    assert res.exit_code == 0, res.output
    trained = len(_builders(log))
    assert trained >= 1
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "q1"), "--model", str(tmp_path / "q0" / "model.pt"),
                              *SETS])
    assert res.exit_code == 0, res.output
    assert len(_builders(log)) == trained + 1  # --model: one build, to load the weights into
    info = json.loads((tmp_path / "q1" / "query.json").read_text())
    assert info["profile"]["network"] == "tiny" and info["training"] == {"trained": False}
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "q2"), "--model", str(tmp_path / "q0" / "model.pt")])
    assert res.exit_code == 2 and "holds the network 'tiny', the profile's network is 'unet'" in res.output
    assert not (tmp_path / "q2").exists()


def test_the_monailabel_app_trains_and_loads_the_plugins_network(tiny_plugin, tmp_path):
    """The app as the server runs it: a fresh process that loads the app folder's main.py; the plugin is loaded by
    the app (from its settings), not by the process that wrote the app."""
    pytest.importorskip("monailabel", reason="MONAI Label is not installed (make monailabel)")
    plugin, log = tiny_plugin
    studies = tmp_path / "studies"
    study = pd.read_csv(make_study(tmp_path / "src", per_site=3, labeled_per_site=2, unknown=1), dtype=str,
                        keep_default_na=False).to_dict("records")
    (studies / "labels" / "final").mkdir(parents=True)
    for case in study:
        (studies / f"{case['case_id']}.nii.gz").write_bytes((tmp_path / "src" / case["image"]).read_bytes())
        if case["label"]:
            (studies / "labels" / "final" / f"{case['case_id']}.nii.gz").write_bytes(
                (tmp_path / "src" / case["label"]).read_bytes())
    res = CliRunner().invoke(app, ["--plugin", str(plugin), "monailabel-app", str(tmp_path / "app"), "--profile",
                                   "smoke", *SETS])
    assert res.exit_code == 0, res.output
    unlabeled = next(c["case_id"] for c in study if not c["label"])
    script = textwrap.dedent(f'''
        import importlib.util, json, os
        spec = importlib.util.spec_from_file_location("main", {str(tmp_path / "app" / "main.py")!r})
        main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main)
        app = main.App({str(tmp_path / "app")!r}, {str(studies)!r}, {{}})
        first = app.next_sample({{"strategy": "weighted-localized-entropy"}})
        result = app.infer({{"model": "fairal", "image": {unlabeled!r}}})
        print(json.dumps({{"pid": os.getpid(), "first": first.get("id"), "label": str(result.get("file"))}}))
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    lines = log.read_text().splitlines()
    assert answer["first"] and lines and all(int(line.split()[0]) == answer["pid"] for line in lines)
    # the app trained its first model (built with a foreground prior, again on a collapse) and loaded it to rank and
    # to segment (built without one)
    assert sum("prior=True" in line for line in lines) >= 1 and sum("prior=False" in line for line in lines) == 2
    meta = torch.load(tmp_path / "app" / "model" / "model.pt", weights_only=True)["meta"]
    assert meta["network"] == "tiny"

