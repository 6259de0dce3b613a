"""Anchoring the deformation models in anatomy: how large one standard deviation of each model is.

In SimBA the coefficients of a deformation model count standard deviations of *natural* variation (its PCA models
are learnt from real subjects), so ``c ~ N(4, 2)`` means "four SDs of normal anatomy". fairal's default models are
generated, not learnt, so their scale has to be set from a normative number instead. The number is the between-
subject coefficient of variation (SD / mean) of the volume of the structure in healthy adults:

- **global model** (Group 2, normal anatomy): its RMS velocity is set so that the structure's volume across
  subjects varies with that coefficient of variation;
- **local model** (the bias of Group 1): one SD of its PC1 changes the template structure's volume by one natural
  SD, that is by ``cv * V_template`` (PC1 alone, no global deformation).

Both use the model's linearity in its coefficient: a model built with scale ``s0`` and sampled at coefficient
``c * s / s0`` is the model of scale ``s`` sampled at ``c``. So each calibration draws the subjects once and solves a
one-dimensional equation by bisection on the coefficient scale. Only the region around the structure is warped
(the volume is all that is measured), with the same warp as the simulator's.

The anchor (see docs/simulation.md): the caudate nucleus of 53 healthy adults aged 20-77, 9.42 ± 1.14 cm³ by
manual tracing, CV 0.12 (Raz et al., *Differential aging of the human striatum: longitudinal evidence*, AJNR Am J
Neuroradiol 2003;24(9):1849-56, table of raw volumes at the first measurement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fairal.errors import FairalError
from fairal.simulate.dataset import SimulationConfig, Subject, draw_subjects, prepare, simulate_subject

#: Between-subject coefficient of variation of healthy adult caudate volume (Raz et al. 2003: 9.42 ± 1.14 cm³).
CAUDATE_VOLUME_CV = 0.12
ANCHOR_SOURCE = ("Raz N, Rodrigue KM, Kennedy KM, Head D, Gunning-Dixon F, Acker JD. Differential aging of the human "
                 "striatum: longitudinal evidence. AJNR Am J Neuroradiol 2003;24(9):1849-56 (53 healthy adults, "
                 "20-77 years; caudate 9.42 ± 1.14 cm³, CV 0.12)")


def bisect(f: Callable[[float], float], target: float, lo: float, hi: float, tol: float = 1e-4,
           max_iter: int = 60) -> float:
    """The ``x`` in ``[lo, hi]`` with ``f(x) = target`` for an increasing ``f`` (bisection; ``f(lo) <= target <=
    f(hi)`` is required)."""
    f_lo, f_hi = f(lo), f(hi)
    if not f_lo <= target <= f_hi:
        raise FairalError(f"calibration: the target {target:.4g} lies outside [{f_lo:.4g}, {f_hi:.4g}] reached "
                          f"on [{lo:g}, {hi:g}]")
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def coefficient_of_variation(values: Sequence[float]) -> float:
    """``SD / mean`` with the sample SD (``ddof = 1``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or v.mean() == 0:
        raise FairalError("a coefficient of variation needs at least two values and a non-zero mean")
    return float(v.std(ddof=1) / v.mean())


def _structure_state(state: dict, margin_vox: int = 12) -> dict:
    """A copy of the simulator's state whose output grid is only a box around the template's structure (on the
    template's own voxel grid), so that measuring a volume warps ~1/30 of a subject."""
    tpl = state["template"]
    idx = np.argwhere(tpl.label)
    lo = np.maximum(idx.min(0) - margin_vox, 0)
    hi = np.minimum(idx.max(0) + margin_vox + 1, tpl.shape)
    affine = tpl.affine.copy()
    affine[:3, 3] = tpl.affine[:3, :3] @ lo + tpl.affine[:3, 3]
    box = dict(state)
    box.update(out_affine=affine, shape=tuple(int(v) for v in hi - lo), points=None, global_stride=1,
               voxel_volume=float(abs(np.linalg.det(affine[:3, :3]))))
    return box


def structure_volume(state: dict, global_z: np.ndarray | None, bias_scale: float | None) -> float:
    """Volume (mm³) of the structure of one simulated subject: the template warped by the global model at
    coefficients ``global_z`` (None: no global deformation) and the local PC1 at ``bias_scale`` (None: none)."""
    gm = state["global_model"]
    z = np.zeros(gm.n_components) if global_z is None else np.asarray(global_z, dtype=np.float64)
    _, label = simulate_subject(state, Subject(0, "calibration", 1, bias_scale, z))
    return float(label.sum() * state["voxel_volume"])


@dataclass
class Calibration:
    """The anchored scales and how they were found."""

    cv: float
    template_volume_mm3: float
    local_sd_mm: float
    global_rms_mm: float
    local_curve: list[tuple[float, float]] = field(default_factory=list)  # (c, volume) at the anchored scale
    group2_cv: float = float("nan")  # CV of the structure volume over the calibration subjects, anchored scale
    n_subjects: int = 0
    structure: str | None = None  # the default atlas's structure by name; None: the template's label as given

    def as_dict(self) -> dict:
        # The anchor is the caudate's: it is named only when the calibration used its CV.
        anchor = ANCHOR_SOURCE if self.cv == CAUDATE_VOLUME_CV else "the CV given (--cv)"
        return {"cv": self.cv, "structure": self.structure, "template_volume_mm3": self.template_volume_mm3,
                "local_sd_mm": self.local_sd_mm, "global_rms_mm": self.global_rms_mm, "group2_cv": self.group2_cv,
                "n_subjects": self.n_subjects, "local_curve": [[c, v] for c, v in self.local_curve],
                "anchor": anchor}


def calibrate_local(state: dict, cv: float, model_sd_mm: float) -> float:
    """The local PC1 scale (mm at the boundary, ``sd_mm`` of :func:`default_local_model`) at which one SD shrinks
    the template structure by ``cv`` of its volume. ``state`` holds a local model built with ``model_sd_mm``."""
    box = _structure_state(state)
    v0 = structure_volume(box, None, None)
    # Volume change of PC1 alone at coefficient c of the built model; the equation in s = c: V(c) = (1 - cv) V0.
    c_star = bisect(lambda c: -structure_volume(box, None, c), -(1.0 - cv) * v0, 0.0, 8.0)
    return model_sd_mm * c_star


def calibrate_global(state: dict, cv: float, model_rms_mm: float, draws: np.ndarray) -> float:
    """The global model's RMS velocity (mm) at which the structure's volume over subjects with coefficients
    ``draws`` (n, K) varies with coefficient of variation ``cv``. ``state`` holds a global model built with
    ``model_rms_mm``; the same draws are used at every scale (common random numbers), so the CV is a smooth
    function of the scale."""
    box = _structure_state(state)

    def cv_at(scale: float) -> float:
        return coefficient_of_variation([structure_volume(box, z * scale, None) for z in draws])

    scale = bisect(cv_at, cv, 0.05, 4.0, tol=1e-3)
    return model_rms_mm * scale


def local_volume_curve(state: dict, cs: Sequence[float]) -> list[tuple[float, float]]:
    """The template structure's volume at local coefficients ``cs`` (PC1 alone, no global deformation)."""
    box = _structure_state(state)
    return [(float(c), structure_volume(box, None, float(c))) for c in cs]


def calibrate(cv: float = CAUDATE_VOLUME_CV, n_subjects: int = 100, seed: int = 0, template: str | None = None,
              label: str | None = None, label_value: float | None = None, model_seed: int = 0,
              curve: Sequence[float] = (-2, -1, 0, 1, 2, 3, 4, 5, 6, 8),
              structure: str | None = None) -> Calibration:
    """Both anchored scales for a template (default MNI152 + Harvard-Oxford left caudate; ``structure`` names
    another structure of the default atlas, as ``fairal simulate --structure`` does).

    The global scale is found on ``n_subjects`` draws of the simulator's own per-subject streams (``seed``), so
    it is the scale at which a dataset of that seed's Group 2 varies like the anchor.
    """
    if not 0 < cv < 1:
        raise FairalError(f"the coefficient of variation must lie in (0, 1), got {cv}")
    base = SimulationConfig(bias="none", n_subjects=max(2 * n_subjects, 2), seed=seed, template=template,
                            label=label, label_value=label_value, structure=structure, model_seed=model_seed,
                            preview=False)
    with torch.inference_mode():
        state = prepare(base)
        v0 = structure_volume(_structure_state(state), None, None)
        sd_mm = calibrate_local(state, cv, base.local_sd_mm)
        draws = np.stack([s.global_z for s in draw_subjects(base, state["global_model"].n_components)
                          if s.group == 2][:n_subjects])
        rms = calibrate_global(state, cv, base.global_rms_mm, draws)
        anchored = prepare(SimulationConfig(bias="none", seed=seed, template=template, label=label,
                                            label_value=label_value, structure=structure, model_seed=model_seed,
                                            local_sd_mm=sd_mm,
                                            global_rms_mm=rms, preview=False))
        box = _structure_state(anchored)
        g2 = coefficient_of_variation([structure_volume(box, z, None) for z in draws])
        points = local_volume_curve(anchored, curve)
    return Calibration(cv, v0, sd_mm, rms, points, g2, len(draws), structure)
