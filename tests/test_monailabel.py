"""fairal inside MONAI Label: a real `monailabel start_server` with the app `fairal monailabel-app` writes, asked over
HTTP for the next sample; its answer is the image `fairal query` ranks first with the same model, and a label saved
through the server changes the next answer's weights. Needs MONAI Label (`make monailabel`); skipped without it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app

from .own_data import make_study

SETS = ["--set", "steps=30", "--set", "batch_size=4"]
STRATEGY = "weighted-localized-entropy"


def test_the_app_folder_is_written_whole_and_checked(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), "--group-by", "sex", "--profile", "smoke",
                              *SETS])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "app" / "fairal.json").read_text())
    assert settings["strategy"] == STRATEGY and settings["group_by"] == ["sex"] and settings["set"]["steps"] == "30"
    assert "from fairal.monailabel import FairalApp" in (tmp_path / "app" / "main.py").read_text()
    for bad, message in ((["--strategy", "weighted-localised-entropy"], "did you mean"),
                         (["--set", "final_size=5"], "does not use the setting final_size"),
                         (["--model", str(tmp_path / "none.pt")], "checkpoint file not found")):
        res = runner.invoke(app, ["monailabel-app", str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app")])
    assert res.exit_code == 2 and "not empty" in res.output


def _studies(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A MONAI Label studies folder (images, labels/final/ of the labeled ones, groups.csv with two groups and two
    images of unknown group) and the same study as a fairal CSV of the same files."""
    src = tmp_path / "src"
    study = pd.read_csv(make_study(src, per_site=4, labeled_per_site=2, unknown=1), dtype=str, keep_default_na=False)
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    rows = []
    for r in study.itertuples():
        image = studies / f"{r.case_id}.nii.gz"
        shutil.copyfile(src / r.image, image)
        label = ""
        if r.label:
            label = studies / "labels" / "final" / f"{r.case_id}.nii.gz"
            shutil.copyfile(src / r.label, label)
        rows.append({"case_id": r.case_id, "image": str(image), "label": str(label), "sex": r.sex})
    cases = pd.DataFrame(rows)
    unlabeled = cases.index[cases["label"] == ""]
    cases.loc[unlabeled[:2], "sex"] = ""  # two images of unknown group: the expected weight
    cases[["case_id", "sex"]].to_csv(studies / "groups.csv", index=False)
    return studies, cases


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_next_sample_over_http_is_fairal_query_s_first(tmp_path):
    pytest.importorskip("monailabel")
    httpx = pytest.importorskip("httpx")
    runner = CliRunner()
    studies, cases = _studies(tmp_path)
    csv = tmp_path / "cases.csv"
    cases.to_csv(csv, index=False)
    # a model trained by fairal query on the saved labels: the app's first model
    res = runner.invoke(app, ["query", str(csv), "--budget", "1", "--group-by", "sex", "--out", str(tmp_path / "q0"),
                              "--profile", "smoke", *SETS, "--quiet"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "q0" / "model.pt"
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), "--group-by", "sex", "--model", str(model),
                              "--profile", "smoke", *SETS])
    assert res.exit_code == 0, res.output
    # what fairal query ranks first with that model
    res = runner.invoke(app, ["query", str(csv), "--budget", "1", "--group-by", "sex", "--model", str(model),
                              "--out", str(tmp_path / "q1"), "--profile", "smoke", *SETS, "--quiet"])
    assert res.exit_code == 0, res.output
    expected = pd.read_csv(tmp_path / "q1" / "query.csv")
    weights = json.loads((tmp_path / "q1" / "query.json").read_text())["weights"]

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    server = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", str(tmp_path / "app"),
                               "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            for _ in range(240):
                if server.poll() is not None:
                    text = (tmp_path / "server.log").read_text()
                    pytest.fail(f"the server stopped (exit {server.returncode}):\n{text}")
                try:
                    if client.get("/info/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            info = client.get("/info/").json()
            assert STRATEGY in info["strategies"] and "fairal" in info["trainers"]
            first = client.post(f"/activelearning/{STRATEGY}", json={})
            assert first.status_code == 200, first.text
            first = first.json()
            assert first["id"] == expected.loc[0, "case_id"]
            assert first["fairal_score"] == pytest.approx(expected.loc[0, "score"], rel=1e-6)
            assert first["fairal_weights"] == pytest.approx(weights)
            assert first["fairal_reason"] == expected.loc[0, "reason"]
            # an annotator saves a label (here the image's true one): the labeled set and its Dice change
            saved = cases.loc[cases["label"] == "", "case_id"].iloc[-1]
            img = nib.load(str(studies / f"{saved}.nii.gz"))
            drawn = tmp_path / f"{saved}-label.nii.gz"  # its structure: the bright ellipsoid of the image
            nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 900).astype(np.uint8), img.affine), str(drawn))
            with drawn.open("rb") as f:
                put = client.put("/datastore/label", params={"image": saved},
                                 files={"label": (f"{saved}.nii.gz", f, "application/gzip")})
            assert put.status_code == 200, put.text
            assert (studies / "labels" / "final" / f"{saved}.nii.gz").is_file()
            second = client.post(f"/activelearning/{STRATEGY}", json={}).json()
            assert second["fairal_n_labeled"] == first["fairal_n_labeled"] + 1
            assert second["fairal_weights"] != pytest.approx(first["fairal_weights"])
            assert second["id"] != saved
            # the app's training on the saved labels (7 now) replaces its model
            before = (tmp_path / "app" / "model" / "model.pt").read_bytes()
            train = client.post("/train/fairal", params={"run_sync": True}, json={})
            assert train.status_code == 200, train.text
            assert (tmp_path / "app" / "model" / "model.pt").read_bytes() != before
            third = client.post(f"/activelearning/{STRATEGY}", json={}).json()
            assert third["fairal_n_labeled"] == second["fairal_n_labeled"] and third["id"] != saved
            # a strategy of fairal's grammar that the app does not list is built when asked for
            other = client.post("/activelearning/weighted-bald", json={})
            assert other.status_code == 200 and other.json()["fairal_strategy"] == "weighted-bald", other.text
            bad = client.post("/activelearning/weighted-localised-entropy", json={})
            assert bad.status_code == 400 and "did you mean 'weighted-localized-entropy'" in bad.text, bad.text
            # the app's inference: a label to correct, on the image's own grid
            infer = client.post("/infer/fairal", params={"image": second["id"]}, json={})
            assert infer.status_code == 200, infer.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.poll() is not None
