"""The public API: the example of docs/api.md runs as written, and rank_for_annotation agrees with Eq. 1 and 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fairal

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_documented_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own example
    table = namespace["table"]
    assert len(table) == 8 and table["selected"].sum() == 3
    assert namespace["weights"]["site-B"] > namespace["weights"]["site-A"]
    unknown = table.set_index("case_id").loc["scan-07"]
    w = namespace["weights"]
    assert unknown["weight"] == pytest.approx(0.3 * w["site-A"] + 0.7 * w["site-B"])
    assert "scan-" in capsys.readouterr().out


def test_rank_for_annotation_is_eq2_by_hand():
    # two maps, each a 2x2x2 cube of p > 0.5: with dilation 0 the ROI is the cube, Eq. 1 its mean entropy
    a = np.zeros((4, 4, 4))
    a[1:3, 1:3, 1:3] = 0.6  # H(0.6) = 0.673012 nats inside an 8-voxel ROI
    b = np.zeros((4, 4, 4))
    b[1:3, 1:3, 1:3] = 0.9  # H(0.9) = 0.325083
    table = fairal.rank_for_annotation({"a": a, "b": b}, {"a": "G1", "b": "G2"}, {"G1": 0.25, "G2": 0.75},
                                       budget=1, roi_dilation=0).set_index("case_id")
    assert table.loc["a", "localized_entropy"] == pytest.approx(0.673012, abs=1e-5)
    assert table.loc["a", "score"] == pytest.approx(0.25 * 0.673012, abs=1e-5)
    assert table.loc["b", "score"] == pytest.approx(0.75 * 0.325083, abs=1e-5)
    assert table.loc["b", "rank"] == 1 and table.loc["b", "selected"]
    with pytest.raises(fairal.FairalError, match="values in"):
        fairal.rank_for_annotation({"a": a * 2}, {"a": "G1"}, {"G1": 1.0}, budget=1)
    with pytest.raises(fairal.FairalError, match="p_group"):
        fairal.rank_for_annotation({"a": a}, {"a": None}, {"G1": 1.0}, budget=1)
