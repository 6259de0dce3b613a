"""fairal inside MONAI Label: a real `monailabel start_server` with the app `fairal monailabel-app` writes (one server
for the module), asked over HTTP for the next sample; its answer is the image `fairal query` ranks first with the
same model, bad files placed in the studies folder by hand are left out with a warning, and a label saved through
the server changes the next answer's weights. Hostile requests (ids and tags that are paths, uploads that are not
3D NIfTI volumes on their image's grid, /infer on a server path) are refused with HTTP 400 and write nothing.
Needs MONAI Label (`make monailabel`); skipped without it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
    assert "--host 127.0.0.1" in res.output and "Running it for a lab" in res.output  # localhost unless told
    settings = json.loads((tmp_path / "app" / "fairal.json").read_text())
    assert settings["strategy"] == STRATEGY and settings["group_by"] == ["sex"] and settings["set"]["steps"] == "30"
    assert "from fairal.owndata.monailabel import FairalApp" in (tmp_path / "app" / "main.py").read_text()
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


def test_next_sample_over_http_is_fairal_query_s_first(served):
    runner, client, studies, cases, root = CliRunner(), served.client, served.studies, served.cases, served.root
    # what fairal query ranks first with the app's first model, on the good cases
    res = runner.invoke(app, ["query", str(served.csv), "--budget", "1", "--group-by", "sex", "--model",
                              str(served.model), "--out", str(root / "q1"), "--profile", "smoke", *SETS, "--quiet"])
    assert res.exit_code == 0, res.output
    expected = pd.read_csv(root / "q1" / "query.csv")
    weights = json.loads((root / "q1" / "query.json").read_text())["weights"]

    info = client.get("/info/").json()
    assert STRATEGY in info["strategies"] and "fairal" in info["trainers"]
    first = client.post(f"/activelearning/{STRATEGY}", json={})
    assert first.status_code == 200, first.text
    first = first.json()
    assert first["id"] == expected.loc[0, "case_id"]
    assert first["fairal_score"] == pytest.approx(expected.loc[0, "score"], rel=1e-6)
    assert first["fairal_weights"] == pytest.approx(weights)
    assert first["fairal_reason"] == expected.loc[0, "reason"]
    # the bad cases placed by hand are left out, each with a warning naming it and its fault
    left_out = [w for w in first["fairal_warnings"] if w.startswith("left out")]
    assert len(left_out) == 2, first["fairal_warnings"]
    assert "zz-corrupt" in left_out[0] and "not a readable NIfTI image" in left_out[0]
    assert "zz-grid" in left_out[1] and "label shape (5, 5, 5) differs" in left_out[1]
    # an annotator saves a label (here the image's true one): the labeled set and its Dice change
    saved = cases.loc[cases["label"] == "", "case_id"].iloc[-1]
    img = nib.load(str(studies / f"{saved}.nii.gz"))
    drawn = root / f"{saved}-label.nii.gz"  # its structure: the bright ellipsoid of the image
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
    before = (served.app / "model" / "model.pt").read_bytes()
    train = client.post("/train/fairal", params={"run_sync": True}, json={})
    assert train.status_code == 200, train.text
    assert (served.app / "model" / "model.pt").read_bytes() != before
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
