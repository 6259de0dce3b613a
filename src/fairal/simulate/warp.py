"""Integrating velocity fields and warping the template once with the composed deformation.

Convention (backward mapping): a subject image is ``I(x) = T(psi(x))`` with ``psi(x) = x + u(x)``. With a global
and a local deformation, ``psi = psi_L o psi_G``: the global field maps subject space into template space and the
local field then acts in template space, where the local model is defined around the template's structure::

    u(x) = u_G(x) + u_L(x + u_G(x))

so image and label are resampled from the template once, at ``psi(x)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF

from fairal.simulate.deformation import DeformationModel


def _world_to_grid(affine: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """3x4 matrix mapping world (x, y, z) to grid_sample's normalised (k, j, i) coordinates (align_corners)."""
    inv = np.linalg.inv(affine)[:3]
    scale = np.array([2.0 / max(n - 1, 1) for n in shape])
    norm = inv * scale[:, None]
    norm[:, 3] -= 1.0
    return torch.as_tensor(norm[::-1].copy(), dtype=torch.float32)


def _apply_affine(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points @ m[:, :3].T + m[:, 3]`` written out element-wise: a BLAS matrix product may round differently
    with the thread count or memory alignment, and the same seed must give the same bytes in any process."""
    x, y, z = points[..., 0:1], points[..., 1:2], points[..., 2:3]
    return m[:, 3] + x * m[:, 0] + y * m[:, 1] + z * m[:, 2]


def sample_world(
    volume: torch.Tensor, affine: np.ndarray, points: torch.Tensor, padding: str = "zeros"
) -> torch.Tensor:
    """Trilinear samples of ``volume`` (C, X, Y, Z) on grid ``affine`` at world ``points`` (..., 3) -> (C, ...).

    With ``padding="zeros"`` only the points inside the grid are interpolated (the rest are zero), which
    makes sampling a small local grid at a whole volume's points cheap.
    """
    m = _world_to_grid(affine, tuple(volume.shape[1:]))
    grid = _apply_affine(m, points.reshape(-1, 3))
    if padding == "zeros":
        inside = (grid.abs() <= 1.0 + 1e-6).all(dim=1).nonzero().squeeze(1)
        out = torch.zeros(volume.shape[0], grid.shape[0], dtype=volume.dtype)
        if inside.numel():
            vals = F.grid_sample(
                volume[None], grid[inside].reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                align_corners=True,
            )
            out[:, inside] = vals.reshape(volume.shape[0], -1)
        return out.reshape(volume.shape[0], *points.shape[:-1])
    out = F.grid_sample(volume[None], grid.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode=padding,
                        align_corners=True)
    return out.reshape(volume.shape[0], *points.shape[:-1])


def integrate(model: DeformationModel, field_mm: np.ndarray) -> torch.Tensor:
    """The displacement (3, X, Y, Z) in mm of a field sampled from ``model``.

    Velocity fields are integrated by scaling and squaring (MONAI's DVF2DDF) in the grid's voxel units, with
    enough steps that the first step moves at most a quarter voxel.
    """
    v = torch.as_tensor(field_mm, dtype=torch.float32)
    if model.kind == "displacement":
        return v
    lin = torch.as_tensor(model.affine[:3, :3], dtype=torch.float32)
    v_vox = _apply_linear(torch.linalg.inv(lin), v)
    vmax = float(v_vox.abs().max())
    if vmax == 0.0:
        return torch.zeros_like(v)
    steps = max(int(math.ceil(math.log2(vmax / 0.25))), 1) + 1
    with warnings.catch_warnings():  # MONAI notes that it uses PyTorch's grid_sample: expected here
        warnings.simplefilter("ignore", UserWarning)
        u_vox = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")(v_vox[None])[0]
    return _apply_linear(lin, u_vox)


def _apply_linear(m: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """``m @ field`` over the channel axis of a (3, ...) field, element-wise (see ``_apply_affine``)."""
    return torch.stack([m[a, 0] * field[0] + m[a, 1] * field[1] + m[a, 2] * field[2] for a in range(3)])


def output_points(affine: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """World coordinates (X, Y, Z, 3) of the voxels of an output grid."""
    idx = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), dim=-1
    )
    return _apply_affine(torch.as_tensor(affine[:3], dtype=torch.float32), idx)


def field_on_grid(
    field: torch.Tensor, field_affine: np.ndarray, out_affine: np.ndarray, shape: tuple[int, int, int], stride: int = 1
) -> torch.Tensor:
    """A smooth field (3, ...) on grid ``field_affine``, sampled at the voxels of an output grid -> (X, Y, Z, 3).

    With ``stride`` > 1 it is sampled at every ``stride``-th voxel and upsampled trilinearly: exact for a linear
    field, and within a tiny fraction of a millimetre for the smooth global fields (much cheaper).
    """
    if stride <= 1:
        return torch.movedim(sample_world(field, field_affine, output_points(out_affine, shape), "border"), 0, -1)
    coarse_shape = tuple(-(-(n - 1) // stride) + 1 for n in shape)  # covers 0 .. >= n - 1
    coarse_affine = out_affine.copy()
    coarse_affine[:3, :3] = out_affine[:3, :3] * stride
    coarse = sample_world(field, field_affine, output_points(coarse_affine, coarse_shape), "border")
    full = F.interpolate(
        coarse[None], size=tuple((c - 1) * stride + 1 for c in coarse_shape), mode="trilinear", align_corners=True
    )[0]
    return torch.movedim(full[:, : shape[0], : shape[1], : shape[2]], 0, -1)


def deformed_points(
    points: torch.Tensor,
    u_global_at_points: torch.Tensor,
    local_model: DeformationModel | None = None,
    u_local: torch.Tensor | None = None,
) -> torch.Tensor:
    """``psi(x) = y + u_L(y)``, ``y = x + u_G(x)``, for world points (..., 3) and u_G already at those points."""
    y = points + u_global_at_points
    if local_model is not None and u_local is not None:
        # Zero outside the local grid: the local field vanishes there by construction (taper).
        y = y + torch.movedim(sample_world(u_local, local_model.affine, y, padding="zeros"), 0, -1)
    return y


def warp_template(
    image: torch.Tensor, label_prob: torch.Tensor, template_affine: np.ndarray, psi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the template image and label probability at ``psi`` (..., 3) in one pass."""
    stacked = torch.stack([image, label_prob])
    out = sample_world(stacked, template_affine, psi, padding="zeros")
    return out[0], out[1]


def jacobian_determinant(psi_vox: np.ndarray) -> np.ndarray:
    """det(d psi / d x) by central differences, for a map (X, Y, Z, 3) in voxel units of a unit grid."""
    grads = [np.gradient(psi_vox[..., a], axis=(0, 1, 2)) for a in range(3)]
    jac = np.stack([np.stack(g, axis=-1) for g in grads], axis=-2)  # (..., 3 components, 3 axes)
    return np.linalg.det(jac)
