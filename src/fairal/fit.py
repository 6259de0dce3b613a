"""Fitting the U-Net on a loaded dataset with a profile's settings, scoring it, and the per-case statistics of
the acquisition: shared by the baseline, the active-learning loop and ``fairal query``."""

from __future__ import annotations

import numpy as np
import torch

from fairal.acquisition import localized_bald, localized_entropy, mean_entropy, mutual_information, roi_mask
from fairal.config import Profile
from fairal.data import VolumeSet
from fairal.metrics import dice_from_proba
from fairal.model import UNet3D
from fairal.train import TrainConfig, predict_mc_dropout, predict_proba


def train_config(profile: Profile, seed: int, num_threads: int | None = None) -> TrainConfig:
    return TrainConfig(lr=profile.lr, steps=profile.steps, epochs=profile.epochs, batch_size=profile.batch_size,
                       seed=seed, num_threads=num_threads, device=profile.device)


def model_factory(profile: Profile, volumes: VolumeSet, train_rows: list[int], dropout: float = 0.0):
    """A U-Net whose output bias starts at the training labels' foreground fraction (guards against collapse);
    ``dropout`` > 0 for the MC-dropout strategies."""
    prior = float(volumes.labels[train_rows].float().mean()) if train_rows else None
    prior = min(max(prior, 1e-4), 0.5) if prior is not None else None
    return lambda: UNet3D(features=profile.features, foreground_prior=prior, dropout=dropout)


def evaluate(model: torch.nn.Module, volumes: VolumeSet, rows: list[int], batch_size: int = 4) -> list[float]:
    """Per-case Dice (threshold 0.5) of ``model`` on the cases at ``rows``."""
    dices = []
    for row, proba in zip(rows, predict_proba(model, volumes.images[rows], batch_size=batch_size), strict=True):
        dices.append(dice_from_proba(proba[0] if proba.ndim == 4 else proba, volumes.labels[row, 0].numpy()))
    return dices


def uncertainty_stats(model, images, fallback, profile: Profile, bald: bool, seed: int, batch_size: int = 8,
                      keep_proba: bool = False) -> dict:
    """Per case: mean entropy, localized entropy (Eq. 1) in R, the ROI's source, the predicted voxels, and with
    ``bald`` the mean MC-dropout mutual information in the same R (NaN otherwise). R comes from the deterministic
    prediction. ``keep_proba`` also returns the probability maps and ROIs (for pictures)."""
    out: dict = {"entropy": [], "localized_entropy": [], "bald": [], "roi_source": [],
                 "predicted_voxels": []}
    if keep_proba:
        out["proba"], out["roi"] = [], []
    rois = []
    for proba in predict_proba(model, images, batch_size=batch_size):
        out["entropy"].append(mean_entropy(proba))
        roi, source = roi_mask(proba, profile.roi_dilation, fallback)
        out["localized_entropy"].append(localized_entropy(proba, roi))
        out["roi_source"].append(source)
        out["predicted_voxels"].append(int((proba > 0.5).sum()))
        rois.append(roi)
        if keep_proba:
            out["proba"].append(proba)
            out["roi"].append(roi)
    if bald:
        draws = predict_mc_dropout(model, images, profile.mc_samples, seed, batch_size=batch_size)
        for roi, samples in zip(rois, draws, strict=True):
            out["bald"].append(localized_bald(mutual_information(samples)[0], roi))
    else:
        out["bald"] = [float("nan")] * len(rois)
    return out


def case_features(model: UNet3D, images: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """One feature vector per case: the channel means of the deepest encoder block and of the last decoder block
    (what the network sees at its coarsest and finest level), for the group classifier of ``fairal query``."""
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output.detach().float().mean(dim=(2, 3, 4)).cpu())

    layers = [model.encoders[-1]] + ([model.decoders[0]] if len(model.decoders) else [])
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
