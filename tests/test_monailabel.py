"""fairal inside MONAI Label: a real `monailabel start_server` with the app `fairal monailabel-app` writes (one server
for the module), asked over HTTP for the next sample; its answer is the image `fairal query` ranks first with the
same model and cross-validated group Dice (the harder group weighs more), a second click gets the next image (the
first is held for its client) from the stored scores, bad files placed in the studies folder by hand are left out
with a warning, and a label saved through the server ends its image's lease and makes the next answer score again,
with new weights. Hostile requests (ids and tags that are paths, uploads that are not 3D NIfTI volumes on their
image's grid, /infer on a server path) are refused with HTTP 400 and write nothing. The server tests need MONAI Label
(`make monailabel`) and are skipped without it; the leases, the stored scores' key and the group Dice setting are
tested without a server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.data.cohort import read_cases
from fairal.errors import FairalError
from fairal.io import file_version
from fairal.owndata.serving import (
    AUTO_CROSS_VALIDATED_MIN,
    FoldDice,
    Leases,
    StoredScores,
    prediction_name,
    ranking_key,
    resolve_group_dice,
)

from .own_data import make_study

SETS = ["--set", "steps=30", "--set", "batch_size=4"]
STRATEGY = "weighted-localized-entropy"
#: The harder group of the served study: its images carry this much more noise, so the model segments it worse on
#: images it has not trained on (a gap the out-of-fold Dice sees and the labeled images' own Dice barely does).
HARD_GROUP, HARD_NOISE = "F", 300.0


def test_the_app_folder_is_written_whole_and_checked(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), "--group-by", "sex", "--profile", "smoke",
                              *SETS])
    assert res.exit_code == 0, res.output
    assert "--host 127.0.0.1" in res.output and "Running it for a lab" in res.output  # localhost unless told
    settings = json.loads((tmp_path / "app" / "fairal.json").read_text())
    assert settings["strategy"] == STRATEGY and settings["group_by"] == ["sex"] and settings["set"]["steps"] == "30"
    assert settings["group_dice"] == "auto" and settings["lease_minutes"] == 30.0
    assert "from fairal.owndata.monailabel import FairalApp" in (tmp_path / "app" / "main.py").read_text()
    for bad, message in ((["--strategy", "weighted-localised-entropy"], "did you mean"),
                         (["--set", "final_size=5"], "does not use the setting final_size"),
                         (["--model", str(tmp_path / "none.pt")], "checkpoint file not found"),
                         (["--model", str(tmp_path)], f"checkpoint {tmp_path} is a folder, not a model file"),
                         (["--group-dice", "leave-one-out"], "--group-dice must be one of labeled, cross-validated"),
                         (["--lease-minutes", "0"], "--lease-minutes must be a number of minutes > 0"),
                         (["--lease-minutes", "nan"], "--lease-minutes must be a number of minutes > 0")):
        res = runner.invoke(app, ["monailabel-app", str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app")])
    assert res.exit_code == 2 and "not empty" in res.output
    # --overwrite replaces what the command wrote, never what the server made there since (a trained model, work)
    (tmp_path / "app" / "work").mkdir()
    (tmp_path / "app" / "work" / "leases.json").write_text("{}")
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), "--overwrite", "--lease-minutes", "5"])
    assert res.exit_code == 2 and "holds 1 file(s) fairal did not write there" in res.output, res.output
    assert "work/leases.json" in res.output and (tmp_path / "app" / "work" / "leases.json").is_file()
    (tmp_path / "app" / "work" / "leases.json").unlink()
    res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), "--overwrite", "--lease-minutes", "5"])
    assert res.exit_code == 0 and json.loads((tmp_path / "app" / "fairal.json").read_text())["lease_minutes"] == 5


def _studies(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A MONAI Label studies folder (images, labels/final/ of the labeled ones, groups.csv with two groups, three
    labeled images each, and two images of unknown group; the images of :data:`HARD_GROUP` noisier) and the same
    study as a fairal CSV of the same files."""
    src = tmp_path / "src"
    study = pd.read_csv(make_study(src, per_site=4, labeled_per_site=2, unknown=1), dtype=str, keep_default_na=False)
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    rows, rng = [], np.random.default_rng(1)
    for r in study.itertuples():
        image = studies / f"{r.case_id}.nii.gz"
        img = nib.load(str(src / r.image))
        data = np.asarray(img.dataobj, np.float32)
        noise = rng.normal(0.0, HARD_NOISE, data.shape) if r.sex == HARD_GROUP else 0.0
        nib.save(nib.Nifti1Image((data + noise).astype(np.float32), img.affine), str(image))
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


def _plant_bad_cases(studies: Path) -> None:
    """What a lab may leave in its studies folder by hand: a file that is not NIfTI, and an image whose final label
    lies on another grid (both unknown to groups.csv)."""
    (studies / "zz-corrupt.nii.gz").write_bytes(b"not a NIfTI file\n" * 10)
    img = nib.load(str(next(studies.glob("*.nii.gz"))))
    nib.save(img, str(studies / "zz-grid.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), img.affine),
             str(studies / "labels" / "final" / "zz-grid.nii.gz"))


def _start(app_dir: Path, studies: Path, root: Path) -> tuple[subprocess.Popen, str]:
    """The server, on localhost, with its temporary files (MONAI Label's uploads) under ``root/tmp``."""
    port = _free_port()
    (root / "tmp").mkdir()
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "TMPDIR": str(root / "tmp")}
    with (root / "server.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir),
                                   "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def _wait(server: subprocess.Popen, client, log: Path) -> None:
    import httpx

    for _ in range(240):
        if server.poll() is not None:
            pytest.fail(f"the server stopped (exit {server.returncode}):\n{log.read_text()}")
        try:
            if client.get("/info/").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer in 120 s:\n{log.read_text()}")


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module: the studies folder (with two bad cases placed by hand), the app with a model of
    `fairal query` on the good cases, and an HTTP client."""
    pytest.importorskip("monailabel")
    httpx = pytest.importorskip("httpx")
    root = tmp_path_factory.mktemp("served")
    runner = CliRunner()
    studies, cases = _studies(root)
    _plant_bad_cases(studies)
    csv = root / "cases.csv"
    cases.to_csv(csv, index=False)
    # a model trained by fairal query on the saved labels: the app's first model
    res = runner.invoke(app, ["query", str(csv), "--budget", "1", "--group-by", "sex", "--out", str(root / "q0"),
                              "--profile", "smoke", *SETS, "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["monailabel-app", str(root / "app"), "--group-by", "sex", "--model",
                              str(root / "q0" / "model.pt"), "--profile", "smoke", *SETS])
    assert res.exit_code == 0, res.output
    server, url = _start(root / "app", studies, root)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            _wait(server, client, root / "server.log")
            yield SimpleNamespace(client=client, root=root, studies=studies, cases=cases, csv=csv,
                                  model=root / "q0" / "model.pt", app=root / "app")
    finally:
        _stop(server)
    assert server.poll() is not None


def _save_label(served, image_id: str) -> None:
    """An annotator saves a label for ``image_id`` through the server (its structure: the bright ellipsoid of the
    image before the noise of :data:`HARD_GROUP`)."""
    img = nib.load(str(served.root / "src" / "images" / f"{image_id}.nii.gz"))
    drawn = served.root / f"{image_id}-label.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 900).astype(np.uint8), img.affine), str(drawn))
    with drawn.open("rb") as f:
        put = served.client.put("/datastore/label", params={"image": image_id},
                                files={"label": (f"{image_id}.nii.gz", f, "application/gzip")})
    assert put.status_code == 200, put.text
    assert (served.studies / "labels" / "final" / f"{image_id}.nii.gz").is_file()


def _next(served, client_id: str) -> dict:
    res = served.client.post(f"/activelearning/{STRATEGY}", json={"client_id": client_id})
    assert res.status_code == 200, res.text
    return res.json()


def _leases(served) -> dict:
    return json.loads((served.app / "work" / "leases.json").read_text())


def test_next_sample_over_http_is_fairal_query_s_first(served):
    runner, client, root = CliRunner(), served.client, served.root
    # what fairal query ranks first with the app's first model, its group Dice out of fold (6 labeled, 3 a group)
    res = runner.invoke(app, ["query", str(served.csv), "--budget", "1", "--group-by", "sex", "--model",
                              str(served.model), "--out", str(root / "q1"), "--profile", "smoke", *SETS, "--quiet",
                              "--group-dice", "cross-validated"])
    assert res.exit_code == 0, res.output
    expected = pd.read_csv(root / "q1" / "query.csv", dtype={"case_id": str})
    cv = json.loads((root / "q1" / "query.json").read_text())

    info = client.get("/info/").json()
    assert STRATEGY in info["strategies"] and "fairal" in info["trainers"]
    first = _next(served, "ann-1")
    assert first["id"] == expected.loc[0, "case_id"] and first["fairal_rank"] == 1
    assert first["fairal_score"] == pytest.approx(expected.loc[0, "score"], rel=1e-6)
    assert first["fairal_reason"] == expected.loc[0, "reason"]
    # the group Dice is out of fold (auto, 3 labeled images a group): the noisier group is served worse, weighs more
    assert first["fairal_group_dice_method"] == "cross-validated"
    assert first["fairal_group_dice"] == pytest.approx(cv["labeled_dice"])
    assert first["fairal_weights"] == pytest.approx(cv["weights"])
    other = "M" if HARD_GROUP == "F" else "F"
    assert first["fairal_group_dice"][HARD_GROUP] < first["fairal_group_dice"][other]
    assert first["fairal_weights"][HARD_GROUP] > first["fairal_weights"][other]
    assert any("cross-validated (group_dice auto" in n for n in first["fairal_notes"]), first["fairal_notes"]
    version = file_version(served.app / "model" / "model.pt")
    assert first["fairal_scores"] == "computed" and first["fairal_model_version"] == version
    assert first["fairal_lease"]["client"] == "ann-1" and first["fairal_held"] == 1
    # the bad cases placed by hand are left out, each with a warning naming it and its fault
    left_out = [w for w in first["fairal_warnings"] if w.startswith("left out")]
    assert len(left_out) == 2, first["fairal_warnings"]
    assert "zz-corrupt" in left_out[0] and "not a readable NIfTI image" in left_out[0]
    assert "zz-grid" in left_out[1] and "label shape (5, 5, 5) differs" in left_out[1]
    _a_second_click_and_a_saved_label(served, first, expected, version)


def _a_second_click_and_a_saved_label(served, first: dict, expected: pd.DataFrame, version: str) -> None:
    """A second click, with no label saved: the next image of the same stored ranking (the first is held); the
    scoring reuses it too. Then a label saved for the first image ends its lease and the next click scores again."""
    client = served.client
    again = _next(served, "ann-2")
    assert again["id"] == expected.loc[1, "case_id"] != first["id"] and again["fairal_rank"] == 2
    assert again["fairal_scores"] == "reused" and again["fairal_model_version"] == version
    assert again["fairal_weights"] == first["fairal_weights"] and again["fairal_held"] == 2
    assert set(_leases(served)) == {first["id"], again["id"]}
    assert "reused the stored scores" in (served.root / "server.log").read_text()
    scoring = client.post("/scoring/fairal", params={"run_sync": True}, json={})
    assert scoring.status_code == 200 and scoring.json()["scores"] == "reused", scoring.text
    stored = client.get("/datastore/image/info", params={"image": again["id"]}).json()["fairal"]
    assert (stored["model_version"], stored["n_labeled"], stored["rank"]) == (version, 6, 2), stored
    # the annotator of the first image saves its label: its lease ends, and the next click scores again
    _save_label(served, first["id"])
    assert set(_leases(served)) == {again["id"]}
    second = _next(served, "ann-1")
    assert second["fairal_scores"] == "computed" and second["fairal_n_labeled"] == first["fairal_n_labeled"] + 1
    assert second["fairal_weights"] != pytest.approx(first["fairal_weights"])
    assert second["id"] not in (first["id"], again["id"]) and second["fairal_held"] == 2
    # the saved label is out of sample for the fold models: measured by them; the training images' folds are not
    # trained again (the first click's, kept under the model's version)
    assert any("1 case labeled after the model was trained measured by the fold models" in n
               and "the folds of an earlier ranking with this model" in n for n in second["fairal_notes"]), \
        second["fairal_notes"]
    log = (served.root / "server.log").read_text()
    assert log.count("cross-validated group Dice: 5 folds in") == 1, log
    assert "group Dice of 6 training images out of fold (folds reused" in log
    (kept,) = json.loads((served.app / "work" / "fold-dice.json").read_text()).values()
    assert kept["model_version"] == version and len(kept["cases"]) == 6 and first["id"] not in kept["cases"]
    used = json.loads((served.app / "work" / f"query-{STRATEGY}" / "query.json").read_text())["labeled_case_dice"]
    assert {c: used[c] for c in kept["cases"]} == pytest.approx({c: e["dice"] for c, e in kept["cases"].items()})
    assert set(used) == {*kept["cases"], first["id"]}  # the saved label: its Dice by the fold models
    _training_and_other_strategies(served, second)


def _training_and_other_strategies(served, second: dict) -> None:
    """Any strategy of fairal's grammar is built when asked for; the app's training on the saved labels (7 now)
    replaces its model, and the next click scores again with it; /infer segments an image."""
    client = served.client
    # a strategy of fairal's grammar that the app does not list is built when asked for (unweighted: labeled Dice)
    bald = client.post("/activelearning/bald", json={})
    assert bald.status_code == 200 and bald.json()["fairal_strategy"] == "bald", bald.text
    assert bald.json()["fairal_scores"] == "computed" and bald.json()["fairal_held"] == 3
    # a weighted strategy whose folds train with MC dropout: folds of its own, kept beside the first ones
    wbald = client.post("/activelearning/weighted-bald", json={})
    assert wbald.status_code == 200 and wbald.json()["fairal_group_dice_method"] == "cross-validated", wbald.text
    assert (served.root / "server.log").read_text().count("cross-validated group Dice: 5 folds in") == 2
    assert len(json.loads((served.app / "work" / "fold-dice.json").read_text())) == 2
    bad = client.post("/activelearning/weighted-localised-entropy", json={})
    assert bad.status_code == 400 and "did you mean 'weighted-localized-entropy'" in bad.text, bad.text
    before = (served.app / "model" / "model.pt").read_bytes()
    train = client.post("/train/fairal", params={"run_sync": True}, json={})
    assert train.status_code == 200, train.text
    assert (served.app / "model" / "model.pt").read_bytes() != before
    again = client.post("/activelearning/bald", json={}).json()  # no new label, but a new model: scored again
    assert again["fairal_scores"] == "computed" and again["fairal_model_version"] != second["fairal_model_version"]
    assert again["fairal_n_labeled"] == second["fairal_n_labeled"] and again["id"] != bald.json()["id"]
    # the app's inference: a label to correct, on the image's own grid
    infer = client.post("/infer/fairal", params={"image": second["id"]}, json={})
    assert infer.status_code == 200, infer.text


def _hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (but the server's logs, server.log and app/logs/app.log) and its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".log"}


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _hostile_uploads(served, work: Path) -> list[tuple[str, dict, tuple[str, bytes], str]]:
    """(endpoint, query, (file name, bytes), what the refusal says) of each hostile upload."""
    case = served.cases.loc[served.cases["label"] != "", "case_id"].iloc[0]
    img = nib.load(str(served.studies / f"{case}.nii.gz"))
    data, affine = np.asarray(img.dataobj, np.float32), img.affine
    good = _nifti(work / "good.nii.gz", data, affine).read_bytes()
    label = (data > 900).astype(np.uint8)
    shifted = affine.copy()
    shifted[:3, 3] += 7.0
    nan = data.copy()
    nan[0, 0, 0] = np.nan

    def file(name, arr, aff=affine):
        return name, _nifti(work / name, arr, aff).read_bytes()

    image, lab = "/datastore/image", "/datastore/label"
    return [
        (image, {"image": "../app/X"}, ("X.py", b"import os\n"), "cannot name a file"),
        (image, {"image": str(served.root / "abs")}, ("abs.nii.gz", good), "cannot name a file"),
        (image, {"image": "."}, ("x.nii.gz", good), "cannot name a file"),
        (image, {"image": ".."}, ("x.nii.gz", good), "cannot name a file"),
        (image, {"image": "new"}, ("new.py", good), "only NIfTI files are stored"),
        (image, {"image": "new"}, ("new.nii.gz", b""), "not a readable NIfTI image"),
        (image, {"image": "new"}, ("new.nii.gz", b"id,sex\nnew,F\n"), "not a readable NIfTI image"),
        (image, {"image": "new"}, file("4d.nii.gz", np.stack([data, data], -1)), "must be a 3D volume"),
        (image, {"image": "new"}, file("nan.nii.gz", nan), "holds NaN or infinite values"),
        (image, {"image": case}, file("moved.nii.gz", data, shifted), "not on the same grid"),
        (lab, {"image": case, "tag": "../../.."}, file("l.nii.gz", label), "label tag '../../..' is not one"),
        (lab, {"image": "../app/main"}, file("l.nii.gz", label), "cannot name a file"),
        (lab, {"image": "absent"}, file("l.nii.gz", label), "no image 'absent' in the datastore"),
        (lab, {"image": case}, ("l.py", good), "only NIfTI files are stored"),
        (lab, {"image": case}, file("small.nii.gz", label[:5]), "label shape"),
        (lab, {"image": case}, file("moved.nii.gz", label, shifted), "not on the same grid"),
        (lab, {"image": case}, file("three.nii.gz", label * 3), "is not binary"),
    ]


def test_hostile_requests_get_400_and_write_nothing(served):
    client, root = served.client, served.root
    work = root / "hostile"
    work.mkdir()
    requests = _hostile_uploads(served, work)
    before, temp_before = _hashes(root), sorted((root / "tmp").rglob("*"))
    for endpoint, params, (name, content), says in requests:
        field = "file" if endpoint.endswith("image") else "label"
        res = client.put(endpoint, params=params, files={field: (name, content, "application/octet-stream")})
        assert res.status_code == 400 and res.json()["detail"].startswith("fairal: "), (params, name, res.text)
        assert says in res.json()["detail"], (params, name, res.text)
        assert sorted((root / "tmp").rglob("*")) == temp_before, f"{params} {name}: an upload was left behind"
    # MONAI Label's model upload and sessions are off in a fairal app: refused before anything is written
    model = (served.app / "model" / "model.pt").read_bytes()
    for method, endpoint, files in (("PUT", "/model/fairal", {"file": ("evil.pt", b"x" * 4096)}),
                                    ("DELETE", "/model/fairal", None),
                                    ("PUT", "/session/", {"files": ("s.nii.gz", b"y" * 4096)})):
        res = client.request(method, endpoint, files=files)
        assert res.status_code in (404, 405, 406), (endpoint, res.status_code, res.text)
        assert sorted((root / "tmp").rglob("*")) == temp_before, f"{method} {endpoint}: a file was left behind"
    assert (served.app / "model" / "model.pt").read_bytes() == model
    for endpoint, params in (("/datastore/image", {"id": "../app/main"}),
                             ("/datastore/label", {"id": served.cases["case_id"].iloc[0], "tag": "../../.."})):
        res = client.delete(endpoint, params=params)
        assert res.status_code == 400 and "in the studies folder" in res.text, (params, res.text)
    # /infer takes ids of the datastore: a server path is refused alike whether it exists or not
    there = served.studies / f"{served.cases['case_id'].iloc[0]}.nii.gz"
    answers = [client.post("/infer/fairal", params={"image": str(p)}, json={})
               for p in (there, root / "app" / "main.py", root / "nowhere.nii.gz")]
    assert [a.status_code for a in answers] == [400] * 3, [a.text for a in answers]
    details = {a.json()["detail"].replace(repr(str(p)), "PATH")
               for a, p in zip(answers, (there, root / "app" / "main.py", root / "nowhere.nii.gz"), strict=True)}
    assert details == {"fairal: no image PATH in the datastore: /infer segments the datastore's images, named by "
                       "id (GET /datastore/?output=all lists them)"}
    # a training that fairal refuses (a groups.csv the lab broke) answers its message, and writes nothing
    groups = served.studies / "groups.csv"
    kept = groups.read_bytes()
    groups.write_bytes(kept + kept.splitlines(keepends=True)[1])
    try:
        train = client.post("/train/fairal", params={"run_sync": True}, json={})
    finally:
        groups.write_bytes(kept)
    assert train.status_code == 400 and "appears more than once" in train.json()["detail"], train.text
    after = _hashes(root)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_strategy_names_and_their_query_folders_are_bounded(tmp_path):
    pytest.importorskip("monailabel")
    from fairal.io import mark
    from fairal.owndata.monailabel import MAX_QUERY_FOLDERS, Strategies, prune_query_folders

    strategies = Strategies(SimpleNamespace(), ["random"])
    names = [f"stochastic-weighted-localized-entropy-t0.{i + 1}" for i in range(MAX_QUERY_FOLDERS + 3)]
    for name in names:
        assert strategies.get(name).name == name
    assert sorted(strategies) == sorted(["random", *names[3:]])  # the listed one and the last 8 asked for
    assert strategies.get(names[3]).name == names[3]  # asked for again: the most recent now
    assert strategies.get("weighted-bald").name == "weighted-bald"  # so the next one evicts names[4]
    assert sorted(strategies) == sorted(["random", names[3], *names[5:], "weighted-bald"])
    # the query folders: the most recent `keep` of fairal's own; a folder the user made is never touched
    for i in range(5):
        (tmp_path / f"query-s{i}").mkdir()
        mark(tmp_path / f"query-s{i}", "query")
        os.utime(tmp_path / f"query-s{i}", ns=(i * 10**9, i * 10**9))
    (tmp_path / "query-mine").mkdir()
    removed = prune_query_folders(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["query-s0", "query-s1", "query-s2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["query-mine", "query-s3", "query-s4"]


def test_each_image_gets_its_own_prediction_file():
    names = [prediction_name(p) for p in ("/data/sub.1.nii.gz", "/data/sub.2.nii.gz", "sub.3.nii", "a/sub")]
    assert names == ["sub.1.nii.gz", "sub.2.nii.gz", "sub.3.nii.gz", "sub.nii.gz"]


class _Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_lease_holds_an_image_until_its_time_is_up_or_it_is_released(tmp_path):
    clock, path = _Clock(), tmp_path / "work" / "leases.json"
    leases = Leases(path, 30, threading.RLock(), clock=clock)
    assert leases.held() == {} and not path.exists()
    a = leases.take("a00", "ann-1", STRATEGY)
    assert a["until"] - a["since"] == 30 * 60 and a["until_text"]
    clock.now += 10 * 60
    leases.take("b00", "ann-2", STRATEGY)
    assert set(leases.held()) == {"a00", "b00"} and json.loads(path.read_text())["a00"]["client"] == "ann-1"
    # a second Leases on the same file (another thread's view) sees them: they live in the file
    assert set(Leases(path, 30, threading.RLock(), clock=clock).held()) == {"a00", "b00"}
    clock.now += 20 * 60 + 1  # a00's 30 minutes are up, b00's are not
    assert set(leases.held()) == {"b00"} and set(json.loads(path.read_text())) == {"b00"}
    assert leases.release("b00") and not leases.release("b00") and leases.held() == {}
    # only the images of the ranking stay held: one labeled or removed since (not among them) is let go
    leases.take("c00", "ann-1", STRATEGY)
    leases.take("c01", "ann-1", STRATEGY)
    assert set(leases.held(among={"c01", "c02"})) == {"c01"} and set(json.loads(path.read_text())) == {"c01"}
    path.write_text("{not json")  # edited by hand: started afresh rather than stopping every click
    assert leases.held() == {}


def _case_table(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    csv = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    return csv, read_cases(csv, ["site"])


def test_stored_scores_are_keyed_by_model_labels_images_and_groups(tmp_path):
    csv, cases = _case_table(tmp_path)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights 1")
    version = file_version(model)
    assert version.startswith("sha256:") and file_version(model) == version

    def key(table=cases, model_version=version, settings=None):
        return ranking_key(STRATEGY, "labeled", model_version, table, settings or {"seed": 0})

    first = key()
    assert key() == first
    model.write_bytes(b"weights 2")  # a training replaced the model
    assert file_version(model) != version and key(model_version=file_version(model)) != first
    assert key(settings={"seed": 1}) != first
    label = Path(cases.loc[cases["labeled"], "label_path"].iloc[0])
    os.utime(label, ns=(label.stat().st_mtime_ns + 10**9,) * 2)  # a final label saved again
    assert key() != first
    os.utime(label, ns=(label.stat().st_mtime_ns - 10**9,) * 2)
    assert key() == first
    relabeled = read_cases(csv, ["site"])
    unlabeled = relabeled.index[~relabeled["labeled"]][0]
    relabeled.loc[unlabeled, ["label_path", "labeled"]] = [str(label), True]  # one more labeled image
    assert key(relabeled) != first
    regrouped = cases.copy()
    regrouped.loc[0, "group"] = "Z"
    assert key(regrouped) != first
    # stored under a key, found under that key only, and only while its query folder is there
    stored = StoredScores(tmp_path / "work" / "scores.json", threading.RLock())
    stored.put(STRATEGY, first, model_version=version, n_labeled=3, folder="query-x")
    assert stored.get(STRATEGY, first) is None  # no folder yet
    (tmp_path / "work" / "query-x").mkdir()
    for name in ("query.csv", "query.json"):
        (tmp_path / "work" / "query-x" / name).write_text("")
    assert stored.get(STRATEGY, first)["n_labeled"] == 3 and stored.get(STRATEGY, key(regrouped)) is None
    assert stored.get("entropy", first) is None


def test_kept_fold_dice_only_for_today_s_model_settings_files_and_groups(tmp_path):
    """The app's kept folds come back whole or not at all: only under the model version and the settings they were
    trained with (one entry per setting, e.g. with and without MC dropout), with their fold models there, and only
    while every image they cover has the image file, final label and group it had. A new model's folds replace the
    old model's, folders included."""
    import threading

    from fairal.owndata.query import Folds

    files = {}
    for c in ("a", "b", "c"):
        for kind in ("img", "lab"):
            files[c, kind] = tmp_path / f"{c}-{kind}.nii.gz"
            files[c, kind].write_text(c)
    cases = pd.DataFrame({"case_id": ["a", "b", "c"], "image_path": [str(files[c, "img"]) for c in "abc"],
                          "label_path": [str(files[c, "lab"]) for c in "abc"], "group": ["F", "M", "M"]})
    models, others = ([tmp_path / q / "folds" / f"fold-{k}.pt" for k in (1, 2)] for q in ("q", "q2"))
    for m in [*models, *others]:
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_bytes(f"{m.parent.parent.name} {m.name}".encode())
    plain, dropout = {"seed": 0, "mc_dropout": False}, {"seed": 0, "mc_dropout": True}
    work = tmp_path / "work"
    kept = FoldDice(work / "fold-dice.json", threading.RLock())
    assert kept.get("sha256:1", plain, cases) is None  # nothing kept yet
    kept.put("sha256:1", plain, cases, Folds({"a": 0.8, "b": 0.6, "zz": 0.1}, models))  # zz: not of the study
    kept.put("sha256:1", dropout, cases, Folds({"a": 0.7, "b": 0.5}, others))
    got = kept.get("sha256:1", plain, cases)
    assert got.dice == {"a": 0.8, "b": 0.6} and [m.read_bytes() for m in got.models] == [b"q fold-1.pt", b"q fold-2.pt"]
    assert got.models[0].parent.parent == work  # copies in the app's work folder: the query folder may go
    with_dropout = kept.get("sha256:1", dropout, cases)  # each setting its own folds and models
    assert with_dropout.dice == {"a": 0.7, "b": 0.5} and with_dropout.models[0].read_bytes() == b"q2 fold-1.pt"
    assert kept.get("sha256:2", plain, cases) is None and kept.get("sha256:1", {"seed": 1}, cases) is None
    assert kept.get("sha256:1", plain, cases.assign(group=["F", "F", "M"])) is None  # b's group changed
    assert kept.get("sha256:1", plain, cases.assign(group=["F", "M", "F"])).dice == {"a": 0.8, "b": 0.6}  # c: not
    assert kept.get("sha256:1", plain, cases.assign(label_path=["", str(files["b", "lab"]), ""])) is None
    files["a", "lab"].write_text("redrawn")  # a's label saved again: the folds trained on the old one
    assert kept.get("sha256:1", plain, cases) is None
    kept.put("sha256:2", plain, cases, Folds({"a": 0.9, "b": 0.6}, models))  # a new model: the old model's go
    assert json.loads((work / "fold-dice.json").read_text()).keys() == {FoldDice._key(plain)}
    (left,) = work.glob("folds-*")  # the old model's folders are gone, the new one's is there
    assert left.name.startswith(f"folds-{FoldDice._key(plain)[:12]}-") and kept.get("sha256:2", plain, cases).models[
        0].parent == left
    next(work.glob("folds-*/fold-2.pt")).unlink()  # a fold model removed by hand: nothing kept
    assert kept.get("sha256:2", plain, cases) is None
    (work / "fold-dice.json").write_text("{not json")  # edited by hand: nothing kept
    assert kept.get("sha256:2", plain, cases) is None


def test_auto_group_dice_is_out_of_fold_from_enough_labeled_images_per_group():
    def cases(counts: dict[str, int], unlabeled: int = 2) -> pd.DataFrame:
        groups = [g for g, n in counts.items() for _ in range(n)]
        return pd.DataFrame({"labeled": [True] * len(groups) + [False] * unlabeled,
                             "group": groups + ["F"] * unlabeled, "group_known": [True] * (len(groups) + unlabeled)})

    enough = {"F": AUTO_CROSS_VALIDATED_MIN, "M": AUTO_CROSS_VALIDATED_MIN + 2}
    method, notes = resolve_group_dice("auto", cases(enough), steered=True)
    assert method == "cross-validated" and "every group has at least" in notes[0]
    method, notes = resolve_group_dice("auto", cases({**enough, "M": AUTO_CROSS_VALIDATED_MIN - 1}), steered=True)
    assert method == "labeled" and f"M {AUTO_CROSS_VALIDATED_MIN - 1} labeled so far" in notes[0]
    assert resolve_group_dice("auto", cases(enough), steered=False) == ("labeled", [])  # no weights to measure
    assert resolve_group_dice("auto", cases({"F": 9}), steered=True) == ("labeled", [])  # one group: likewise
    assert resolve_group_dice("cross-validated", cases({"F": 1, "M": 1}), steered=True) == ("cross-validated", [])
    assert resolve_group_dice("labeled", cases(enough), steered=True) == ("labeled", [])


def test_a_saved_final_label_ends_its_lease_and_a_fully_held_ranking_is_refused(tmp_path):
    pytest.importorskip("monailabel")
    from fairal.owndata.app import write_app
    from fairal.owndata.monailabel import FairalContext, FairalDatastore

    studies, cases = _studies(tmp_path)
    app_dir = write_app(tmp_path / "app", STRATEGY, ["sex"], "smoke", {}, lease_minutes=5)
    context = FairalContext(app_dir, studies)
    datastore = FairalDatastore(context, str(studies), auto_reload=False, read_only=False)
    free = cases.loc[cases["label"] == "", "case_id"].tolist()
    table = pd.DataFrame({"case_id": free[:2], "rank": [1, 2]})
    top, lease, held = context.serve(table, STRATEGY, "ann-1")
    assert top["case_id"] == free[0] and held == 1 and lease["until"] - lease["since"] == 5 * 60
    top, _, held = context.serve(table, STRATEGY, "ann-1")  # the same client clicks again: the next image
    assert top["case_id"] == free[1] and held == 2
    with pytest.raises(FairalError, match=r"every unlabeled image \(2\) is held .*\(leases last 5 min"):
        context.serve(table, STRATEGY, "ann-2")
    img = nib.load(str(studies / f"{free[0]}.nii.gz"))
    label = _nifti(tmp_path / "drawn.nii.gz", (np.asarray(img.dataobj) > 900).astype(np.uint8), img.affine)
    datastore.save_label(free[0], str(label), "original", {})  # a model's label: still held
    assert set(context.leases.held()) == set(free[:2])
    datastore.save_label(free[0], str(label), "final", {})
    assert set(context.leases.held()) == {free[1]}
