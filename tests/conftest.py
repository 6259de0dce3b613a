"""Tiny synthetic templates, built in fixtures, so that simulator tests run in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests in one process per core (pytest-xdist): each trains on one thread, as do the
    # processes it starts (fairal's commands, grid workers), or the cores would be oversubscribed.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
    import torch

    torch.set_num_threads(1)

SHAPE = (40, 44, 32)
OUT_SHAPE = (32, 32, 24)
LABEL_VALUE = 5


def _affine() -> np.ndarray:
    a = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS, like MNI152
    a[:3, 3] = [20.0, -22.0, -16.0]
    return a


def make_template(folder: Path, shift_label_mm: float = 0.0) -> tuple[Path, Path]:
    """An ellipsoid 'brain' (bright 'white matter', darker rim), two dark 'ventricles' and two grey 'caudates'
    (left one labelled ``LABEL_VALUE``, right one 7)."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    c = (np.array(SHAPE) - 1) / 2
    r = ((i - c[0]) / 17) ** 2 + ((j - c[1]) / 19) ** 2 + ((k - c[2]) / 13) ** 2
    image = np.where(r < 1, 1000.0, 0.0) + np.where(r < 0.7, 600.0, 0.0)
    labels = np.zeros(SHAPE, np.int16)
    for side, value in ((+1, LABEL_VALUE), (-1, 7)):
        # the left hemisphere is at larger i (x = 20 - i is negative there)
        ci = c[0] + side * 6
        vent = ((i - (ci - side * 3)) / 1.6) ** 2 + ((j - c[1]) / 6) ** 2 + ((k - c[2]) / 4) ** 2 < 1
        caud = ((i - ci) / 3.0) ** 2 + ((j - c[1] - 1) / 7) ** 2 + ((k - c[2]) / 5) ** 2 < 1
        image[vent] = 150.0
        image[caud & ~vent] = 900.0
        labels[caud & ~vent] = value
    tpl = folder / "template.nii.gz"
    lab = folder / "labels.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), _affine()), str(tpl))
    la = _affine()
    la[:3, 3] += shift_label_mm
    nib.save(nib.Nifti1Image(labels, la), str(lab))
    return tpl, lab


@pytest.fixture
def tiny_template(tmp_path) -> tuple[Path, Path]:
    return make_template(tmp_path)


@pytest.fixture
def tiny_config(tiny_template):
    from fairal.simulate.dataset import SimulationConfig

    tpl, lab = tiny_template

    def make(**kw):
        base = dict(
            bias="strong", n_subjects=6, seed=0, shape=OUT_SHAPE, template=str(tpl), label=str(lab),
            label_value=LABEL_VALUE, jobs=1, preview=False,
        )
        base.update(kw)
        return SimulationConfig(**base)

    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A simulated dataset of 24 subjects on the tiny template (6 test and 6 pool cases per group)."""
    from fairal.simulate.dataset import SimulationConfig, simulate_dataset

    folder = tmp_path_factory.mktemp("tpl")
    tpl, lab = make_template(folder)
    cfg = SimulationConfig(n_subjects=24, shape=OUT_SHAPE, template=str(tpl), label=str(lab), label_value=LABEL_VALUE,
                           jobs=1, preview=False)
    return simulate_dataset(cfg, folder / "data", progress=False)


def load_script(name: str):
    """``scripts/NAME.py`` as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
