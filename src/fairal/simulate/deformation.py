"""PCA models of deformation: one on-disk format, the default models, and models built from a user's fields.

A model describes vector fields on its own voxel grid (``affine``, ``shape``) in world millimetres (RAS
components, as nibabel reads them)::

    v = mean + sum_k z_k * sqrt(eigenvalues[k]) * basis[k]

``basis`` rows are orthonormal (as flat vectors over the whole grid, zero outside ``mask``). ``kind`` says
whether a sample is a stationary velocity field (integrated by scaling and squaring, so the result is a
diffeomorphism) or a displacement field (used as is). On disk: ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from fairal.errors import FairalError
from fairal.nifti import load_nifti
from fairal.sampling import stream
from fairal.simulate.template import Template, resample_to_grid

FORMAT_VERSION = 1
KINDS = ("velocity", "displacement")
#: The anchored scales of the default models (``fairal calibrate``, docs/simulation.md): with the MNI152 template and
#: the Harvard-Oxford left caudate, a global RMS velocity of 4.09 mm makes the caudate volume of unbiased subjects
#: vary with a CV of 0.12, and one SD of the local PC1 (0.305 mm at the boundary) shrinks it by 0.12 of its volume:
#: one natural SD of healthy adult caudate volume (Raz et al. 2003).
DEFAULT_GLOBAL_RMS_MM = 4.09
DEFAULT_LOCAL_SD_MM = 0.305


@dataclass
class DeformationModel:
    mean: np.ndarray  # (3, X, Y, Z) float32, mm
    basis: np.ndarray  # (K, 3, X, Y, Z) float32, orthonormal rows
    eigenvalues: np.ndarray  # (K,) float64, mm^2 (variance along each component)
    affine: np.ndarray  # (4, 4) voxel -> world of the model's grid
    mask: np.ndarray  # (X, Y, Z) bool: where the model is defined
    kind: str = "velocity"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FairalError(f"deformation model kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.mean.ndim != 4 or self.mean.shape[0] != 3:
            raise FairalError(f"deformation model mean must have shape (3, X, Y, Z), got {self.mean.shape}")
        if self.basis.ndim != 5 or self.basis.shape[1:] != self.mean.shape:
            raise FairalError(
                f"deformation model basis must have shape (K, {', '.join(map(str, self.mean.shape))}), "
                f"got {self.basis.shape}"
            )
        if self.eigenvalues.shape != (self.basis.shape[0],) or np.any(self.eigenvalues < 0):
            raise FairalError("deformation model eigenvalues must be K non-negative numbers")
        if self.mask.shape != self.mean.shape[1:]:
            raise FairalError("deformation model mask must have the grid's shape")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mean.shape[1:])  # type: ignore[return-value]

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[0])

    def sample(self, coefficients: np.ndarray) -> np.ndarray:
        """``mean + sum_k coefficients[k] * sqrt(eigenvalues[k]) * basis[k]`` (3, X, Y, Z) in mm.

        ``coefficients`` are in standard-deviation units; fewer than K leave the rest at zero.
        """
        c = np.zeros(self.n_components)
        coefficients = np.atleast_1d(np.asarray(coefficients, dtype=np.float64))
        if coefficients.size > self.n_components:
            raise FairalError(f"{coefficients.size} coefficients for a model with {self.n_components} components")
        c[: coefficients.size] = coefficients
        w = (c * np.sqrt(self.eigenvalues)).astype(np.float32)
        # An explicit sum, not a BLAS product: BLAS kernels may round differently with memory alignment or
        # thread count, and the same seed must give the same bytes in every process.
        field = self.mean.copy()
        for k in np.flatnonzero(w):
            field += w[k] * self.basis[k]
        return field

    def save(self, path: str | Path) -> None:
        """Write the model as a compressed ``.npz`` with fixed zip timestamps, so that the same model always
        gives the same bytes (``np.savez_compressed`` stamps the current time)."""
        arrays = {
            "format_version": np.int64(FORMAT_VERSION),
            "mean": self.mean.astype(np.float32),
            "basis": self.basis.astype(np.float32),
            "eigenvalues": self.eigenvalues.astype(np.float64),
            "affine": self.affine.astype(np.float64),
            "mask": self.mask.astype(bool),
            "kind": np.str_(self.kind),
            "description": np.str_(self.description),
        }
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> DeformationModel:
        path = Path(path)
        if not path.is_file():
            raise FairalError(f"deformation model not found: {path}")
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive; numpy would read anything else as a pickle
                raise FairalError(f"deformation model {path} is not an .npz archive (a model of fairal build-model "
                                  "or fairal simulate's models/)")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                missing = {"mean", "basis", "eigenvalues", "affine", "mask", "kind"} - keys
                if missing:
                    raise FairalError(f"deformation model {path} lacks the arrays {sorted(missing)}")
                return cls(
                    mean=z["mean"].astype(np.float32),
                    basis=z["basis"].astype(np.float32),
                    eigenvalues=z["eigenvalues"].astype(np.float64),
                    affine=z["affine"].astype(np.float64),
                    mask=z["mask"].astype(bool),
                    kind=str(z["kind"]),
                    description=str(z["description"]) if "description" in keys else "",
                )
        except FairalError:
            raise
        except Exception as err:
            why = ("it holds Python objects, which fairal never loads" if "allow_pickle" in str(err)
                   else " ".join(str(err).split()))
            raise FairalError(f"deformation model {path} is not a readable .npz model: {why}") from err


def _orthonormalise(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` (K, D) -> orthonormal rows spanning the same space, in order (Gram-Schmidt via QR)."""
    q, r = np.linalg.qr(vectors.T.astype(np.float64))
    q = q * np.sign(np.diag(r))[None, :]  # keep each row's direction (QR's sign is arbitrary)
    return q.T


def _model_grid(affine: np.ndarray, lo_vox: np.ndarray, hi_vox: np.ndarray, spacing_mm: float):
    """A grid with ``spacing_mm`` spacing, the template's orientation, covering template voxels lo..hi."""
    direction = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    t_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    extent_mm = (hi_vox - lo_vox) * t_spacing
    shape = np.maximum(np.ceil(extent_mm / spacing_mm).astype(int) + 1, 2)
    grid_affine = np.eye(4)
    grid_affine[:3, :3] = direction * spacing_mm
    # Centre the coarse grid on the covered box.
    centre_world = affine[:3, :3] @ ((lo_vox + hi_vox) / 2.0) + affine[:3, 3]
    grid_affine[:3, 3] = centre_world - grid_affine[:3, :3] @ ((shape - 1) / 2.0)
    return tuple(int(s) for s in shape), grid_affine


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    field = rng.standard_normal((3, *shape))
    return np.stack([ndimage.gaussian_filter(f, sigma_vox, mode="nearest") for f in field])


def default_global_model(
    tpl: Template,
    out_start: np.ndarray,
    out_shape: tuple[int, int, int],
    seed: int = 0,
    n_components: int = 10,
    rms_mm: float = DEFAULT_GLOBAL_RMS_MM,
    smoothness_mm: float = 10.0,
    spacing_mm: float = 4.0,
    decay: float = 0.75,
) -> DeformationModel:
    """Global (inter-subject) model: smooth random velocity fields over the output field of view.

    Components are Gaussian-smoothed white noise (``smoothness_mm`` = kernel sigma), orthonormalised; the
    eigenvalues decay geometrically (``decay``) and are scaled so that a sample with z ~ N(0, I) has an RMS
    velocity of ``rms_mm`` over the grid: E|v(x)|^2 averaged over the N grid points = sum_k lambda_k / N.
    """
    rng = stream(seed, "global-model")
    margin = 8.0 / tpl.spacing  # a little beyond the output box, so interpolation at its faces is defined
    shape, affine = _model_grid(tpl.affine, out_start - margin, out_start + np.array(out_shape) - 1 + margin,
                                spacing_mm)
    comps = np.stack([_smooth_noise(rng, shape, smoothness_mm / spacing_mm) for _ in range(n_components)])
    basis = _orthonormalise(comps.reshape(n_components, -1)).reshape(comps.shape).astype(np.float32)
    weights = decay ** np.arange(n_components)
    n_points = int(np.prod(shape))
    eigenvalues = weights / weights.sum() * rms_mm**2 * n_points
    return DeformationModel(
        mean=np.zeros((3, *shape), np.float32),
        basis=basis,
        eigenvalues=eigenvalues,
        affine=affine,
        mask=np.ones(shape, bool),
        kind="velocity",
        description=(
            f"default global model: {n_components} smooth random velocity components (sigma {smoothness_mm} mm), "
            f"RMS {rms_mm} mm, grid {spacing_mm} mm, seed {seed}"
        ),
    )


def default_local_model(
    tpl: Template,
    seed: int = 0,
    sd_mm: float = DEFAULT_LOCAL_SD_MM,
    n_components: int = 4,
    taper_mm: float = 3.0,
    smoothness_mm: float = 1.5,
    spacing_mm: float = 1.0,
    decay: float = 0.5,
) -> DeformationModel:
    """Local ("bias") model around the labelled structure.

    PC1 is a velocity along the structure's outward surface normal, largest at its boundary and tapering off
    as exp(-d^2 / (2 taper^2)) with the distance d to the boundary: a positive coefficient shrinks the structure
    (atrophy, since images are sampled at x + u(x)), a negative one enlarges it. ``sd_mm`` is the peak speed of
    one standard deviation of PC1 at the boundary, the calibration setting of the bias. Further components are
    smooth random fields under the same taper, orthogonal to PC1, with smaller eigenvalues (``decay``).
    """
    if sd_mm < 0:
        raise FairalError(f"the local model's SD must be >= 0 mm, got {sd_mm}")
    rng = stream(seed, "local-model")
    reach_mm = 4.0 * taper_mm + 4.0
    idx = np.argwhere(tpl.label)
    shape, affine = _model_grid(tpl.affine, idx.min(0) - reach_mm / tpl.spacing, idx.max(0) + reach_mm / tpl.spacing,
                                spacing_mm)
    pc1, taper = _outward_normal(tpl, shape, affine, taper_mm, smoothness_mm, spacing_mm)
    mask = taper > 1e-3
    rest = []
    for _ in range(n_components - 1):
        noise = _smooth_noise(rng, shape, 2.0 * taper_mm / spacing_mm)
        rest.append(noise * taper)
    comps = np.stack([pc1, *rest]) * mask
    basis = _orthonormalise(comps.reshape(n_components, -1)).reshape(comps.shape).astype(np.float32)
    # Scale so that one SD of PC1 moves the boundary at sd_mm per unit time at its fastest point.
    peak = float(np.sqrt((basis[0] ** 2).sum(0)).max())
    lam1 = (sd_mm / peak) ** 2 if peak > 0 else 0.0
    eigenvalues = lam1 * decay ** np.arange(n_components)
    return DeformationModel(
        mean=np.zeros((3, *shape), np.float32),
        basis=basis,
        eigenvalues=eigenvalues,
        affine=affine,
        mask=mask,
        kind="velocity",
        description=(
            f"default local model: PC1 along the outward normal of the structure, 1 SD = {sd_mm} mm at the "
            f"boundary, taper {taper_mm} mm, {n_components} components, grid {spacing_mm} mm, seed {seed}"
        ),
    )


def _outward_normal(tpl: Template, shape: tuple[int, ...], affine: np.ndarray, taper_mm: float,
                    smoothness_mm: float, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """On the local model's grid: the structure's outward surface normal (world components) under the taper
    ``exp(-d^2 / (2 taper^2))`` of the signed distance ``d`` to its boundary, smoothed (PC1 before scaling), and
    the taper itself."""
    # The template's label probability on the model grid (linear), then a signed distance in mm.
    prob = resample_to_grid(tpl.label_prob, tpl.affine, shape, affine, order=1)
    inside = prob >= 0.5
    if not inside.any():
        raise FairalError("the labelled structure is too small for the local model's grid")
    sp = np.full(3, spacing_mm)
    signed = ndimage.distance_transform_edt(~inside, sampling=sp) - ndimage.distance_transform_edt(inside, sampling=sp)
    signed = ndimage.gaussian_filter(signed, smoothness_mm / spacing_mm, mode="nearest")
    grad_vox = np.stack(np.gradient(signed, *sp))  # d(distance)/d(voxel axis) in mm/mm
    norm = np.sqrt((grad_vox**2).sum(0)) + 1e-6
    taper = np.exp(-(signed**2) / (2 * taper_mm**2)).astype(np.float64)
    # Outward normal in world coordinates (grid axes are the template's directions).
    direction = affine[:3, :3] / spacing_mm
    normal_world = np.tensordot(direction, grad_vox / norm, axes=1)
    pc1 = normal_world * taper
    pc1 = np.stack([ndimage.gaussian_filter(c, smoothness_mm / spacing_mm, mode="constant") for c in pc1])
    return pc1, taper


def _read_field(path: Path, shape: tuple[int, ...] | None, affine: np.ndarray | None):
    img = load_nifti(path, "deformation field")
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector convention (X, Y, Z, 1, 3)
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise FairalError(f"deformation field {path} must have shape (X, Y, Z, 3) or (X, Y, Z, 1, 3), got {data.shape}")
    if shape is not None and (data.shape[:3] != shape or not np.allclose(img.affine, affine, atol=1e-4)):
        raise FairalError(
            f"deformation field {path} is on another grid (shape {data.shape[:3]}) than the first field "
            f"(shape {shape}): all fields must share one grid"
        )
    return np.moveaxis(data, 3, 0), img.affine


def build_model(
    fields: list[Path],
    kind: str = "velocity",
    n_components: int | None = None,
    variance_kept: float = 0.95,
    lps: bool = False,
) -> DeformationModel:
    """PCA model from a set of vector fields (NIfTI, one per subject, in mm), as SimBA built its models
    from registrations to the template.

    Components come from the SVD of the centred data matrix (N fields x D values): basis = right singular
    vectors, eigenvalues = s^2 / (N - 1). Keeps ``n_components`` or the fewest that explain ``variance_kept``.
    ``lps``: the fields' vectors are in LPS (ITK/ANTs) components; they are flipped to RAS.
    """
    if len(fields) < 2:
        raise FairalError(f"a PCA model needs at least 2 fields, got {len(fields)}")
    if kind not in KINDS:
        raise FairalError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    first, affine = _read_field(Path(fields[0]), None, None)
    shape = first.shape[1:]
    data = np.empty((len(fields), first.size), np.float32)
    data[0] = first.ravel()
    for i, f in enumerate(fields[1:], start=1):
        data[i] = _read_field(Path(f), shape, affine)[0].ravel()
    if lps:
        data = data.reshape(len(fields), 3, -1)
        data[:, :2] *= -1
        data = data.reshape(len(fields), -1)
    mean = data.mean(0)
    centred = data - mean
    _, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    eig = s**2 / (len(fields) - 1)
    keep = eig > eig.max() * 1e-10 if eig.max() > 0 else np.zeros_like(eig, bool)
    eig, vt = eig[keep], vt[keep]
    if eig.size == 0:
        raise FairalError("the fields are all identical: no variation to model")
    if n_components is None:
        frac = np.cumsum(eig) / eig.sum()
        n_components = int(np.searchsorted(frac, variance_kept) + 1)
    n_components = min(n_components, eig.size)
    mask = np.abs(centred).reshape(len(fields), 3, *shape).max(axis=(0, 1)) > 0
    return DeformationModel(
        mean=mean.reshape(3, *shape).astype(np.float32),
        basis=vt[:n_components].reshape(n_components, 3, *shape).astype(np.float32),
        eigenvalues=eig[:n_components],
        affine=affine.astype(np.float64),
        mask=mask,
        kind=kind,
        description=f"PCA of {len(fields)} {kind} fields, {n_components} components",
    )
