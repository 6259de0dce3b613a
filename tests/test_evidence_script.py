"""scripts/evidence.py: the compute of the records, read from the job's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def evidence():
    return load_script("evidence")


def test_task_times_from_the_log(evidence, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    (out / "evidence.log").write_text(
        "analysis plan docs/analysis-plan.md at 312e00396b (blob 88af053e6e)\n"
        "    3.3s dataset strong x1\n"
        "26 tasks\n"
        f"  950.8s done  950.8s {out}/baseline/weak/seed-0\n"
        f" 1807.0s done  856.0s {out}/runs/strong/balanced/random/seed-0\n"
        "tidy tables in /somewhere/docs/results\n"
        "26 tasks\n"
        f"    2.5s done    0.1s {out}/baseline/weak/seed-0\n"  # found finished by the next session
        f"   55.4s done   52.4s {out}/runs/strong/balanced/entropy/seed-0\n")  # resumed: its resumed part
    times = evidence.task_times(out)
    assert times["session"].tolist() == [1, 1, 2, 2]
    assert times["task"].tolist() == ["baseline/weak/seed-0", "runs/strong/balanced/random/seed-0",
                                      "baseline/weak/seed-0", "runs/strong/balanced/entropy/seed-0"]
    assert times["seconds"].sum() == pytest.approx(950.8 + 856.0 + 0.1 + 52.4)
    assert evidence.task_times(tmp_path / "no-job").empty


def test_task_times_of_a_new_job_folder_follow_the_exported_sessions(evidence, tmp_path):
    """A job restarted in a new folder (another machine) appends its sessions after those exported before; exporting
    again from that folder replaces its own rows, not the earlier ones."""
    dest = tmp_path / "v2" / "tasks.csv"
    dest.parent.mkdir()
    dest.write_text("session,task,seconds\n1,runs/strong/balanced/random/seed-0,856.0\n"
                    "2,runs/weak/balanced/random/seed-1,500.0\n")
    out = tmp_path / "job"
    out.mkdir()
    (out / "evidence.log").write_text(f"26 tasks\n  400.0s done  400.0s {out}/runs/strong/balanced/random/seed-6\n")
    first = evidence._merge_task_times(out, dest, evidence.task_times(out))
    assert first["session"].tolist() == [1, 2, 3]
    assert first["seconds"].tolist() == [856.0, 500.0, 400.0]
    first.to_csv(dest, index=False)
    with open(out / "evidence.log", "a") as f:  # the same folder, a later session of the job
        f.write(f"26 tasks\n  300.0s done  300.0s {out}/runs/weak/balanced/random/seed-6\n")
    again = evidence._merge_task_times(out, dest, evidence.task_times(out))
    assert again["session"].tolist() == [1, 2, 3, 4]
    assert again["task"].tolist()[2:] == ["runs/strong/balanced/random/seed-6", "runs/weak/balanced/random/seed-6"]
    assert again["seconds"].sum() == pytest.approx(856.0 + 500.0 + 400.0 + 300.0)


def test_seeds_of_another_setting_are_not_merged(evidence, tmp_path):
    """The runs exported from a job folder with other versions or another profile than the seeds exported before
    are refused, naming what differs; the same ones give their settings, and every device that made them."""
    import json

    import pandas as pd

    profile = {"name": "standard", "steps": 1000}
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"versions": {"torch": "2.13.0"}, "device": "cpu",
                                                      "run_settings": {"profile": profile}}))
    out = tmp_path / "job"

    def config(seed, **changes):
        run = out / "runs" / "strong" / "balanced" / "random" / f"seed-{seed}"
        run.mkdir(parents=True, exist_ok=True)
        c = {"versions": {"torch": "2.13.0"}, "device": "cpu (AMD EPYC; AVX512)",
             "settings": {"profile": profile, "seed": seed}}
        (run / "config.json").write_text(json.dumps({**c, **changes}))

    rounds = pd.DataFrame({"dataset": ["strong"] * 2, "init": ["balanced"] * 2, "strategy": ["random"] * 2,
                           "seed": [6, 7]})
    config(6)
    config(7)
    recorded = evidence._recorded(out, rounds, folder)
    assert recorded["settings"]["seed"] == 6 and recorded["device"] == "cpu / cpu (AMD EPYC; AVX512)"
    config(7, versions={"torch": "2.14.1"})
    with pytest.raises(SystemExit, match="versions"):
        evidence._recorded(out, rounds, folder)
    config(7, settings={"profile": {**profile, "steps": 400}, "seed": 7})
    with pytest.raises(SystemExit, match="profile"):
        evidence._recorded(out, rounds, folder)
    assert evidence._recorded(out, rounds.iloc[:0], folder)["device"] == "cpu"  # nothing new: the export's own


@pytest.fixture(scope="module")
def archive():
    return load_script("task_archive")


def _task(folder: Path, finished: bool = True) -> Path:
    import json

    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "round-3.pt").write_bytes(b"weights")
    (folder / "state.json").write_text(json.dumps({"finished": finished}))
    (folder / "rounds.csv").write_text(f"round,dice\n0,{0.5 if finished else 0.1}\n")
    (folder / ".fairal.lock").write_text("")
    (folder / ".fairal").write_text("run\n")
    return folder


def test_finished_tasks_of_an_unfinished_seed_travel_to_a_new_job_folder(evidence, archive, tmp_path):
    """The evidence export keeps the finished runs and baselines of a seed not yet whole (records and markers, no
    checkpoints or locks, the same bytes for the same records); a new job folder gets them back, nothing
    overwritten."""
    import tarfile

    out = tmp_path / "job"
    _task(out / "runs" / "strong" / "balanced" / "random" / "seed-7")
    _task(out / "runs" / "weak" / "balanced" / "random" / "seed-7", finished=False)
    _task(out / "runs" / "strong" / "balanced" / "random" / "seed-6")  # seed 6 is whole: exported, not pending
    base = out / "baseline" / "weak" / "seed-7"
    base.mkdir(parents=True)
    (base / "baseline_table.csv").write_text("cohort,dice_all\nall,0.9\n")
    folders = evidence._pending_folders(out, whole=[6], seeds=10)
    assert sorted(f.relative_to(out).as_posix() for f in folders) == [
        "baseline/weak/seed-7", "runs/strong/balanced/random/seed-7"]
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    archive.save_tasks(out, first, folders)
    archive.save_tasks(out, second, folders)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["TASKS", "baseline/weak/seed-7/baseline_table.csv",
                                  "runs/strong/balanced/random/seed-7/.fairal",
                                  "runs/strong/balanced/random/seed-7/rounds.csv",
                                  "runs/strong/balanced/random/seed-7/state.json"]
    new = tmp_path / "new-job"
    (new / "baseline" / "weak" / "seed-7").mkdir(parents=True)  # the new folder has this one already: kept
    (new / "baseline" / "weak" / "seed-7" / "baseline_table.csv").write_text("mine\n")
    assert archive.restore_tasks(first, new) == (["runs/strong/balanced/random/seed-7"], ["baseline/weak/seed-7"])
    assert (new / "runs/strong/balanced/random/seed-7/rounds.csv").read_text() == "round,dice\n0,0.5\n"
    assert (new / "baseline/weak/seed-7/baseline_table.csv").read_text() == "mine\n"
    archive.save_tasks(out, first, [])  # nothing pending: no file
    assert not first.exists()


def test_a_study_folder_travels_with_its_study_json(archive, tmp_path):
    """A study's results folder: its finished runs, its baselines (baseline/DATASET) and its own study.json and
    marker, so that fairal study takes the restored folder as its own and skips the finished runs."""

    out = tmp_path / "study"
    _task(out / "runs" / "site" / "balanced" / "random" / "seed-0")
    (out / "baseline" / "site").mkdir(parents=True)
    (out / "baseline" / "site" / "baseline_table.csv").write_text("cohort\nall\n")
    (out / "study.json").write_text("{}\n")
    (out / ".fairal").write_text("results folder\n")
    (out / ".fairal.lock").write_text("")
    folders = archive.finished_tasks(out)
    assert [f.relative_to(out).as_posix() for f in folders] == ["runs/site/balanced/random/seed-0", "baseline/site"]
    path = tmp_path / "study.tar.gz"
    archive.save_tasks(out, path, folders)
    new = tmp_path / "again"
    assert archive.restore_tasks(path, new) == (["baseline/site", "runs/site/balanced/random/seed-0"], [])
    assert (new / "study.json").read_text() == "{}\n" and (new / ".fairal").read_text() == "results folder\n"
    assert not (new / ".fairal.lock").exists()


def test_files_left_out_of_the_run_folders_only(archive, tmp_path):
    """``--leave-out selections.csv`` drops that file from every run folder (a calibration's file of the same name
    stays); the restored run is still finished; a file a finished run needs cannot be left out."""
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "study"
    run = _task(out / "runs" / "site" / "balanced" / "random" / "seed-0")
    (run / "selections.csv").write_text("round,case_id,score\n1,a,0.3\n")
    cal = out / "calibration" / "caudate"
    cal.mkdir(parents=True)
    (cal / "calibration.json").write_text("{}")
    (cal / "selections.csv").write_text("kept")
    path = tmp_path / "study.tar.gz"
    archive.save_tasks(out, path, archive.finished_tasks(out), ("selections.csv",))
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["TASKS", "calibration/caudate/calibration.json", "calibration/caudate/selections.csv",
                                  "runs/site/balanced/random/seed-0/.fairal",
                                  "runs/site/balanced/random/seed-0/rounds.csv",
                                  "runs/site/balanced/random/seed-0/state.json"]
    new = tmp_path / "again"
    archive.restore_tasks(path, new)
    assert [f.relative_to(new).as_posix() for f in archive.finished_tasks(new)] == [
        "runs/site/balanced/random/seed-0", "calibration/caudate"]
    script = Path(__file__).parents[1] / "scripts" / "task_archive.py"
    done = subprocess.run([sys.executable, script, "save", out, tmp_path / "x.tar.gz", "--leave-out", "rounds.csv"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--leave-out rounds.csv: a finished run needs it" in done.stderr
    assert not (tmp_path / "x.tar.gz").exists()


def test_a_ladder_s_calibration_travels_without_its_datasets(archive, tmp_path):
    """The knob of a target gap is fixed by the calibration's records: they travel (calibration.json, levels,
    settings, models, marker); its datasets, made again from its settings, do not."""
    out = tmp_path / "study"
    cal = out / "calibration" / "caudate"
    for name in ("calibration.json", "levels.csv", "settings.json", ".fairal", "models/seed-0.pt",
                 "data/level-4/manifest.csv", "data/level-4/images/eval-0001.nii.gz"):
        (cal / name).parent.mkdir(parents=True, exist_ok=True)
        (cal / name).write_text(name)
    (out / "study.json").write_text("{}\n")
    folders = archive.finished_tasks(out)
    assert [f.relative_to(out).as_posix() for f in folders] == ["calibration/caudate"]
    path = tmp_path / "study.tar.gz"
    archive.save_tasks(out, path, folders)
    new = tmp_path / "again"
    assert archive.restore_tasks(path, new) == (["calibration/caudate"], [])
    kept = sorted(p.relative_to(new / "calibration" / "caudate").as_posix()
                  for p in (new / "calibration" / "caudate").rglob("*") if p.is_file())
    assert kept == [".fairal", "calibration.json", "levels.csv", "models/seed-0.pt", "settings.json"]


def test_restore_refuses_a_member_outside_a_task_folder(archive, tmp_path):
    import io
    import tarfile

    def bad_archive(index: str, member: str) -> Path:
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            for name, data in (("TASKS", index.encode()), (member, b"x")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return bad

    with pytest.raises(SystemExit, match="escape.txt"):
        archive.restore_tasks(bad_archive("runs/a/b/c/seed-0\n", "runs/a/b/c/seed-0/../../../../escape.txt"),
                              tmp_path / "job")
    with pytest.raises(SystemExit, match="not a run or baseline folder"):
        archive.restore_tasks(bad_archive("../elsewhere\n", "../elsewhere/x"), tmp_path / "job")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "job").exists()


def test_archives_keep_names_with_spaces_and_refuse_another_study(archive, tmp_path):
    out = tmp_path / "study"
    _task(out / "runs" / "my site" / "balanced" / "random" / "seed-0")
    (out / "study.json").write_text('{"study": "a"}\n')
    path = tmp_path / "a.tar.gz"
    archive.save_tasks(out, path, archive.finished_tasks(out))
    assert archive.archived_tasks(path) == ["runs/my site/balanced/random/seed-0"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text('{"study": "b"}\n')
    with pytest.raises(SystemExit, match="another study"):
        archive.restore_tasks(path, other)
    assert not (other / "runs").exists()
    mine = tmp_path / "mine"  # a folder of the user's: tasks come in, fairal's own files do not
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    assert archive.restore_tasks(path, mine)[0] == ["runs/my site/balanced/random/seed-0"]
    assert not (mine / "study.json").exists() and not (mine / ".fairal").exists()
    assert not [p for p in mine.iterdir() if p.name.startswith(".restore-")]


def test_the_export_refuses_to_drop_pending_tasks_it_lacks(evidence, archive, tmp_path):
    """An export from a job folder that lacks a pending task of the last archive (not restored) is refused,
    naming it, before anything is written."""
    job = tmp_path / "job"
    _task(job / "runs" / "strong" / "balanced" / "random" / "seed-7")
    path = tmp_path / "v2-pending.tar.gz"
    archive.save_tasks(job, path, evidence._pending_folders(job, whole=[], seeds=10))
    new = tmp_path / "new-job"
    _task(new / "runs" / "weak" / "balanced" / "random" / "seed-7")
    with pytest.raises(SystemExit, match="strong/balanced/random/seed-7"):
        evidence._pending(new, path, whole=[], seeds=10)
    assert evidence._pending(new, path, whole=[7], seeds=10) == []  # seed 7 whole: nothing pending
