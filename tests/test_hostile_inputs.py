"""Hostile inputs: case ids that are paths, strings that are code, files that lie about their size, folders that are
the user's, disks that are full or read-only. Each is refused with one line naming the file and the problem (exit 2),
and nothing outside the output folder changes."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fairal.io
from fairal.cli import app
from fairal.config import get_profile
from fairal.data.cohort import Grid, read_cases, to_case_grid
from fairal.data.volumes import read_manifest
from fairal.errors import FairalError
from fairal.io import MARKER, check_output_folder, within
from fairal.nifti import MAX_VOXELS, read_image
from fairal.run.model import UNet3D
from fairal.run.train import load_checkpoint, save_checkpoint

from .own_data import make_study

SMOKE = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
         "downsample": "1", "test_per_group": "6", "cohort_size": "4"}
FAST = {"steps": "4", "mc_samples": "3", "stochastic_batches": "5"}
runner = CliRunner()


def _sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def _hashes(root: Path, outside: Path | None = None) -> dict[str, str]:
    """The SHA-256 of every file under ``root`` except those under ``outside`` (the output folder)."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not (outside is not None and (p == outside or outside in p.parents)):
            found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _one_line_error(res, *needles: str) -> None:
    """Exit 2, one last line starting with ``error:`` (before it at most warnings of the training), no traceback,
    and every needle in that line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


@pytest.fixture
def data(tiny_dataset, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def _edit_csv(path: Path, fn) -> pd.DataFrame:
    t = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(t)
    t.to_csv(path, index=False)
    return t


def _query(study, out, *extra):
    return runner.invoke(app, ["query", str(study), "--budget", "1", "--group-by", "site", "--profile", "smoke",
                               "--out", str(out), *_sets(FAST), *extra])


# 1. a case id that is a path: never a file outside --out ------------------------------------------------------------


def test_query_never_writes_outside_out_for_a_case_id_that_is_a_path(tmp_path):
    study = make_study(tmp_path / "v-trav", per_site=3, labeled_per_site=2, unknown=1)
    # the unlabeled a02 becomes a path that leads from q/.trav.partial-PID/predictions/ to the labeled a00's image
    t = _edit_csv(study, lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 2,
                                                                                "../../../v-trav/images/a00")))
    assert t.loc[0, "case_id"] == "a00" and t.loc[0, "label"] != "" and t.loc[2, "label"] == ""
    before = _hashes(tmp_path)
    res = _query(study, tmp_path / "q" / "trav")
    _one_line_error(res, str(study), "row 4", "../../../v-trav/images/a00")
    assert _hashes(tmp_path) == before and not (tmp_path / "q").exists()


@pytest.mark.parametrize("case", ["a/b", "a\\b", "..", "x..y", ".hidden", "tab\there", "bell\x07", ""])
def test_case_ids_that_cannot_name_a_file_are_refused_at_the_edge(data, tmp_path, case):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    _edit_csv(study, lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 1, case)))
    with pytest.raises(FairalError, match=r"study\.csv: row 3") as err:
        read_cases(study, ["site"])
    assert "\n" not in str(err.value)
    _edit_csv(data / "manifest.csv", lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 0, case)))
    with pytest.raises(FairalError, match=r"manifest\.csv: row 2"):
        read_manifest(data)


def test_a_case_id_with_a_slash_fails_before_training(data, tmp_path):
    _edit_csv(data / "manifest.csv", lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 3, "x/y")))
    started = time.monotonic()
    res = runner.invoke(app, ["run", str(data), "--strategy", "entropy", "--init", "balanced", "--profile", "smoke",
                              "--out", str(tmp_path / "run"), *_sets(SMOKE)])
    _one_line_error(res, "manifest.csv: row 5", "'x/y'")
    assert time.monotonic() - started < 10 and not (tmp_path / "run").exists()


def test_within_refuses_every_way_out(tmp_path):
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("precious")
    (out / "predictions" / "link.nii.gz").symlink_to(tmp_path / "victim.txt")
    assert within(out, "predictions", "a00.nii.gz") == out / "predictions" / "a00.nii.gz"
    for names in (("..", "victim.txt"), ("predictions", "../../victim.txt"), (str(tmp_path / "victim.txt"),),
                  ("predictions", "link.nii.gz"), (".",)):
        with pytest.raises(FairalError, match="outside the output folder"):
            within(out, *names)


# 2. strings embedded in the annotators' scripts stay data -------------------------------------------------------------

HOSTILE_CASE = "x'; touch PWNED_sh; echo '$(touch PWNED_sub) \"q\" ;"
SLICER_STUB = """import json, os


def _log(*call):
    with open(os.path.join(os.environ["STUB_LOG"], "slicer.jsonl"), "a") as f:
        f.write(json.dumps(call) + "\\n")


class _Node:
    def SetName(self, name):
        _log("name", name)


class util:
    @staticmethod
    def loadVolume(path):
        _log("volume", path)

    @staticmethod
    def loadSegmentation(path):
        _log("segmentation", path)
        return _Node()
"""


def test_viewer_scripts_quote_every_path(tmp_path):
    study = make_study(tmp_path / "O'Brien; $(touch PWNED_dir) x", per_site=3, labeled_per_site=2, unknown=1)
    _edit_csv(study, lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 2, HOSTILE_CASE)))
    out = tmp_path / "q 'x'; $(touch PWNED_out)"
    before = _hashes(tmp_path, outside=out)
    res = runner.invoke(app, ["query", str(study), "--budget", "3", "--group-by", "site", "--profile", "smoke",
                              "--out", str(out), *_sets(FAST), "--quiet"])
    assert res.exit_code == 0, res.output
    assert _hashes(tmp_path, outside=out) == before
    annotate = pd.read_csv(out / "annotate.csv", dtype=str, keep_default_na=False)
    assert HOSTILE_CASE in set(annotate["case_id"]) and (out / "predictions" / f"{HOSTILE_CASE}.nii.gz").is_file()
    expected = sorted(["-g", img, "-s", pred] for img, pred in zip(annotate["image"], annotate["prediction"],
                                                                   strict=True))
    # ITK-SNAP: run the script as the docs say, with a stub that records its arguments
    stub, log = tmp_path / "stub", tmp_path / "log"
    stub.mkdir()
    log.mkdir()
    (stub / "itksnap").write_text('#!/bin/sh\nprintf \'%s\\0\' "$@" > "$STUB_LOG/$$.tmp" && '
                                  'mv "$STUB_LOG/$$.tmp" "$STUB_LOG/$$.args"\n')
    (stub / "itksnap").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    subprocess.run(["sh", str(out / "open_in_itksnap.sh")], cwd=cwd, env=env, check=True, timeout=30)
    for _ in range(100):  # the script starts one viewer per scan in the background
        if len(list(log.glob("*.args"))) == 3:
            break
        time.sleep(0.1)
    calls = sorted(p.read_bytes().decode().split("\0")[:-1] for p in log.glob("*.args"))
    assert calls == expected
    # 3D Slicer: the script run with a stub slicer module that records what it is asked to open
    (stub / "slicer.py").write_text(SLICER_STUB)
    subprocess.run([sys.executable, str(out / "open_in_slicer.py")], cwd=cwd, check=True, timeout=60,
                   env={**env, "PYTHONPATH": str(stub)})
    opened = [json.loads(line) for line in (log / "slicer.jsonl").read_text().splitlines()]
    want = []
    for case, img, pred in zip(annotate["case_id"], annotate["image"], annotate["prediction"], strict=True):
        want += [["volume", img], ["segmentation", os.path.join(str(out), pred)],
                 ["name", f"{case} (fairal prediction)"]]
    assert opened == want
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


# 3. export: never outside its folder, never a file that is not an image ----------------------------------------------


def _export(data, out, *extra):
    return runner.invoke(app, ["export", "nnunet", str(data), str(out), "--dataset-id", "7", *extra])


def test_export_never_overwrites_a_file_outside_it(data, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes_0000.nii.gz").write_text("precious")
    _edit_csv(data / "manifest.csv",
              lambda t: t.__setitem__("case_id", t["case_id"].where(t.index != 0, "../../../victim/notes")))
    before = _hashes(tmp_path)
    res = _export(data, tmp_path / "raw")
    _one_line_error(res, "manifest.csv: row 2", "../../../victim/notes")
    assert _hashes(tmp_path) == before and (victim / "notes_0000.nii.gz").read_text() == "precious"
    assert not (tmp_path / "raw").exists()


def test_export_links_only_nifti_images(data, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    t = _edit_csv(data / "manifest.csv", lambda t: t.__setitem__("image", t["image"].where(t.index != 5, str(secret))))
    before = _hashes(tmp_path)
    res = _export(data, tmp_path / "raw")
    _one_line_error(res, f"case {t['case_id'][5]}", str(secret), "not a readable NIfTI image")
    assert _hashes(tmp_path) == before and not (tmp_path / "raw").exists()
    assert os.stat(secret).st_nlink == 1  # never hard-linked


@pytest.mark.parametrize("link_fails", [False, True])
def test_export_never_follows_an_existing_destination(data, tmp_path, monkeypatch, link_fails):
    from fairal.data.export import _link_or_copy

    victim = tmp_path / "victim.nii.gz"
    victim.write_text("precious")
    dst = tmp_path / "out" / "a_0000.nii.gz"
    dst.parent.mkdir()
    dst.symlink_to(victim)
    if link_fails:  # another file system: the copy must refuse the destination as well
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    src = next((data / "images").iterdir())
    with pytest.raises(FairalError, match="already exists"):
        _link_or_copy(src, dst)
    assert victim.read_text() == "precious" and dst.is_symlink()
    fresh = tmp_path / "out" / "b_0000.nii.gz"
    _link_or_copy(src, fresh)
    assert fresh.read_bytes() == src.read_bytes()


# 4. run and baseline never write into a folder of the user's ---------------------------------------------------------


def test_run_and_baseline_refuse_a_folder_fairal_did_not_make(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    (mine / "baseline_table.csv").write_text("my,own\n1,2\n")
    before = _hashes(tmp_path)
    res = runner.invoke(app, ["run", str(data), "--strategy", "random", "--init", "balanced", "--profile", "smoke",
                              "--out", str(mine), *_sets(SMOKE)])
    _one_line_error(res, str(mine), "not made by fairal")
    res = runner.invoke(app, ["baseline", str(data), "--profile", "smoke", "--out", str(mine), "--quiet",
                              *_sets(SMOKE)])
    _one_line_error(res, str(mine), "not made by fairal")
    assert _hashes(tmp_path) == before and sorted(p.name for p in mine.iterdir()) == ["baseline_table.csv",
                                                                                        "config.json"]
    # the dataset folder is fairal's, but not a run's
    res = runner.invoke(app, ["run", str(data), "--strategy", "random", "--init", "balanced", "--profile", "smoke",
                              "--out", str(data), *_sets(SMOKE)])
    _one_line_error(res, "not made by fairal for a run")
    assert _hashes(tmp_path) == before
    # fairal's own run folder is marked, and resumed
    run = tmp_path / "run"
    for _ in range(2):
        res = runner.invoke(app, ["run", str(data), "--strategy", "random", "--init", "balanced", "--profile",
                                  "smoke", "--out", str(run), "--quiet", *_sets(SMOKE)])
        assert res.exit_code == 0, res.output
    assert (run / MARKER).read_text() == "run\n" and "nothing to do" in res.output


# 5. sizes are checked before anything is allocated --------------------------------------------------------------------


def _lying_nifti(path: Path, shape=(1000, 1000, 1000)) -> Path:
    """A few hundred bytes whose header claims ``shape`` float32 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    buffer = io.BytesIO()
    header.write_to(buffer)
    with gzip.open(path, "wb") as f:
        f.write(buffer.getvalue() + b"\0" * 4 + b"\0" * 64)
    return path


def test_a_gzip_of_too_few_voxels_is_named_on_one_line(tmp_path):
    short = _lying_nifti(tmp_path / "short.nii.gz", shape=(10, 10, 10))  # 68 bytes of 4000
    with pytest.raises(FairalError) as err:
        read_image(short)
    assert "short.nii.gz is corrupt (truncated or damaged): " in str(err.value) and "\n" not in str(err.value)


def test_a_header_that_claims_a_huge_image_is_refused_before_reading(tmp_path):
    bomb = _lying_nifti(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(FairalError, match=r"bomb\.nii\.gz.*1000 x 1000 x 1000.*more than fairal's limit"):
            read_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    shutil.copy(bomb, study.parent / "images" / "a01.nii.gz")
    res = _query(study, tmp_path / "q")
    _one_line_error(res, "a01.nii.gz", "1000 x 1000 x 1000", f"{MAX_VOXELS:,}")
    assert not (tmp_path / "q").exists()


def test_a_spacing_that_makes_a_huge_grid_is_refused(tmp_path):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    res = _query(study, tmp_path / "q", "--spacing", "0.01")
    _one_line_error(res, "--spacing 0.01", "more than fairal's limit")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("grid, message", [
    ({"shape": [20000, 20000, 20000], "affine": np.eye(4).tolist()}, "20000 x 20000 x 20000"),
    ({"shape": [10, 10, 10], "affine": np.zeros((4, 4)).tolist()}, "singular"),
    ({"shape": [10, -3, 10], "affine": np.eye(4).tolist()}, "positive"),
])
def test_a_model_with_an_impossible_grid_is_refused(tmp_path, grid, message):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    model = tmp_path / "model.pt"
    save_checkpoint(UNet3D(features=get_profile("smoke").features), model, {"grid": grid})
    res = _query(study, tmp_path / "q", "--model", str(model))
    _one_line_error(res, str(model), message)
    assert not (tmp_path / "q").exists()


# 6. a label value that some maps do not hold -------------------------------------------------------------------------


def test_a_label_value_absent_from_some_maps_is_refused(tmp_path):
    study = make_study(tmp_path / "study", per_site=3, labeled_per_site=2, unknown=1)
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    labels = [rel for rel in t["label"] if rel]
    first = study.parent / labels[0]
    img = nib.load(str(first))
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) * 255).astype(np.uint8), img.affine), str(first))
    res = _query(study, tmp_path / "q", "--label-value", "255")
    _one_line_error(res, "--label-value 255", f"{len(labels) - 1} of {len(labels)} label maps", labels[1])
    assert labels[0] not in res.output.split("maps:")[1]
    assert not (tmp_path / "q").exists()


# 7. one line, exit 2, nothing half-written --------------------------------------------------------------------------


def test_cuda_without_a_gpu_fails_before_anything_is_written(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cmd in (["run", str(data), "--strategy", "random", "--init", "balanced"], ["baseline", str(data)]):
        out = tmp_path / cmd[0]
        res = runner.invoke(app, [*cmd, "--profile", "smoke", "--out", str(out), "--set", "device=cuda",
                                  *_sets(SMOKE)])
        _one_line_error(res, "device=cuda", "no CUDA GPU")
        assert not out.exists()


def test_simulate_refuses_a_negative_seed(tmp_path):
    for option in ("--seed", "--model-seed"):
        res = runner.invoke(app, ["simulate", str(tmp_path / "s"), option, "-1", "--quiet"])
        _one_line_error(res, f"{option} must be a whole number >= 0, got -1")
    assert not (tmp_path / "s").exists()


MATH = "$\\nope$"


def _run_of_groups(res: Path, g: str, case: str) -> None:
    """A finished run under ``res`` whose groups are ``g`` and "2", with a case ``case`` of group ``g``."""
    run = res / "runs" / "strong" / "balanced" / "entropy" / "seed-0"
    run.mkdir(parents=True)
    pd.DataFrame({"round": [0, 1], "n_labeled": [10, 14], f"n_labeled_g{g}": [5, 7], "n_labeled_g2": [5, 7],
                  "dice_all": [0.8, 0.85], f"dice_g{g}": [0.7, 0.8], "dice_g2": [0.9, 0.9], "delta": [0.2, 0.1],
                  "essp": [0.66, 0.77], f"w_g{g}": [0.5, 0.6], "w_g2": [0.5, 0.4]}).to_csv(run / "rounds.csv",
                                                                                      index=False)
    pd.DataFrame({"round": [1, 1], "case_id": [case, "b"], "group": [g, "2"], "split": ["test", "test"],
                  "dice": [0.8, 0.9]}).to_csv(run / "cases.csv", index=False)
    (run / "state.json").write_text(json.dumps({"completed_round": 1, "finished": True}))
    (run / "config.json").write_text(json.dumps({"settings": {"strategy": "entropy", "profile": {"name": "x"}}}))


def test_math_like_case_ids_and_groups_are_drawn_as_written(tmp_path):
    from fairal.owndata.montage import write_montage

    vol = np.zeros((8, 8, 8), np.float32)
    vol[2:6, 2:6, 2:6] = 1.0
    write_montage(tmp_path / "montage.png", [vol], [vol], [vol > 0], [f"#1 {MATH}\n{MATH}  score 0.5"])
    assert (tmp_path / "montage.png").stat().st_size > 1000
    _run_of_groups(tmp_path / "res", MATH, MATH)  # the report: a run whose groups are "$\nope$" and "2"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, to read it back
        res = runner.invoke(app, ["report", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    svg = (tmp_path / "res" / "report" / "fig7_dice_per_group.svg").read_text()
    assert "Group $\\nope$" in svg.replace("&#36;", "$")
    assert "G$\\nope$" in (tmp_path / "res" / "report" / "fig9_case_dice.svg").read_text().replace("&#36;", "$")


def _mini_run(data, out):
    return runner.invoke(app, ["run", str(data), "--strategy", "entropy", "--init", "balanced", "--profile", "smoke",
                               "--out", str(out), "--quiet", *_sets(SMOKE)])


def test_a_full_disk_is_one_clear_line(data, tmp_path, monkeypatch):
    real_open = open

    class Full:  # a file on a disk that fills up after 100 bytes
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fairal.io, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    out = tmp_path / "run"
    res = _mini_run(data, out)
    _one_line_error(res, str(out / "checkpoints" / "round-00.pt"), "no space left on the device")
    assert "enforce fail" not in res.output
    assert not list(out.rglob("*partial*")) and not (out / "state.json").exists()


def _namespace(script: str) -> subprocess.CompletedProcess:
    """``script`` run by sh as root of its own user and mount namespace (a tmpfs or a read-only mount of its own)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True)
    if probe.returncode:
        pytest.skip("no user and mount namespaces here")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)


def test_a_real_full_disk_and_a_read_only_results_folder(data, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    fairal_cmd = f"{sys.executable} -m fairal.cli"
    args = " ".join(_sets(SMOKE))
    res = _namespace(f"mount -t tmpfs -o size=120k none {disk} && {fairal_cmd} run {data} --strategy entropy "
                     f"--init balanced --profile smoke --quiet --out {disk}/run {args}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no space left on the device" in res.stderr and "Traceback" not in res.stderr, res.stderr
    results = tmp_path / "results"
    run = results / "runs" / "strong" / "balanced" / "entropy" / "seed-0"
    run.mkdir(parents=True)
    (run / "rounds.csv").write_text("round,n_labeled,dice_all,delta,essp\n0,10,0.9,0.02,0.882\n")
    (run / "state.json").write_text(json.dumps({"completed_round": 0, "finished": True}))
    res = _namespace(f"mount --bind {results} {results} && mount -o remount,ro,bind {results} && "
                     f"{fairal_cmd} report {results}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "read-only file system" in res.stderr and "permission denied" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_read_only_folder_is_not_called_permission_denied(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*real(p)[:8], os.ST_RDONLY, real(p)[9])))
    with pytest.raises(FairalError, match=r"read-only file system") as err:
        check_output_folder(tmp_path / "out")
    assert "permission denied" not in str(err.value)


def test_a_dataset_deleted_while_a_run_starts(data, tmp_path, monkeypatch):
    from fairal.run.loop import ActiveLearningRun

    start = ActiveLearningRun.start

    def delete_then_start(self):
        shutil.rmtree(data)
        return start(self)

    monkeypatch.setattr(ActiveLearningRun, "start", delete_then_start)
    res = _mini_run(data, tmp_path / "run")
    _one_line_error(res, str(data), "no such file or directory")


# 8. groups are the text the user wrote; one name per column -----------------------------------------------------------


def test_groups_are_compared_as_written(data, tmp_path):
    texts = ["007", "7", "7.0", "1e0"]

    def regroup(t):
        t["group"] = [texts[i % 4] for i in range(len(t))]
        t["split"] = ["test" if i < 8 else "pool" for i in range(len(t))]

    _edit_csv(data / "manifest.csv", regroup)
    m = read_manifest(data)
    assert sorted(map(str, set(m["group"]))) == sorted(texts)
    assert m.groupby("group").size().to_dict() == {"007": 6, 7: 6, "7.0": 6, "1e0": 6}
    study = make_study(tmp_path / "study", per_site=4, labeled_per_site=2, unknown=1)
    _edit_csv(study, lambda t: t.__setitem__("site", [texts[i % 4] for i in range(len(t))]))
    assert sorted(set(read_cases(study, ["site"])["group"])) == sorted(texts)


def test_simulated_groups_stay_numbers(tiny_dataset):
    m = read_manifest(tiny_dataset)
    assert sorted(set(m["group"])) == [1, 2] and all(type(g) is int for g in m["group"])


def test_duplicate_column_names_are_refused(data, tmp_path):
    manifest = data / "manifest.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",group"] + [line + ",9" for line in lines[1:]]) + "\n")
    with pytest.raises(FairalError, match=r"manifest\.csv: column 'group' appears more than once"):
        read_manifest(data)
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    lines = study.read_text().splitlines()
    study.write_text("\n".join([lines[0] + ",site"] + [line + ",Z" for line in lines[1:]]) + "\n")
    res = _query(study, tmp_path / "q")
    _one_line_error(res, "study.csv: column 'site' appears more than once")
    for sep in (";", "\t"):  # a spreadsheet's export in a locale that separates lists otherwise
        study.write_text("\n".join(line.replace(",", sep) for line in lines) + "\n")
        res = _query(study, tmp_path / "q")
        _one_line_error(res, f"study.csv: its columns are separated by {sep!r}, not commas (header "
                             f"{('case_id' + sep + 'image')!r}"[:-1])


# 9. the smaller ones --------------------------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_pickle",))


def test_a_pickled_model_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "meta": Evil()}, path)
    with pytest.raises(FairalError, match="holds Python objects") as err:
        load_checkpoint(path, UNet3D(features=(4,)))
    text = str(err.value)
    assert "weights_only" not in text and "Re-running" not in text and "\n" not in text
    assert not Path("PWNED_pickle").exists() and not (tmp_path / "PWNED_pickle").exists()


def test_a_prediction_keeps_the_scans_header_codes(tmp_path):
    affine = np.array([[2.0, 0.3, 0.0, -10.0], [0.0, 2.0, 0.0, -12.0], [0.0, 0.0, 2.0, -8.0], [0, 0, 0, 1]])
    scan = nib.Nifti1Image(np.random.default_rng(0).random((10, 12, 8)).astype(np.float32), None)
    scan.set_sform(affine, code=2)
    scan.set_qform(None, code=0)
    nib.save(scan, str(tmp_path / "scan.nii.gz"))
    grid = Grid((10, 12, 8), affine)
    pred = to_case_grid(np.full((10, 12, 8), 0.9, np.float32), grid, str(tmp_path / "scan.nii.gz"), "a")
    nib.save(pred, str(tmp_path / "pred.nii.gz"))
    back = nib.load(str(tmp_path / "pred.nii.gz"))
    assert int(back.header["qform_code"]) == 0 and int(back.header["sform_code"]) == 2
    np.testing.assert_allclose(back.get_sform(), affine, atol=1e-6)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert np.asarray(back.dataobj)[1:-1, 1:-1, 1:-1].all()  # the prediction itself, on the scan's grid


def test_a_grid_without_entropy_prints_no_nan(tmp_path, monkeypatch):
    import fairal.grid.driver

    run = tmp_path / "runs" / "strong" / "balanced" / "random" / "seed-0"
    run.mkdir(parents=True)
    (run / "rounds.csv").write_text("round,n_labeled,dice_all,delta,essp\n0,10,0.9,0.02,0.882\n")
    (run / "state.json").write_text(json.dumps({"completed_round": 0, "finished": True}))
    monkeypatch.setattr(fairal.grid.driver, "run_study", lambda *a, **k: None)  # the grid is already there
    res = runner.invoke(app, ["reproduce", str(tmp_path), "--profile", "smoke", "--strategies", "random"],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "random" in res.output and "nan" not in res.output.lower()
    assert "Δ cut vs entropy" not in res.output  # no entropy run in the scenario: no column of n/a


def test_messages_say_what_the_os_said():
    from fairal.cli import os_error_message

    assert "read-only file system" in os_error_message(OSError(errno.EROFS, "Read-only file system", "/x/y"))
    assert "permission denied" in os_error_message(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert os_error_message(OSError(errno.ENOSPC, "No space", "/x/y")).startswith("/x/y: no space left on the device")


# 10. CSV files that are not what they seem ---------------------------------------------------------------------------


def _ids(study: Path, ids: dict[int, str]) -> None:
    _edit_csv(study, lambda t: t.__setitem__("case_id", [ids.get(i, c) for i, c in enumerate(t["case_id"])]))


@pytest.mark.parametrize("first, second", [("s0c00", "S0C00"), ("caf\u00e9", "cafe\u0301")])
def test_case_ids_that_differ_only_in_case_are_refused(tmp_path, first, second):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    _ids(study, {0: first, 3: second})
    with pytest.raises(FairalError, match=f"study.csv: rows 2 and 5: case ids '{first}' and '{second}' differ only "
                                          "in letter case or Unicode form: they name the same file on a "
                                          "case-insensitive disk"):
        read_cases(study, ["site"])
    before = _hashes(tmp_path)
    _one_line_error(_query(study, tmp_path / "q"), "rows 2 and 5")
    assert _hashes(tmp_path) == before and not (tmp_path / "q").exists()


def test_one_image_under_two_ids_is_refused(tmp_path):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    assert t.loc[0, "label"] and not t.loc[1, "label"]  # a labeled case and an unlabeled one (the pool)
    _edit_csv(study, lambda t: t.__setitem__("image", t["image"].where(t.index != 1, t.loc[0, "image"])))
    with pytest.raises(FairalError, match=r"study\.csv: cases a00 and a01 have the same image \(images/a00.nii.gz, "
                                          r"images/a00.nii.gz\): one scan under two ids"):
        read_cases(study, ["site"])
    # under another name: a link to it is the same scan
    (study.parent / "images" / "again.nii.gz").symlink_to(study.parent / "images" / "a00.nii.gz")
    _edit_csv(study, lambda t: t.__setitem__("image", t["image"].where(t.index != 1, "images/again.nii.gz")))
    before = _hashes(tmp_path)
    _one_line_error(_query(study, tmp_path / "q"), "cases a00 and a01 have the same image", "images/again.nii.gz")
    assert _hashes(tmp_path) == before and not (tmp_path / "q").exists()


def test_one_label_of_two_cases_or_an_image_that_is_its_label_is_refused(tmp_path):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=2, unknown=1)
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    first, second = t.index[t["label"] != ""][:2]
    a, b = t.loc[first, "case_id"], t.loc[second, "case_id"]
    _edit_csv(study, lambda t: t.__setitem__("label", t["label"].where(t.index != second, t.loc[first, "label"])))
    with pytest.raises(FairalError, match=f"case {b}'s label \\({t.loc[first, 'label']}\\) is case {a}'s label"):
        read_cases(study, ["site"])
    _edit_csv(study, lambda t: t.__setitem__("label", t["label"].where(t.index != second, t.loc[second, "image"])))
    before = _hashes(tmp_path)
    _one_line_error(_query(study, tmp_path / "q"), f"case {b}: its image and its label are the same file")
    assert _hashes(tmp_path) == before and not (tmp_path / "q").exists()


def test_a_folder_a_device_or_a_pipe_given_as_the_csv_says_what_it_is(tmp_path):
    import signal

    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a CSV that never ends was read"))
    signal.alarm(20)  # reading /dev/zero or opening a pipe without a writer would never return
    try:
        for path, what in ((tmp_path, "is a folder, not a CSV file"), (Path("/dev/zero"), "is a character device"),
                           (pipe, "is a named pipe")):
            with pytest.raises(FairalError, match=f"^{path} {what}"):
                read_cases(path, ["site"])
            _one_line_error(_query(path, tmp_path / "q"), f"{path} {what}")
        with pytest.raises(FairalError, match=f"{tmp_path / 'none.csv'}: file not found"):
            read_cases(tmp_path / "none.csv", ["site"])
    finally:
        signal.alarm(0)
    assert not (tmp_path / "q").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    from fairal.grid.spec import load_study

    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    plain = read_cases(study, ["site"])
    study.write_bytes(b"\xef\xbb\xbf" + study.read_bytes())  # as spreadsheet programs save "CSV UTF-8"
    pd.testing.assert_frame_equal(read_cases(study, ["site"]), plain)
    toml = '# a study\nprofile = "smoke"\n[datasets.a]\nsimulate = { bias = "weak" }\n'
    (tmp_path / "plain.toml").write_text(toml)
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + toml.encode())
    assert load_study(tmp_path / "bom.toml").datasets == load_study(tmp_path / "plain.toml").datasets


SCRIPT = "<script>alert(1)</script>"


def test_a_group_named_like_markup_is_text_in_every_report_file(tmp_path):
    _run_of_groups(tmp_path / "res", SCRIPT, "a|b")
    res = runner.invoke(app, ["report", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    report = tmp_path / "res" / "report"
    header = (report / "final_budget.md").read_text().splitlines()[0]
    assert "dice_g&lt;script&gt;alert(1)&lt;/script&gt;" in header and "<" not in header, header
    for page in report.glob("*.md"):
        assert "<script" not in page.read_text(), page
    assert "<script" not in (report / "report.html").read_text()
    from fairal.report.build import markdown_table

    table = markdown_table(pd.DataFrame({"case": ["a|b", "x\ny"], "v": [1.0, 2.0]}))
    assert table.splitlines()[2] == "| a\\|b | 1.000 |" and table.splitlines()[3] == "| x y | 2.000 |"


# 11. a group whose labeled cases all have empty label maps ---------------------------------------------------------


def _empty_labels(study: Path, cases: list[str]) -> None:
    """The label maps of ``cases`` replaced by empty maps on the same grid."""
    for case in cases:
        path = study.parent / "labels" / f"{case}.nii.gz"
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(path))


def test_a_group_whose_labels_are_all_empty_is_refused_by_query(tmp_path):
    from fairal.data.cohort import load_cases, structure_grid

    study = make_study(tmp_path / "study", per_site=3, labeled_per_site=2, unknown=1)
    cases = read_cases(study, ["site"])
    grid = structure_grid(cases, 2.0, 6.0)  # the grid a model trained before the labels were lost carries
    _empty_labels(study, ["b00"])  # one empty map of a group with others: kept (a structure may be absent)
    assert len(structure_grid(cases, 2.0, 6.0).shape) == 3
    _empty_labels(study, ["b01"])
    message = (r"group B: every one of its 2 labeled case\(s\) has an empty label map \(\S+/labels/b00.nii.gz, "
               r"\S+/labels/b01.nii.gz\): its Dice would be 1 for an empty prediction and 0 for any other")
    with pytest.raises(FairalError, match=message):
        structure_grid(cases, 2.0, 6.0)
    with pytest.raises(FairalError, match=message):  # a query with --model: the model's grid, the same rule
        load_cases(cases, grid)
    before = _hashes(tmp_path)
    _one_line_error(_query(study, tmp_path / "q"), "group B: every one of its 2 labeled case(s) has an empty label")
    assert _hashes(tmp_path) == before and not (tmp_path / "q").exists()
    unknown = make_study(tmp_path / "unknown", per_site=3, labeled_per_site=2, unknown=1)
    _empty_labels(unknown, ["b00", "b01"])
    _edit_csv(unknown, lambda t: t.__setitem__("site", t["site"].where(~t["case_id"].isin(["b00", "b01"]), "")))
    structure_grid(read_cases(unknown, ["site"]), 2.0, 6.0)  # cases of unknown group weigh no group


def test_group_weights_refuse_a_group_whose_labels_are_all_empty():
    import fairal

    dice, groups = [1.0, 1.0, 0.8, 0.7], ["F", "F", "M", "M"]
    with pytest.raises(FairalError, match=r"group F: every one of its 2 labeled case\(s\) has an empty label map "
                                          r"\(labeled case 0, labeled case 1\)"):
        fairal.group_weights(dice, groups, ["F", "M"], empty=[True, True, False, False])
    assert fairal.group_weights(dice, groups, ["F", "M"], empty=[True, False, False, False]) == \
        fairal.group_weights(dice, groups, ["F", "M"])
    with pytest.raises(FairalError, match="3 empty-label flags for 4 labeled cases"):
        fairal.group_weights(dice, groups, ["F", "M"], empty=[True, False, False])


def test_a_study_cohort_with_a_group_of_empty_labels_is_refused_before_any_work(tmp_path, tiny_dataset):
    m = pd.read_csv(tiny_dataset / "manifest.csv")
    (tmp_path / "empty").mkdir()
    labels = []
    for case, group, label in zip(m["case_id"], m["group"], m["label"], strict=True):
        if group == 2:  # the south's labels all empty
            img, path = nib.load(str(tiny_dataset / label)), tmp_path / "empty" / f"{case}.nii.gz"
            nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(path))
            labels.append(str(path))
        else:
            labels.append(str(tiny_dataset / label))
    pd.DataFrame({"case_id": m["case_id"], "image": [str(tiny_dataset / p) for p in m["image"]], "label": labels,
                  "site": np.where(m["group"] == 1, "north", "south")}).to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "s.toml").write_text('profile = "smoke"\nseeds = 6\ninits = ["balanced"]\nstrategies = ["random", '
                                     '"weighted-localized-entropy"]\n[datasets.lab]\ncsv = "cohort.csv"\n'
                                     'group_by = ["site"]\n[datasets.lab.set]\nfinal_size = 14\n')
    before = _hashes(tmp_path)
    res = runner.invoke(app, ["study", str(tmp_path / "s.toml"), str(tmp_path / "out"), "--quiet"])
    _one_line_error(res, "s.toml, dataset lab: group south: every one of its 12 labeled case(s) has an empty label")
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


# 12. a study file nested beyond reason -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth, needle", [(5000, "its lists or tables nest too deep to read"),
                                           (100, "nests lists or tables more than 32 deep")])
def test_a_deeply_nested_study_file_is_one_line(tmp_path, depth, needle):
    path = tmp_path / "deep.toml"
    path.write_text('profile = "smoke"\nx = ' + "[" * depth + "]" * depth + '\n[datasets.a]\nsimulate = {}\n')
    res = runner.invoke(app, ["study", str(path), str(tmp_path / "out")])
    _one_line_error(res, str(path), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.toml"]
