"""Anchoring the deformation models: bisection, coefficient of variation, and the calibration on a tiny template."""

from __future__ import annotations

import numpy as np
import pytest

from fairal.errors import FairalError
from fairal.simulate.calibrate import bisect, calibrate, coefficient_of_variation

from .conftest import LABEL_VALUE


def test_bisect_solves_an_increasing_function():
    assert bisect(lambda x: x * x, 4.0, 0.0, 3.0, tol=1e-9) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(FairalError, match="outside"):
        bisect(lambda x: x, 5.0, 0.0, 1.0)


def test_coefficient_of_variation_by_hand():
    # mean 2, sample SD sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    with pytest.raises(FairalError):
        coefficient_of_variation([1.0])


def test_calibration_meets_its_anchor_on_a_tiny_template(tiny_template):
    tpl, lab = tiny_template
    cal = calibrate(cv=0.2, n_subjects=12, template=str(tpl), label=str(lab), label_value=LABEL_VALUE,
                    curve=(0.0, 1.0, 2.0))
    volumes = dict(cal.local_curve)
    v0 = cal.template_volume_mm3
    assert volumes[0.0] == v0
    # one SD of the local PC1 shrinks the structure by one "natural SD" (0.2 of its volume), up to a voxel or two
    assert (v0 - volumes[1.0]) / v0 == pytest.approx(0.2, abs=2.5 / v0 + 0.01)
    assert volumes[2.0] < volumes[1.0]
    assert cal.group2_cv == pytest.approx(0.2, abs=0.02)
    assert cal.local_sd_mm > 0 and cal.global_rms_mm > 0
    assert np.isfinite(cal.as_dict()["global_rms_mm"])


def test_calibration_names_a_structure_as_simulate_does(tiny_template):
    """``structure`` reaches the simulator's settings: refused with a template of one's own, as in simulate."""
    from fairal.errors import SettingError

    tpl, lab = tiny_template
    with pytest.raises(SettingError, match="structure"):
        calibrate(cv=0.2, n_subjects=2, template=str(tpl), label=str(lab), structure="Left_Accumbens")


def test_calibrate_command_refuses_an_unknown_structure_with_the_close_names():
    from typer.testing import CliRunner

    from fairal.cli import app

    result = CliRunner().invoke(app, ["calibrate", "--structure", "Left_Acumbens", "--n-subjects", "2"])
    assert result.exit_code == 2
    assert "close names: Left_Accumbens" in result.output
