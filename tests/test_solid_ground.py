"""Nothing of the user's is lost, nothing is silently wrong: each reproduced defect of a run folder, the cache, the
output folders, the settings and the messages, and the fix that holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.config import get_profile
from fairal.data.cohort import read_cases
from fairal.data.volumes import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.io import FolderLock, clean_stale_partials, mark
from fairal.owndata.query import run_query
from fairal.report.tidy import load_results
from fairal.run.loop import ActiveLearningRun, RunSpec

from .own_data import make_study

TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6"}
FAST = {"steps": "10", "mc_samples": "3", "stochastic_batches": "5"}


@pytest.fixture
def data(tiny_dataset, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "study", per_site=5, labeled_per_site=3, unknown=1)


def _spec(data, strategy="entropy"):
    return RunSpec(str(data), strategy, "balanced", 0, get_profile("smoke", TINY))


class Killed(Exception):
    pass


def _kill_after_first_round(rnd):
    raise Killed


# 1. --out that holds the user's data, or a folder fairal did not make -------------------------------------------


def test_query_never_removes_the_users_data(study, tmp_path):
    folder = study.parent
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    for out in (folder, folder / "images"):
        with pytest.raises(FairalError, match="holds the input"):
            run_query(study, 2, "entropy", out, get_profile("smoke", FAST), group_by=["site"], overwrite=True,
                      progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FairalError, match="was not made by fairal"):
        run_query(study, 2, "entropy", mine, get_profile("smoke", FAST), group_by=["site"], overwrite=True,
                  progress=False)
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    # fairal's own output folder is replaced with --overwrite
    out = tmp_path / "q"
    run_query(study, 2, "entropy", out, get_profile("smoke", FAST), group_by=["site"], progress=False)
    run_query(study, 3, "entropy", out, get_profile("smoke", FAST), group_by=["site"], overwrite=True, progress=False)
    assert pd.read_csv(out / "query.csv")["selected"].sum() == 3
    # but not over a file of the user's put into it, or one fairal wrote and the user changed (a corrected mask)
    prediction = next((out / "predictions").iterdir())
    for mine in (out / "predictions" / "corrected.nii.gz", prediction):
        mine.write_bytes(b"the annotator's")
        with pytest.raises(FairalError, match=f"holds 1 file.s. fairal did not write there, or that changed since "
                                              f"\\(predictions/{mine.name}\\)"):
            run_query(study, 2, "entropy", out, get_profile("smoke", FAST), group_by=["site"], overwrite=True,
                      progress=False)
        assert mine.read_bytes() == b"the annotator's" and len(pd.read_csv(out / "query.csv")) > 0
        if mine != prediction:
            mine.unlink()


# 2. two writers of one run folder ---------------------------------------------------------------------------------


def test_a_run_folder_being_written_is_refused(data, tmp_path):
    out = tmp_path / "run"
    with FolderLock(out, "another fairal run"):
        with pytest.raises(FairalError, match=r"being written by process \d+ \(another fairal run\)"):
            ActiveLearningRun(_spec(data, "random"), out).run()
    assert not (out / "config.json").exists()
    ActiveLearningRun(_spec(data, "random"), out).run()  # the lock dies with its holder
    assert json.loads((out / "state.json").read_text())["finished"]


def test_a_second_process_is_refused_while_the_first_writes(data, tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from fairal.io import FolderLock\n"
            f"with FolderLock({str(out)!r}, 'holder'):\n    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FairalError, match=f"being written by process {holder.pid}"):
            ActiveLearningRun(_spec(data), out).run()
    finally:
        holder.kill()
        holder.wait()


# 3. resume on changed data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pool", "labeled"])
def test_resume_refuses_a_changed_dataset(data, tmp_path, which):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        ActiveLearningRun(_spec(data), out).run(on_round=_kill_after_first_round)
    state = json.loads((out / "state.json").read_text())
    m = pd.read_csv(data / "manifest.csv")
    labeled = set(state["next_labeled"])
    pool = m[(m["split"] == "pool") & ~m["case_id"].isin(labeled)]
    gone = sorted(labeled)[0] if which == "labeled" else pool["case_id"].iloc[0]
    m[m["case_id"] != gone].to_csv(data / "manifest.csv", index=False)
    with pytest.raises(FairalError, match=f"other data.*removed: {gone}"):
        ActiveLearningRun(_spec(data), out).run()


# 4. the volume cache follows the files ----------------------------------------------------------------------------


def test_the_cache_notices_replaced_files(data):
    m = read_manifest(data)
    first = load_volumes(data, m, crop_margin=4, downsample=1)
    case = m["case_id"].iloc[0]
    img_path = data / "images" / f"{case}.nii.gz"
    img = nib.load(str(img_path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 7, img.affine), str(img_path))
    again = load_volumes(data, read_manifest(data), crop_margin=4, downsample=1)
    assert not np.array_equal(first.images[0].numpy(), again.images[0].numpy())  # read again, not stale
    lab_path = data / "labels" / f"{case}.nii.gz"
    lab = nib.load(str(lab_path))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8) * 2, lab.affine), str(lab_path))
    with pytest.raises(FairalError, match=f"case {case}: label is not binary"):
        load_volumes(data, read_manifest(data), crop_margin=4, downsample=1)


# 5. grid workers die with their driver ------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_grid_workers_die_with_the_driver(tmp_path):
    code = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from fairal.grid.executors import init_worker as _init_worker

def pid():
    return os.getpid()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker, initargs=(1, os.getpid()))
    print(pool.submit(pid).result(), flush=True)
    time.sleep(60)
"""
    script = tmp_path / "driver.py"
    script.write_text(code)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(driver.stdout.readline())
    driver.kill()  # kill -9 of the driver
    driver.wait()
    for _ in range(100):
        if not os.path.exists(f"/proc/{worker}") or "zombie" in open(f"/proc/{worker}/status").read().lower():
            break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        pytest.fail("the worker outlived its driver")


# 6. NaN and other impossible settings -----------------------------------------------------------------------------


def test_nan_settings_are_refused_at_the_edge(study, tmp_path):
    for key, value, message in (("temperature", "nan", "temperature must be a finite number > 0"),
                                ("lr", "inf", "lr must be a finite number"),
                                ("mc_dropout", "1", "mc_dropout must be a finite number >= 0 and < 1"),
                                ("final_size", "15", "impossible budget"),
                                ("device", "tpu", "device must be auto")):
        with pytest.raises(FairalError, match=message):
            get_profile("smoke", {key: value})
    runner = CliRunner()
    res = runner.invoke(app, ["query", str(study), "--budget", "1", "--out", str(tmp_path / "q"), "--spacing", "nan"])
    assert res.exit_code == 2 and "--spacing must be > 0 mm" in res.output, res.output
    res = runner.invoke(app, ["simulate", str(tmp_path / "s"), "--bias-mean", "nan", "--quiet"])
    assert res.exit_code == 2 and "--bias-mean must be a finite number" in res.output, res.output
    assert not (tmp_path / "q").exists() and not (tmp_path / "s").exists()


# 7. intersectional groups ------------------------------------------------------------------------------------------


def test_intersectional_groups_cannot_collide(study):
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    t["a"], t["b"] = "x/y", "z"
    t.loc[1, "a"], t.loc[1, "b"] = "x", "y/z"
    t.to_csv(study, index=False)
    with pytest.raises(FairalError, match="holds '/'"):
        read_cases(study, ["a", "b"])
    assert read_cases(study, ["a"])["group"].iloc[0] == "x/y"  # one column: any value is a group of its own


# 8. the report and damaged records ----------------------------------------------------------------------------------


def _run_folder(root, seed, essp_text):
    run = root / "runs" / "strong" / "balanced" / "entropy" / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "rounds.csv").write_text("round,n_labeled,dice_all,delta,essp\n0,10,0.9,0.02,0.882\n1,14,0.92,0.01,"
                                    + essp_text)
    (run / "state.json").write_text(json.dumps({"completed_round": 1, "finished": True}))
    return run


def test_the_report_leaves_out_damaged_records(tmp_path):
    _run_folder(tmp_path, 0, "0.483\n")
    cut = _run_folder(tmp_path, 1, "0.4")  # cut off mid-line
    empty = _run_folder(tmp_path, 2, "")
    (empty / "rounds.csv").write_text("")
    results = load_results(tmp_path)
    assert set(results.rounds["seed"]) == {0}
    assert results.rounds["essp"].iloc[-1] == pytest.approx(0.483)
    assert "mid-line" in results.skipped[str(cut)] and "empty" in results.skipped[str(empty)]
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0 and f"left out {cut}" in res.output


# 9. messages and help print what they say -----------------------------------------------------------------------------


def test_messages_and_help_are_not_markup(study, tmp_path):
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    t.loc[0, "case_id"] = "sub[/x]"
    t.loc[1, "case_id"] = "sub[/x]"
    t.to_csv(study, index=False)
    res = CliRunner().invoke(app, ["query", str(study), "--budget", "1", "--out", str(tmp_path / "q")])
    assert res.exit_code == 2 and "repeated: sub[/x]" in res.output, res.output
    res = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert "[SELECTION-][STEERING-]BASE[-tT]" in res.output


# 10. outputs that cannot be outputs, refused before any work ------------------------------------------------------


def test_impossible_output_folders_are_refused_first(study, data, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    runner = CliRunner()
    for out, message in ((afile, "exists and is not a folder"), (link, "is a symbolic link")):
        res = runner.invoke(app, ["query", str(study), "--budget", "1", "--out", str(out)])
        assert res.exit_code == 2 and message in res.output, res.output
        res = runner.invoke(app, ["run", str(data), "--strategy", "random", "--init", "balanced", "--out", str(out),
                                  "--profile", "smoke"])
        assert res.exit_code == 2 and message in res.output, res.output
    assert afile.read_text() == "x" and not (tmp_path / "elsewhere").exists()


# 11. what a kill -9 leaves behind is cleaned up -------------------------------------------------------------------


def test_stale_partials_of_dead_processes_are_removed(data, tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    mark(out, "run")  # the folder of a run that was killed while it wrote
    (out / "checkpoints" / f".round-00.pt.partial-{dead}").write_bytes(b"x" * 100)
    (out / f".rounds.csv.partial-{dead}").write_text("half")
    live = out / f".keep.partial-{os.getpid()}"
    live.write_text("still being written")
    ActiveLearningRun(_spec(data, "random"), out).run()
    assert not list(out.glob(f"**/*partial-{dead}*")) and live.exists()
    big = tmp_path / f".dataset.partial-{dead}"
    (big / "images").mkdir(parents=True)
    other = tmp_path / f".notes.txt.partial-{dead}"  # in a folder that is not fairal's: only the target's own
    other.write_text("someone else's")
    assert clean_stale_partials(tmp_path, "dataset") == [big] and not big.exists() and other.exists()


# 12. inputs that make no sense ------------------------------------------------------------------------------------


def test_blank_scans_masks_as_templates_and_foreign_models(study, tiny_template, tmp_path):
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    img = nib.load(str(study.parent / t["image"].iloc[0]))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(study.parent / t["image"].iloc[0]))
    with pytest.raises(FairalError, match=f"case {t['case_id'].iloc[0]}: image .* is blank"):
        run_query(study, 1, "entropy", tmp_path / "q", get_profile("smoke", FAST), group_by=["site"], progress=False)
    tpl, lab = tiny_template
    mask = nib.load(str(lab))
    nib.save(nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.uint8), mask.affine), str(tmp_path / "m.nii"))
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "s"), "--template", str(tmp_path / "m.nii"),
                                   "--label", str(lab), "--label-value", "5", "--quiet"])
    assert res.exit_code == 2 and "a mask, not a T1 image" in res.output, res.output


def test_a_run_checkpoint_is_not_a_query_model(study, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        ActiveLearningRun(_spec(data), out).run(on_round=_kill_after_first_round)
    ckpt = next((out / "checkpoints").glob("round-*.pt"))
    with pytest.raises(FairalError, match="not a model saved by fairal query"):
        run_query(study, 1, "entropy", tmp_path / "q", get_profile("smoke", FAST), group_by=["site"],
                  model_path=ckpt, progress=False)
