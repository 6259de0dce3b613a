"""The group classifier behind expected weights: ``p(g|x)`` of cases whose group the strategies do not see, from
the cases of known group, on the network's features. Used by ``fairal query`` (cases of unknown group in a lab's CSV)
and by an AL run with ``groups_known`` false (no pool case's group is seen)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fairal.errors import FairalError
from fairal.run.train import predict_proba
from fairal.sampling import stream_seed

#: Fewest cases of known group per group for the group classifier; below it, group frequencies are used.
MIN_PER_GROUP = 5


@dataclass
class GroupModel:
    """``p(g|x)`` for the cases whose group is unknown: how it was obtained, and its quality when measurable."""

    method: str  # "classifier", "frequencies" or "none needed"
    groups: list
    proba: np.ndarray  # (n_unknown, n_groups)
    cv_accuracy: float | None = None
    chance_accuracy: float | None = None
    n_train: int = 0


def group_probabilities(features: np.ndarray | None, groups: np.ndarray, known: np.ndarray, order: list,
                        seed: int = 0, stream_name: str = "query-classifier", keys: tuple = ()) -> GroupModel:
    """``p(g|x)`` of the cases with ``known == False``, learnt from the cases of known group.

    With at least :data:`MIN_PER_GROUP` known cases in every group: a standardised multinomial logistic regression
    on ``features`` (its stratified cross-validated accuracy is reported against the majority-class rate); else the
    groups' frequencies among the known cases, the same for every unknown case (also with no ``features``: a
    ranking from saved probability maps has no network to take them from)."""
    unknown = ~known
    n_unknown = int(unknown.sum())
    if n_unknown == 0:
        return GroupModel("none needed", order, np.zeros((0, len(order))))
    y = np.array([order.index(g) for g in groups[known]])
    counts = np.bincount(y, minlength=len(order))
    chance = float(counts.max() / counts.sum())
    if features is not None and len(order) > 1 and counts.min() >= MIN_PER_GROUP:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True,
                                random_state=stream_seed(seed, stream_name, *keys))
        cv = float(cross_val_score(clf, features[known], y, cv=folds).mean())
        clf.fit(features[known], y)
        proba = np.zeros((n_unknown, len(order)))
        proba[:, clf.classes_] = clf.predict_proba(features[unknown])
        return GroupModel("classifier", order, proba, cv, chance, int(known.sum()))
    freq = counts / counts.sum()
    return GroupModel("frequencies", order, np.tile(freq, (n_unknown, 1)), None, chance, int(known.sum()))



def case_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """One feature vector per case: the channel means of the network's ``feature_layers()`` (the U-Net's: its deepest
    encoder block and its last decoder block, what it sees at its coarsest and finest level), for the group
    classifier. A network without that method is refused naming it."""
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output.detach().float().mean(dim=(2, 3, 4)).cpu())

    if not callable(getattr(model, "feature_layers", None)):
        raise FairalError(f"the network {type(model).__name__} has no feature_layers() method: the group classifier "
                          "of cases of unknown group needs the layers whose channel means describe a case "
                          "(docs/api.md, a new network)")
    layers = list(model.feature_layers())
    hooks = [layer.register_forward_hook(keep) for layer in layers]
    rows = []
    try:
        for start in range(0, len(images), batch_size):
            captured.clear()
            for _ in predict_proba(model, images[start:start + batch_size], batch_size=batch_size):
                pass
            rows.append(torch.cat(captured, dim=1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 0))


def hidden_group_model(model: torch.nn.Module, labeled: torch.Tensor, labeled_groups: list, candidates: torch.Tensor,
                       order: list, seed: int, keys: tuple = ()) -> GroupModel:
    """``p(g|x)`` of the ``candidates`` (images of cases whose group the strategy must not see) from a classifier
    on ``model``'s features of the ``labeled`` images, whose groups are known (:func:`group_probabilities`, stream
    ``group-classifier`` under ``seed`` and ``keys``)."""
    n_l, n_c = len(labeled), len(candidates)
    features = case_features(model, torch.cat([labeled, candidates]))
    groups = np.empty(n_l + n_c, dtype=object)
    groups[:n_l] = list(labeled_groups)
    known = np.r_[np.ones(n_l, bool), np.zeros(n_c, bool)]
    return group_probabilities(features, groups, known, list(order), seed, "group-classifier", keys)
