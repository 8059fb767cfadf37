"""On-the-fly augmentation and patch sampling, dimension-generic (2D and 3D), numpy + torch.

Every function takes ``image`` (C, *S) float32 and ``mask`` (*S) integer labels
and a ``numpy.random.Generator``; the caller seeds the generator per (epoch,
sample) so augmentation is reproducible whatever the worker layout.

The papers' recipe is a random 90-degree rotation and a random flip. For
small-data fine-tuning, intensity jitter, noise, scaling and elastic
deformation help too (off by default; see :class:`AugmentParams`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities (per sample) of each transform, and their ranges."""

    rot90_p: float = 0.5
    flip_p: float = 0.5
    intensity_p: float = 0.0
    noise_p: float = 0.0
    scale_p: float = 0.0
    scale_range: tuple[float, float] = (0.75, 1.25)
    elastic_p: float = 0.0
    elastic_alpha: float = 0.04  # displacement amplitude, in units of half the image size
    elastic_points: int = 5  # control points per axis of the coarse displacement grid

    @classmethod
    def from_config(cls, config) -> "AugmentParams":
        low, high = (list(config.scale_range) + [1.0, 1.0])[:2]
        return cls(config.rot90_p, config.flip_p, config.intensity_p, config.noise_p,
                   config.scale_p, (float(low), float(high)), config.elastic_p)

    @property
    def any_geometric_resample(self) -> bool:
        return self.scale_p > 0 or self.elastic_p > 0


def random_rot90(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: float):
    """Rotate by k·90 degrees in a random plane whose two axes have the same length."""
    if p <= 0 or rng.random() >= p:
        return image, mask
    spatial = mask.shape
    planes = [(a, b) for a in range(len(spatial)) for b in range(a + 1, len(spatial)) if spatial[a] == spatial[b]]
    if not planes:
        return image, mask
    a, b = planes[rng.integers(len(planes))]
    k = int(rng.integers(1, 4))
    return np.rot90(image, k, axes=(a + 1, b + 1)), np.rot90(mask, k, axes=(a, b))


def random_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: float):
    """With probability ``p`` flip along a random non-empty set of spatial axes."""
    if p <= 0 or rng.random() >= p:
        return image, mask
    dims = mask.ndim
    chosen = [axis for axis in range(dims) if rng.random() < 0.5] or [int(rng.integers(dims))]
    return np.flip(image, [a + 1 for a in chosen]), np.flip(mask, chosen)


def random_intensity(image: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Contrast, brightness and gamma jitter, per image (normalised input assumed)."""
    if p <= 0 or rng.random() >= p:
        return image
    low, high = float(image.min()), float(image.max())
    span = max(high - low, 1e-6)
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
    unit = np.power((image - low) / span, gamma)
    image = unit * span + low
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-0.2, 0.2) * float(image.std() + 1e-6)
    mean = float(image.mean())
    return ((image - mean) * contrast + mean + brightness).astype(np.float32)


def random_noise(image: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    if p <= 0 or rng.random() >= p:
        return image
    sigma = rng.uniform(0.0, 0.1) * float(image.std() + 1e-6)
    return (image + rng.normal(0.0, sigma, image.shape)).astype(np.float32)


def random_resample(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: AugmentParams):
    """Random zoom and/or elastic deformation in one ``grid_sample`` (bilinear image, nearest mask)."""
    do_scale = params.scale_p > 0 and rng.random() < params.scale_p
    do_elastic = params.elastic_p > 0 and rng.random() < params.elastic_p
    if not (do_scale or do_elastic):
        return image, mask
    import torch
    import torch.nn.functional as F

    dims = mask.ndim
    spatial = mask.shape
    axes = [torch.linspace(-1.0, 1.0, s) for s in spatial]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*S, dims), spatial order
    if do_scale:
        low, high = params.scale_range
        factor = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        shift = torch.as_tensor(rng.uniform(-1, 1, dims) * max(0.0, 1.0 - 1.0 / factor), dtype=torch.float32)
        mesh = mesh / factor + shift
    if do_elastic:
        coarse = torch.as_tensor(
            rng.normal(0.0, params.elastic_alpha, (1, dims) + (params.elastic_points,) * dims), dtype=torch.float32
        )
        mode = "bicubic" if dims == 2 else "trilinear"
        field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)[0]
        mesh = mesh + torch.movedim(field, 0, -1)
    grid = mesh.flip(-1).unsqueeze(0)  # grid_sample wants (x, y[, z]) = reversed spatial order
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0)
    mask_t = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32)).unsqueeze(0).unsqueeze(0)
    warped = F.grid_sample(image_t, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    # same padding as the image: where the image repeats its border, the labels repeat theirs
    labels = F.grid_sample(mask_t, grid, mode="nearest", padding_mode="border", align_corners=True)[0, 0]
    return warped.numpy(), labels.numpy().round().astype(mask.dtype)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: AugmentParams):
    """All enabled transforms: (C, *S), (*S) -> (C, *S) float32, (*S) same dtype, contiguous."""
    image, mask = random_rot90(image, mask, rng, params.rot90_p)
    image, mask = random_flip(image, mask, rng, params.flip_p)
    image, mask = random_resample(image, mask, rng, params)
    image = random_intensity(image, rng, params.intensity_p)
    image = random_noise(image, rng, params.noise_p)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def crop_or_pad(image: np.ndarray, mask: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]):
    """Crop (C, *S) / (*S) at ``start`` to ``size``, padding beyond the borders (image: edge, mask: 0)."""
    slices, pads = [], []
    for s, length, total in zip(start, size, mask.shape):
        lo, hi = max(s, 0), min(s + length, total)
        slices.append(slice(lo, max(hi, lo)))
        pads.append((lo - s, s + length - max(hi, lo)))
    image = image[(slice(None),) + tuple(slices)]
    mask = mask[tuple(slices)]
    if any(a or b for a, b in pads):
        mode = "edge" if image.size else "constant"
        image = np.pad(image, [(0, 0)] + pads, mode=mode)
        mask = np.pad(mask, pads, mode="constant")
    return image, mask


def sample_patch(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, ...],
    rng: np.random.Generator,
    focus: np.ndarray | None = None,
    bias: float = 0.5,
):
    """A random patch of ``size``; with probability ``bias`` centred on a voxel of ``focus``.

    ``focus`` holds flat indices into the spatial shape (foreground or corrected
    voxels). Images smaller than ``size`` are padded.
    """
    spatial = mask.shape
    if focus is not None and len(focus) and rng.random() < bias:
        centre = np.unravel_index(int(focus[rng.integers(len(focus))]), spatial)
        start = [int(c) - s // 2 + int(rng.integers(-(s // 4), s // 4 + 1)) for c, s in zip(centre, size)]
        start = [min(max(st, min(0, t - s)), max(t - s, 0)) for st, s, t in zip(start, size, spatial)]
    else:
        start = [int(rng.integers(0, max(t - s, 0) + 1)) if t > s else -((s - t) // 2) for s, t in zip(size, spatial)]
    return crop_or_pad(image, mask, tuple(start), tuple(size))
