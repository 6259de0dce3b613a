"""scripts/evidence.py: the compute of the records, read from the job's log."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def evidence():
    path = Path(__file__).parents[1] / "scripts" / "evidence.py"
    spec = importlib.util.spec_from_file_location("evidence_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    """A job folder's runs made with other versions (or device, or profile) than the seeds exported before are
    refused, naming what differs; the same ones return the exported settings."""
    import json

    profile = {"name": "standard", "steps": 1000}
    (tmp_path / "settings.json").write_text(json.dumps({"versions": {"torch": "2.13.0"}, "device": "cpu",
                                                        "run_settings": {"profile": profile}}))
    same = {"versions": {"torch": "2.13.0"}, "device": "cpu", "settings": {"profile": profile, "seed": 6}}
    assert evidence._exported_settings(tmp_path, same)["device"] == "cpu"
    with pytest.raises(SystemExit, match="versions"):
        evidence._exported_settings(tmp_path, {**same, "versions": {"torch": "2.14.1"}})
    with pytest.raises(SystemExit, match="profile"):
        evidence._exported_settings(tmp_path, {**same, "settings": {"profile": {**profile, "steps": 400}}})
    assert evidence._exported_settings(tmp_path / "none", same) == {}
