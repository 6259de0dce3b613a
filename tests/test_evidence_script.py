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
