"""Fitting the U-Net on a loaded dataset with a profile's settings, and scoring it: shared by the baseline and
the active-learning loop."""

from __future__ import annotations

import torch

from fairal.config import Profile
from fairal.data import VolumeSet
from fairal.metrics import dice_from_proba
from fairal.model import UNet3D
from fairal.train import TrainConfig, predict_proba


def train_config(profile: Profile, seed: int, num_threads: int | None = None) -> TrainConfig:
    return TrainConfig(lr=profile.lr, steps=profile.steps, epochs=profile.epochs, batch_size=profile.batch_size,
                       seed=seed, num_threads=num_threads, device=profile.device)


def model_factory(profile: Profile, volumes: VolumeSet, train_rows: list[int]):
    """A U-Net whose output bias starts at the training labels' foreground fraction (guards against collapse)."""
    prior = float(volumes.labels[train_rows].float().mean()) if train_rows else None
    prior = min(max(prior, 1e-4), 0.5) if prior is not None else None
    return lambda: UNet3D(features=profile.features, foreground_prior=prior)


def evaluate(model: torch.nn.Module, volumes: VolumeSet, rows: list[int], batch_size: int = 4) -> list[float]:
    """Per-case Dice (threshold 0.5) of ``model`` on the cases at ``rows``."""
    dices = []
    for row, proba in zip(rows, predict_proba(model, volumes.images[rows], batch_size=batch_size), strict=True):
        dices.append(dice_from_proba(proba[0] if proba.ndim == 4 else proba, volumes.labels[row, 0].numpy()))
    return dices
