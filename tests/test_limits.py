"""Size limits (fairal.limits, docs/limits.md): every size a user or a record can ask for is refused before any
allocation or work, with the limit and the size asked for in one line; nothing is allocated (tracemalloc's peak)
and no folder is made (what exists afterwards). And records that lie: a tampered study.json, config.json or
cases.csv is one line naming the file, never a traceback."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import fairal.limits
from fairal import limits
from fairal.cli import app
from fairal.errors import FairalError
from fairal.run.model import UNet3D
from fairal.run.train import TrainConfig

from .own_data import make_study
from .test_hostile_inputs import _hashes, _one_line_error

runner = CliRunner()
#: What a refusal may allocate: far below any of the sizes refused here (the smallest is hundreds of MB).
SMALL = 50 * 2**20


def _peak(fn):
    """``fn()``'s result and the peak of Python's allocations while it ran (numpy and torch report theirs)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _refused(args: list[str], *needles: str) -> None:
    """The command refused in one line holding every needle, with a small peak of allocations."""
    res, peak = _peak(lambda: runner.invoke(app, args))
    _one_line_error(res, *needles)
    assert peak < SMALL, peak


def _study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text('profile = "smoke"\nseeds = 1\ninits = ["balanced"]\nstrategies = ["random"]\n'
                    f'reference = "random"\n{text}')
    return str(path)


# --- grid voxels ------------------------------------------------------------------------------------------------------


def test_a_simulated_grid_beyond_max_voxels_is_refused_before_any_work(tmp_path):
    out = tmp_path / "d"
    _refused(["simulate", str(out), "--shape", "2000x2000x2000", "--quiet"], "--shape 2000 x 2000 x 2000",
             "8,000,000,000 voxels", f"{limits.MAX_VOXELS:,}")
    big = _study(tmp_path, '[datasets.a]\nsimulate = { shape = "2000x2000x2000" }\n')
    _refused(["study", big, str(out)], "s.toml", "dataset a: shape 2000 x 2000 x 2000", f"{limits.MAX_VOXELS:,}")
    sim_shape = _study(tmp_path, '[set]\nsim_shape = "2000x2000x2000"\n[datasets.a]\nsimulate = {}\n')
    _refused(["study", sim_shape, str(out)], "s.toml", "setting sim_shape has 2000 x 2000 x 2000",
             f"{limits.MAX_VOXELS:,}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# --- subjects, and subjects x voxels against the disk and the memory -----------------------------------------------


def test_a_dataset_of_too_many_subjects_is_refused_before_any_work(tmp_path):
    out = tmp_path / "d"
    _refused(["simulate", str(out), "--n-subjects", "100000000", "--quiet"], "--n-subjects asks for 100,000,000",
             f"{limits.MAX_SUBJECTS:,}")
    _refused(["simulate", str(out), "--n-subjects", "60000", "--eval-per-group", "30000", "--quiet"],
             "--eval-per-group makes 120,000 subjects", f"{limits.MAX_SUBJECTS:,}")
    many = _study(tmp_path, '[datasets.a]\nsimulate = { n_subjects = 100000000 }\n')
    _refused(["study", many, str(out)], "s.toml", "n_subjects asks for 100,000,000", f"{limits.MAX_SUBJECTS:,}")
    _refused(["study", _study(tmp_path, '[set]\nn_subjects = 100000000\n[datasets.a]\nsimulate = {}\n'), str(out)],
             "setting n_subjects asks for 100,000,000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_a_dataset_larger_than_the_free_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(fairal.limits, "free_disk", lambda folder: 10 * 10**6)
    # 100 subjects x 80 x 96 x 56 voxels x 1.5 bytes = 64.5 MB
    out = tmp_path / "d"
    _refused(["simulate", str(out), "--n-subjects", "100", "--shape", "80x96x56", "--quiet"],
             "100 subjects of 80 x 96 x 56 voxels take about 64.5 MB on disk", "10.0 MB free")
    study = _study(tmp_path, '[set]\nn_subjects = 100\neval_per_group = 0\n[datasets.a]\nsimulate = {}\n')
    _refused(["study", study, str(out)], "s.toml, dataset a: 100 subjects", "64.5 MB on disk", "10.0 MB free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_a_study_whose_volumes_exceed_the_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(fairal.limits, "available_memory", lambda: 10**6)
    # smoke: 32 subjects and 4 + 4 for evaluation, 80 x 96 x 56 at downsample 2 (40 x 48 x 28), 5 bytes a voxel
    whole = _study(tmp_path, '[set]\ncrop_margin = "none"\n[datasets.a]\nsimulate = {}\n')
    _refused(["study", whole, str(tmp_path / "out")], "s.toml, dataset a: 40 subjects of 80 x 96 x 56 voxels",
             f"take {40 * 40 * 48 * 28 * 5 / 1e6:.1f} MB in memory", "1.0 MB available")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(fairal.limits, "available_memory", lambda: 10**9)  # it fits: no refusal
    limits.check_room(40, (80, 96, 56), tmp_path, "x", downsample=2)


# --- seeds, steps, network width --------------------------------------------------------------------------------------


def test_seeds_beyond_the_limit_are_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    study = Path(_study(tmp_path, '[datasets.a]\nsimulate = {}\n'))
    study.write_text(study.read_text().replace("seeds = 1", "seeds = 100000000"))
    _refused(["study", str(tmp_path / "s.toml"), str(out)], "s.toml: seeds asks for 100,000,000",
             f"{limits.MAX_SEEDS:,}")
    _refused(["reproduce", str(out), "--seeds", "100000000"], "--seeds asks for 100,000,000", "MAX_SEEDS")
    _refused(["run", str(tmp_path), "--strategy", "random", "--init", "balanced", "--out", str(out), "--set",
              "seeds=100000000"], "setting seeds asks for 100,000,000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_steps_beyond_the_limit_are_refused_before_any_work(tmp_path):
    out, huge = tmp_path / "out", 2**63 - 1
    steps = _study(tmp_path, f'[set]\nsteps = {huge}\n[datasets.a]\nsimulate = {{}}\n')
    _refused(["study", steps, str(out)], "s.toml", f"setting steps asks for {huge:,}", f"{limits.MAX_STEPS:,}")
    for setting in ("round_steps", "first_round_steps", "epochs"):
        _refused(["study", _study(tmp_path, f'[set]\n{setting} = {huge}\n[datasets.a]\nsimulate = {{}}\n'),
                  str(out)], f"setting {setting} asks for {huge:,}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]
    with pytest.raises(FairalError, match=f"steps asks for {huge:,}"):  # the Python API too
        TrainConfig(steps=huge)
    with pytest.raises(FairalError, match="epochs 10000 of 1000 cases in batches of 1: the steps asks for "
                                          "10,000,000"):
        TrainConfig(epochs=10_000, batch_size=1).total_steps(1000)


def test_a_network_too_wide_or_deep_is_refused_before_it_is_built(tmp_path):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    out = tmp_path / "q"
    _refused(["query", str(study), "--budget", "1", "--out", str(out), "--set", "features=4096,8192"],
             "setting features (a level's channels) asks for 8,192", f"{limits.MAX_FEATURES:,}")
    _refused(["query", str(study), "--budget", "1", "--out", str(out), "--set", "features=8,8,8,8,8,8,8"],
             "setting features (the levels) asks for 7", "MAX_LEVELS")
    assert not out.exists()
    with pytest.raises(FairalError, match="features \\(a level's channels\\) asks for 8,192"):
        _peak(lambda: UNet3D(features=(4096, 8192)))
    model, peak = _peak(lambda: UNet3D(features=(limits.MAX_FEATURES // 64, limits.MAX_FEATURES // 32)))
    assert model.features == (8, 16) and peak < SMALL


# --- fairal report caps what it reads ---------------------------------------------------------------------------------

ROUNDS = pd.DataFrame({"round": [0, 1], "n_labeled": [4, 6], "n_labeled_g1": [2, 3], "n_labeled_g2": [2, 3],
                       "dice_all": [0.8, 0.85], "dice_g1": [0.7, 0.8], "dice_g2": [0.9, 0.9], "delta": [0.2, 0.1],
                       "essp": [0.66, 0.77]})


def _run(root: Path, strategy: str, seed: int, cases=("a", "b", "c", "d"), dataset: str = "lab") -> Path:
    """A finished run's records: its rounds, its per-case Dice on ``cases`` (groups 1, 2, 1, 2), state, config."""
    run = root / "runs" / dataset / "balanced" / strategy / f"seed-{seed}"
    run.mkdir(parents=True)
    ROUNDS.to_csv(run / "rounds.csv", index=False)
    pd.DataFrame([{"round": r, "case_id": c, "group": str(1 + i % 2), "split": "test", "dice": 0.8 + 0.01 * i}
                  for r in (0, 1) for i, c in enumerate(cases)]).to_csv(run / "cases.csv", index=False)
    (run / "state.json").write_text(json.dumps({"completed_round": 1, "finished": True}))
    (run / "config.json").write_text(json.dumps({"settings": {"strategy": strategy, "profile": {"name": "smoke"}}}))
    return run


def _study_records(root: Path, seeds: int = 3) -> None:
    for seed in range(seeds):
        for strategy in ("random", "weighted-localized-entropy"):
            _run(root, strategy, seed)
    (root / "study.json").write_text(json.dumps({
        "study": {"name": "s", "source": "s.toml", "datasets": [{"name": "lab"}], "inits": ["balanced"],
                  "arms": [{"name": "random"}, {"name": "weighted-localized-entropy"}],
                  "reference": "weighted-localized-entropy"}, "profile": {"name": "smoke"}, "seeds": seeds}))


@pytest.mark.parametrize("seeds, needle", [
    (10**12, f"study.json: seeds asks for 1,000,000,000,000, more than fairal's limit of {limits.MAX_SEEDS:,}"),
    (1e12, "study.json: 'seeds' must be a whole number >= 1, got 1000000000000.0"),
])
def test_a_tampered_study_json_is_refused_before_the_report_allocates(tmp_path, seeds, needle):
    _study_records(tmp_path)
    info = json.loads((tmp_path / "study.json").read_text())
    (tmp_path / "study.json").write_text(json.dumps({**info, "seeds": seeds}))
    before = _hashes(tmp_path)
    _refused(["report", str(tmp_path)], needle)
    assert _hashes(tmp_path) == before and not (tmp_path / "report").exists()


def test_a_study_json_whose_plan_is_too_large_is_refused(tmp_path):
    _study_records(tmp_path)
    info = json.loads((tmp_path / "study.json").read_text())
    info["study"]["arms"] = [{"name": f"arm-{k}"} for k in range(2000)]
    info["seeds"] = limits.MAX_SEEDS
    (tmp_path / "study.json").write_text(json.dumps(info))
    _refused(["report", str(tmp_path)], "study.json: the study's plan (runs) asks for 2,000,000",
             f"{limits.MAX_RUNS:,}")
    assert not (tmp_path / "report").exists()


def test_a_record_larger_than_the_limit_is_never_read(tmp_path):
    _study_records(tmp_path)
    huge = tmp_path / "runs" / "lab" / "balanced" / "random" / "seed-0" / "rounds.csv"
    with open(huge, "r+b") as f:  # a sparse file: 300 MB long, no disk used, no byte read
        f.truncate(300 * 2**20)
    res, peak = _peak(lambda: runner.invoke(app, ["report", str(tmp_path)]))
    assert res.exit_code == 0 and peak < 200 * 2**20, (res.output, peak)  # the report of the other runs
    assert (f"left out {huge.parent}: {huge} is {300 * 2**20:,} bytes, more than fairal's limit of "
            f"{limits.MAX_RECORD_BYTES:,} bytes") in " ".join(res.output.split()), res.output


# --- records that lie about their shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, needle", [
    ("garbage{", "is not a readable JSON record: Expecting value"),
    ("[1, 2]", "is not a readable JSON record: it holds a JSON list, not an object"),
    ("[" * 100_000 + "]" * 100_000, "nests lists or objects too deep"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", f"nests lists or tables more than {limits.MAX_NESTING} deep"),
    ('{"settings": [1]}', "does not name the run's dataset, initial set, strategy and seed"),
])
def test_a_run_with_a_config_json_that_is_no_record_is_one_line(tmp_path, text, needle):
    run = _run(tmp_path, "random", 0)
    (run / "config.json").write_text(text)
    _refused(["report", str(run)], f"{run / 'config.json'}", needle)
    assert not (run / "report").exists()


def test_a_bad_config_json_in_a_results_folder_leaves_its_run_out(tmp_path):
    _study_records(tmp_path)
    bad = tmp_path / "runs" / "lab" / "balanced" / "random" / "seed-1"
    (bad / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    flat = " ".join(res.output.split())
    assert f"left out {bad}: {bad / 'config.json'} is not a readable JSON record" in flat, flat
    assert (tmp_path / "report" / "report.html").is_file()


def test_a_run_measured_on_other_cases_is_left_out_naming_its_cases_csv(tmp_path):
    _study_records(tmp_path)
    odd = tmp_path / "runs" / "lab" / "balanced" / "random" / "seed-2"
    pd.DataFrame([{"round": r, "case_id": c, "group": str(1 + i % 2), "split": "test", "dice": 0.8}
                  for r in (0, 1) for i, c in enumerate(["a", "b", "c", "x"])]).to_csv(odd / "cases.csv", index=False)
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    flat = " ".join(res.output.split())
    assert (f"left out {odd}: {odd / 'cases.csv'} measures other cases than the other 5 run(s) of dataset lab (it "
            "holds x (test))") in flat, flat
    summary = pd.read_csv(tmp_path / "report" / "study_summary.csv")
    assert summary.set_index("strategy").loc["random", "n_seeds"] == 2  # the odd run is not in the numbers


def test_tidy_records_measured_on_other_cases_are_refused_naming_the_file(tmp_path):
    from fairal.report.tidy import load_results

    rows = []
    for seed in range(2):
        ROUNDS.assign(dataset="lab", init="balanced", strategy="random", seed=seed).to_csv(
            tmp_path / "rounds.csv", mode="a", header=seed == 0, index=False)
        for i, case in enumerate(["a", "b"] if seed == 0 else ["a", "z"]):
            rows.append({"dataset": "lab", "init": "balanced", "strategy": "random", "seed": seed, "round": 1,
                         "case_id": case, "group": str(1 + i), "split": "test", "dice": 0.9})
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(FairalError, match="cases.csv: run lab/balanced/random/[01] measures other cases than the "
                                          "other 1 run"):
        load_results(tmp_path)
