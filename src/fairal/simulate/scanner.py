"""Acquisition differences by group, applied to a subject's warped image and never to its label.

In this order, as in a scanner: the tissue contrast (SimBA's group-wise contrast change), the receive field
(a smooth multiplicative intensity non-uniformity, INU, at BrainWeb's levels), the receiver noise (Rician, at
BrainWeb's levels). BrainWeb's definitions (brainweb.bic.mni.mcgill.ca/faq.html): "20% INU" is a multiplicative
field within 0.90-1.10 over the brain (40%: 0.80-1.20), and "p% noise" is Gaussian noise of SD p% of a reference
tissue's signal, white matter for T1, added to the real and imaginary channels before the magnitude is taken
(Rician in the tissue, Rayleigh in the background).

Each subject's field and noise come from its own random streams (``acquisition-inu``, ``acquisition-noise``, keyed
by its case id), so a draw does not depend on the other subjects or on how the work is split across processes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from fairal.sampling import stream
from fairal.simulate.groups import Group

#: The INU field: white noise on a coarse grid of about this spacing (mm) over the image, Gaussian-smoothed at this
#: scale (mm), then interpolated (trilinear) onto the image: a field that varies slowly over the head, as real
#: receive fields do.
INU_GRID_MM = 8.0
INU_SMOOTHNESS_MM = 40.0

#: How the white-matter intensity is measured (recorded in dataset.json).
WHITE_MATTER_METHOD = ("mode of the intensity histogram (100 bins, Gaussian-smoothed over 2 bins) of the "
                       "template's brain voxels (> 0) at or above their 75th percentile")


def white_matter_intensity(image: np.ndarray) -> float:
    """The white-matter intensity of a T1 template, the reference of the noise level: white matter is the
    brightest large tissue class of a T1 image and fills the brain's brightest quarter, so the mode of that
    quarter's histogram (:data:`WHITE_MATTER_METHOD`) is its peak, whatever grey matter and CSF do."""
    brain = image[image > 0].astype(np.float64)
    top = brain[brain >= np.percentile(brain, 75)]
    counts, edges = np.histogram(top, bins=100)
    k = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0, mode="constant")))
    return float((edges[k] + edges[k + 1]) / 2)


def change_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """SimBA's group-wise contrast change (Stanley et al., eBioMedicine 2025; ``change_contrast`` in
    github.com/estanley16/SimBA, generate_data/generate_data_multibias.py, factor 1.2 against 1.0):
    ``clip(factor * (v - h) + h, lo, hi)`` with ``lo``, ``hi`` the image's minimum and maximum and
    ``h = (hi - lo) / 2``. SimBA then rescales every image to 0..1 by ``(v - lo) / (hi - lo)``; here the image
    keeps the template's units (with ``lo = 0``, the background, that rescaling is a scale factor, which the
    intensity normalisation of training removes)."""
    lo, hi = float(image.min()), float(image.max())
    half = (hi - lo) / 2.0
    return np.clip(factor * (image - half) + half, lo, hi)


def inu_field(rng: np.random.Generator, shape: tuple[int, ...], spacing_mm, brain: np.ndarray,
              level_pct: float) -> np.ndarray:
    """A smooth multiplicative field on a grid of ``shape``: within ``[1 - a/2, 1 + a/2]`` everywhere, reaching
    both ends over ``brain``, for BrainWeb's level ``a = level_pct / 100`` (20% -> 0.90..1.10)."""
    import torch
    import torch.nn.functional as F

    coarse = tuple(int(math.ceil(n * s / INU_GRID_MM)) + 1 for n, s in zip(shape, spacing_mm, strict=True))
    smooth = ndimage.gaussian_filter(rng.standard_normal(coarse), INU_SMOOTHNESS_MM / INU_GRID_MM, mode="reflect")
    # trilinear, node 0 on voxel 0 and the last node on the last voxel; each voxel's value is computed on its own,
    # so the field is the same whatever the number of threads
    field = F.interpolate(torch.as_tensor(smooth)[None, None], size=tuple(shape), mode="trilinear",
                          align_corners=True)[0, 0].numpy()
    inside = field[brain] if brain.any() else field
    lo, hi = float(inside.min()), float(inside.max())
    a = level_pct / 100.0
    scaled = (field - lo) / (hi - lo) if hi > lo else np.full(field.shape, 0.5)
    return np.clip(1.0 - a / 2 + a * scaled, 1.0 - a / 2, 1.0 + a / 2)


def rician_noise(image: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of the image plus complex Gaussian noise of SD ``sd`` per channel:
    ``sqrt((v + n_re)^2 + n_im^2)``. Where ``v = 0`` that is Rayleigh with mean ``sd * sqrt(pi / 2)``; where
    ``v >> sd`` about ``N(v, sd^2)``."""
    noise = rng.standard_normal((2, *image.shape)) * sd
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)


def acquire(image: np.ndarray, group: Group, seed: int, case_id: str, white_matter: float, brain: np.ndarray,
            spacing_mm) -> np.ndarray:
    """The subject's image as its group's scanner records it: contrast, then INU, then Rician noise of SD
    ``noise / 100 * white_matter`` (each step only where the group sets it)."""
    out = np.asarray(image, dtype=np.float64)
    if group.contrast != 1.0:
        out = change_contrast(out, group.contrast)
    if group.inu:
        out = out * inu_field(stream(seed, "acquisition-inu", case_id), out.shape, spacing_mm, brain, group.inu)
    if group.noise:
        out = rician_noise(out, group.noise / 100.0 * white_matter, stream(seed, "acquisition-noise", case_id))
    return out
