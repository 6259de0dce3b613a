"""The report's example figure without a model: a finished run writes the slices it draws (examples.npz: each
group's median test case, its slice with the most structure, the final model's segmentation), the report reads them,
and a run finished before runs wrote them leaves the figure absent with the reason on the page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fairal.config import get_profile
from fairal.data.volumes import load_volumes, read_manifest
from fairal.records import EXAMPLES_FILE
from fairal.report import build_report
from fairal.report.build import ABSENT
from fairal.report.examples import EXAMPLE_STRATEGY
from fairal.run.loop import ActiveLearningRun, RunSpec
from fairal.run.network import load_network
from fairal.run.train import predict_proba

from .test_loop import TINY


def test_a_finished_run_writes_the_example_slices_and_the_report_draws_them(tiny_dataset, tmp_path):
    profile = get_profile("smoke", TINY)
    run = tmp_path / "runs" / "tiny" / "balanced" / EXAMPLE_STRATEGY / "seed-0"
    al = ActiveLearningRun(RunSpec(str(tiny_dataset), EXAMPLE_STRATEGY, "balanced", 0, profile), run)
    al.run()
    path = run / EXAMPLES_FILE
    with np.load(path, allow_pickle=False) as archive:
        ex = {k: archive[k] for k in archive.files}
    assert ex["image"].dtype == np.float16 and ex["truth"].dtype == ex["prediction"].dtype == np.uint8
    assert path.stat().st_size < 16_000, path.stat().st_size  # a few slices
    # each group's median test case by the final round's Dice (cases.csv)
    cases = pd.read_csv(run / "cases.csv")
    test = cases[(cases["round"] == cases["round"].max()) & (cases["split"] == "test")]
    assert ex["group"].tolist() == sorted(test["group"].astype(str).unique())
    for i, group in enumerate(ex["group"]):
        dice = test.loc[test["group"].astype(str) == group].set_index("case_id")["dice"]
        assert ex["dice"][i] == dice[ex["case_id"][i]] == sorted(dice)[len(dice) // 2]
    # the slice with the most structure of the case's label, and the final model's segmentation of it
    vol = load_volumes(tiny_dataset, read_manifest(tiny_dataset, test_per_group=profile.test_per_group),
                       crop_margin=profile.crop_margin, downsample=profile.downsample)
    model, _ = load_network(run / "checkpoints" / "round-02.pt", profile)
    for i, case in enumerate(ex["case_id"]):
        label = vol.labels[vol.index[case], 0].numpy()
        z = int(ex["slice"][i])
        assert label[:, :, z].sum() == label.sum(axis=(0, 1)).max() > 0
        assert np.array_equal(ex["truth"][i], label[:, :, z])
        proba = next(iter(predict_proba(model, vol.images[vol.index[case]][None])))
        assert np.array_equal(ex["prediction"][i], (proba[:, :, z] > 0.5).astype(np.uint8))
        assert np.allclose(ex["image"][i], vol.images[vol.index[case], 0, :, :, z].numpy(), atol=1e-2, rtol=1e-3)
    # the report draws them; without the file (a run finished before runs wrote it) it says why
    page = (build_report(tmp_path, tmp_path / "with").parent / "report.html").read_text()
    assert (tmp_path / "with" / "fig10_examples.png").is_file() and "fig10_examples" in page
    path.unlink()
    page = (build_report(tmp_path, tmp_path / "without").parent / "report.html").read_text()
    assert not (tmp_path / "without" / "fig10_examples.png").exists()
    assert ABSENT["fig10_examples"] in page
