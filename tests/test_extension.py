"""Extending fairal from outside its source: a new base strategy (with its statistic) and a new metric, registered
in this file alone, run through an active-learning run and show up in its records and its report."""

from __future__ import annotations

import pandas as pd
import pytest

from fairal.acquisition import BASES, STATISTICS, Base, Statistic, parse_strategy, register, unregister
from fairal.errors import FairalError
from fairal.metrics import METRICS, Metric, register_metric, unregister_metric
from fairal.run.loop import ActiveLearningRun, RunSpec

from .test_loop import _spec


def _margin(maps) -> float:
    """1 - mean |2p - 1| inside R: 1 where the model is undecided (p = 0.5), 0 where it is sure."""
    p = maps.proba.double()
    return float((1 - (2 * p - 1).abs())[maps.roi].mean())


@pytest.fixture
def extended():
    base = register(Base("margin", "margin", "margin", "margin uncertainty"),
                    Statistic("margin", _margin, "margin uncertainty"))
    worst = register_metric(Metric("worst_dice", "worst-group Dice", True,
                                   lambda overall, means: means.min(axis=-1)))
    yield base, worst
    unregister("margin")
    unregister_metric("worst_dice")


def test_registered_strategy_and_metric_reach_records_and_report(extended, tiny_dataset, tmp_path):
    from fairal.report import build_report

    assert parse_strategy("stochastic-weighted-margin-t0.5").spec.statistic == "margin"
    spec = RunSpec(str(tiny_dataset), "weighted-margin", "balanced", 0, _spec(tiny_dataset).profile)
    rounds = ActiveLearningRun(spec, tmp_path / "run").run()
    # the metric: a column of its own on the test split, and (empty here, no evaluation split) on the eval split
    assert {"worst_dice", "eval_worst_dice"} <= set(rounds.columns)
    assert (rounds["worst_dice"] == rounds[["dice_g1", "dice_g2"]].min(axis=1)).all()
    # the statistic: a column of selections.csv, and the weighted score is the weight times it (Eq. 2)
    sel = pd.read_csv(tmp_path / "run" / "selections.csv")
    assert "margin" in sel.columns and sel["margin"].between(0, 1).all()
    assert sel["score"].to_numpy() == pytest.approx((sel["weight"] * sel["margin"]).to_numpy())
    chosen = sel[sel["selected"]].groupby("round")["score"].min()
    rest = sel[~sel["selected"]].groupby("round")["score"].max()
    assert (chosen >= rest).all()  # the top scores were acquired
    build_report(tmp_path / "run", tmp_path / "report")
    final = pd.read_csv(tmp_path / "report" / "final_budget.csv")
    assert final["strategy"].tolist() == ["weighted-margin"] and "worst_dice" in final.columns
    assert "weighted-margin" in (tmp_path / "report" / "report.html").read_text()
    assert parse_strategy("weighted-margin").label == "weighted margin"  # the figures' legend


def test_registration_is_checked(extended):
    with pytest.raises(FairalError, match="exists already"):
        register(Base("margin", "margin", "margin", "again"))
    with pytest.raises(FairalError, match="lower-case words"):
        register(Base("weighted-x", None, "x", "x"))
    with pytest.raises(FairalError, match="unknown statistic"):
        register(Base("other", "nothing-of-that-name", "x", "x"))
    with pytest.raises(FairalError, match="exists already"):
        register_metric(Metric("essp", "ESSP", True, lambda overall, means: overall))


def test_unregistered_after_the_fixture():
    assert "margin" not in BASES and "margin" not in STATISTICS and "worst_dice" not in METRICS
    with pytest.raises(FairalError, match="unknown strategy"):
        parse_strategy("weighted-margin")
