"""scripts/study_records.py: a study's tidy records, with arms taken from another experiment's tidy records only
where they are the study's runs, and the study report built from the records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app

from .conftest import load_script

TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6", "eval_per_group": "0", "n_subjects": "24"}


@pytest.fixture(scope="module")
def records():
    return load_script("study_records")


def _study(path: Path, data: Path, strategies: str, reference: str) -> Path:
    settings = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    path.write_text(f'profile = "smoke"\nseeds = 2\ninits = ["balanced"]\nstrategies = [{strategies}]\n'
                    f'reference = "{reference}"\n[set]\n{settings}\n[datasets.tiny]\nfolder = "{data}"\n')
    return path


def _run(study: Path, out: Path, *extra: str) -> None:
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--jobs", "1", "--quiet", *extra])
    assert res.exit_code == 0, res.output


def _renamed(records: Path) -> Path:
    """The study records with the arm wle-hidden named as the plain strategy it runs (as if it were that arm)."""
    to = _copy(records, records.with_name("renamed"))
    rounds = pd.read_csv(to / "rounds.csv")
    rounds.loc[rounds["strategy"] == "wle-hidden", "strategy"] = "weighted-localized-entropy"
    rounds.to_csv(to / "rounds.csv", index=False)
    info = json.loads((to / "settings.json").read_text())
    info["arm_profiles"]["weighted-localized-entropy"] = info["arm_profiles"].pop("wle-hidden")
    (to / "settings.json").write_text(json.dumps(info))
    return to


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def test_a_study_takes_its_other_arm_from_earlier_records_only_where_they_are_its_runs(tiny_dataset, tmp_path,
                                                                                      records):
    """The earlier records (random, 2 seeds) stand for the study's random arm; the study runs only its new arm
    (``--strategies`` names it); the report is built from the records alone. Records of other settings or other
    data are refused, and nothing is written."""
    earlier = _study(tmp_path / "a.toml", tiny_dataset, '"random"', "random")
    _run(earlier, tmp_path / "a")
    records.export(earlier, tmp_path / "a", tmp_path / "tidy", commit="a" * 40)
    tidy = tmp_path / "tidy"
    arm = '{ name = "wle-hidden", strategy = "weighted-localized-entropy", groups_known = false }'
    study = _study(tmp_path / "b.toml", tiny_dataset, f'{arm}, "random"', "wle-hidden")
    _run(study, tmp_path / "b", "--strategies", "wle-hidden")  # only the new arm is run
    assert [p.name for p in (tmp_path / "b" / "runs" / "tiny" / "balanced").iterdir()] == ["wle-hidden"]
    dest = tmp_path / "records"
    records.export(study, tmp_path / "b", dest, commit="b" * 40, reuse=tidy)
    rounds = pd.read_csv(dest / "rounds.csv")
    assert rounds.groupby("strategy")["seed"].nunique().to_dict() == {"random": 2, "wle-hidden": 2}
    before = pd.read_csv(tidy / "rounds.csv")  # the earlier records' rows, as they were
    pd.testing.assert_frame_equal(rounds[rounds["strategy"] == "random"][before.columns].reset_index(drop=True),
                                  before, check_dtype=False)
    sources = json.loads((dest / "settings.json").read_text())["sources"]
    assert [s["commit"][0] for s in sources] == ["b", "a"] and sources[1]["arms"] == ["random"]
    res = CliRunner().invoke(app, ["report", str(dest), "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    paired = pd.read_csv(tmp_path / "report" / "study_paired.csv")
    assert len(paired) and paired["id"].str.contains("random").all()

    other = _copy(tidy, tmp_path / "other-settings")
    info = json.loads((other / "settings.json").read_text())
    info["arm_profiles"]["random"]["steps"] = 4
    (other / "settings.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="steps: 4 there, 3 here"):
        records.export(study, tmp_path / "b", tmp_path / "refused", commit="b" * 40, reuse=other)
    other = _copy(tidy, tmp_path / "other-data")
    cases = pd.read_csv(other / "datasets.csv")
    cases.loc[0, "label_volume_mm3"] += 1.0
    cases.to_csv(other / "datasets.csv", index=False)
    with pytest.raises(SystemExit, match="not the study's"):
        records.export(study, tmp_path / "b", tmp_path / "refused", commit="b" * 40, reuse=other)
    with pytest.raises(SystemExit, match="groups_known"):  # its wle-hidden is not the study's plain WLE
        other = _study(tmp_path / "c.toml", tiny_dataset, '"weighted-localized-entropy", "random"', "random")
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "study.json").write_text(json.dumps(
            {**json.loads((tmp_path / "b" / "study.json").read_text()),
             "study": {"text": other.read_text()}}))
        records.export(other, tmp_path / "c", tmp_path / "refused", commit="c" * 40, reuse=_renamed(dest))
    with pytest.raises(SystemExit, match="inside it"):
        records.export(study, tmp_path / "b", tmp_path / "b" / "records", commit="b" * 40, reuse=tidy)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.json").write_text("{}")
    with pytest.raises(SystemExit, match="no readable study.json"):  # a study.json without the study
        records.main([str(study), str(tmp_path / "broken"), str(tmp_path / "refused"), "--commit", "d" * 40])
    with pytest.raises(SystemExit, match="error: .*no such study file"):  # a message, not a traceback
        records.main([str(tmp_path / "gone.toml"), str(tmp_path / "b"), str(tmp_path / "refused"), "--commit",
                      "d" * 40])
    assert not (tmp_path / "refused").exists() and not (tmp_path / "b" / "records").exists()
    records.export(study, tmp_path / "b", dest, commit="c" * 40, reuse=tidy)  # its own records: replaced whole
    assert json.loads((dest / "settings.json").read_text())["commit"] == "c" * 40
    config = json.loads(next((tmp_path / "b" / "runs").glob("*/*/wle-hidden/seed-0/config.json")).read_text())
    assert config["settings"]["profile"]["groups_known"] is False  # the arm's own settings, by its name


def test_an_arm_run_on_some_datasets_is_taken_from_earlier_records_on_the_others(tiny_dataset, tmp_path, records):
    """As the v3 ladder: random ran before on dataset tiny (the earlier records) and runs now on dataset copy only
    (--datasets); the export takes tiny's random from the earlier records and keeps copy's own, and its study.json
    lists the study file's arms, whichever the last command ran."""
    two = f'[datasets.copy]\nfolder = "{tiny_dataset}"\n'
    earlier = _study(tmp_path / "a.toml", tiny_dataset, '"random"', "random")
    earlier.write_text(earlier.read_text() + two)
    _run(earlier, tmp_path / "a", "--datasets", "tiny")
    records.export(earlier, tmp_path / "a", tmp_path / "tidy", commit="a" * 40)
    study = _study(tmp_path / "b.toml", tiny_dataset, '"entropy", "random"', "entropy")
    study.write_text(study.read_text() + two)
    _run(study, tmp_path / "b", "--strategies", "random", "--datasets", "copy")
    _run(study, tmp_path / "b", "--strategies", "entropy")
    # last, an exploratory arm beyond the study file's on one dataset and fewer seeds: its study.json says 1 seed
    _run(study, tmp_path / "b", "--strategies", "localized-entropy", "--datasets", "copy", "--seeds", "1")
    assert json.loads((tmp_path / "b" / "study.json").read_text())["seeds"] == 1
    dest = tmp_path / "records"
    records.export(study, tmp_path / "b", dest, commit="b" * 40, reuse=tmp_path / "tidy")
    rounds = pd.read_csv(dest / "rounds.csv")
    runs = rounds.groupby(["dataset", "strategy"])["seed"].nunique().to_dict()
    assert runs == {("copy", "entropy"): 2, ("copy", "random"): 2, ("tiny", "entropy"): 2, ("tiny", "random"): 2,
                    ("copy", "localized-entropy"): 1}
    settings = json.loads((dest / "settings.json").read_text())
    assert settings["sources"][1]["runs"] == {"tiny": ["random"]}
    assert settings["seeds"] == settings["sources"][1]["seeds"] == [0, 1]  # the study file's seeds, not the last
    recorded = json.loads((dest / "study.json").read_text())  # command's
    assert [a["name"] for a in recorded["study"]["arms"]] == ["entropy", "random"] and recorded["seeds"] == 2
