"""Generated sample data for napari's File > Open Sample (npe2 ``sample_data``).

Nothing here is a real patient image and nothing is downloaded: every sample
is drawn from a seeded random generator, so the same call gives the same
pixels on every machine. Each sample comes with its ground truth as a Labels
layer, so a user can compare a model's output with the truth at a glance.

Numpy and scipy only (no torch, no Qt): napari imports this module when the
sample menu is opened.

The ``make_*`` functions return arrays; the ``*_sample`` functions wrap them
as napari layer-data tuples ``(data, kwargs, layer_type)``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_SEED = 0
MODEL_HINT_KEY = "napari_lgms_model"  # image layer metadata: the shipped model made for this sample

LayerData = tuple  # (data, kwargs, layer_type)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def _irregular_ellipse(shape, center, radii, rng, roughness=0.12, angle=0.0) -> np.ndarray:
    """Boolean (H, W) mask of an ellipse whose border wobbles (lobulated margin)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dx * cos + dy * sin) / radii[1], (-dx * sin + dy * cos) / radii[0]
    theta = np.arctan2(v, u)
    wobble = np.ones_like(theta)
    for harmonic in (3, 5, 7):
        wobble += roughness / harmonic * 2 * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) <= wobble


def make_ultrasound(shape: tuple[int, int] = (256, 256), seed: int = DEFAULT_SEED):
    """A B-mode-like 2D image with one hypoechoic lesion.

    Returns ``(image, mask)``: image (H, W) uint8, mask (H, W) uint8 with the
    lesion as 1. Speckle is multiplicative Rayleigh noise; the lesion is dark
    with a lobulated margin and casts an acoustic shadow below it; the field of
    view is a fan (sector) with depth attenuation, as from a curved probe.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)

    # tissue echogenicity: layered structures plus slow variation
    layers = 0.55 + 0.12 * np.sin(yy / height * 9.0 + 0.6 * _smooth_noise(rng, shape, 12))
    tissue = layers + 0.10 * _smooth_noise(rng, shape, 6)
    tissue += 0.35 * (_smooth_noise(rng, shape, 1.5) > 2.0)  # bright specular reflectors

    center = (height * rng.uniform(0.42, 0.52), width * rng.uniform(0.42, 0.58))
    radii = (height * rng.uniform(0.11, 0.14), width * rng.uniform(0.14, 0.18))
    lesion = _irregular_ellipse(shape, center, radii, rng, angle=rng.uniform(-0.3, 0.3))
    soft_lesion = ndimage.gaussian_filter(lesion.astype(np.float64), 1.5)
    tissue = tissue * (1.0 - 0.82 * soft_lesion)

    # posterior acoustic shadow: columns behind the lesion lose energy with depth
    columns = lesion.any(axis=0)
    column_weight = ndimage.gaussian_filter1d(columns.astype(np.float64), 4.0)
    bottom = np.array([np.max(np.nonzero(lesion[:, x])[0]) if columns[x] else 0 for x in range(width)])
    below = yy > ndimage.maximum_filter1d(bottom, 9)[None, :]
    tissue *= 1.0 - 0.6 * column_weight[None, :] * below

    # speckle (Rayleigh amplitude), depth attenuation with gain compensation
    speckle = rng.rayleigh(scale=1.0, size=shape)
    speckle = ndimage.gaussian_filter(speckle, (0.8, 1.6))
    attenuation = np.exp(-1.1 * yy / height) * (0.75 + 0.25 * yy / height)
    signal = tissue * speckle * attenuation

    # fan-shaped field of view (apex above the image)
    apex = (-0.6 * height, width / 2)
    angle = np.arctan2(xx - apex[1], yy - apex[0])
    depth = np.hypot(xx - apex[1], yy - apex[0])
    fan = (np.abs(angle) < 0.55) & (depth > 0.6 * height) & (depth < 1.58 * height)
    signal *= fan

    image = np.clip(signal / np.percentile(signal[fan], 99.5), 0, 1)
    image = (255 * image ** 0.8).astype(np.uint8)
    mask = (lesion & fan).astype(np.uint8)
    return image, mask


def make_endoscopy(shape: tuple[int, int] = (256, 256), seed: int = DEFAULT_SEED):
    """A colonoscopy-like RGB frame with one polyp.

    Returns ``(image, mask)``: image (H, W, 3) uint8, mask (H, W) uint8 with the
    polyp as 1. Pinkish mucosa with vessel texture, a reddish dome lit from the
    scope (shading plus white specular highlights) and a dark vignette.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)

    mucosa = np.array([0.86, 0.52, 0.50])
    texture = 0.06 * _smooth_noise(rng, shape, 3) + 0.05 * _smooth_noise(rng, shape, 15)
    vessels = np.abs(_smooth_noise(rng, shape, 5)) < 0.08  # thin ridge lines of a smooth field
    vessels = ndimage.gaussian_filter(vessels.astype(np.float64), 0.8)
    rgb = mucosa[None, None, :] * (1.0 + texture[..., None])
    rgb = rgb - vessels[..., None] * np.array([0.05, 0.22, 0.20])

    # folds: darker arcs around the lumen
    lumen = (height * 0.3, width * 0.75)
    ring = np.hypot(yy - lumen[0], xx - lumen[1])
    folds = np.clip(np.sin(ring / 14.0 + 0.8 * _smooth_noise(rng, shape, 20)), 0, 1) ** 4
    rgb *= (1.0 - 0.08 * folds)[..., None]
    rgb *= (0.35 + 0.65 * np.clip(ring / (0.35 * height), 0, 1))[..., None]  # dark lumen

    center = (height * rng.uniform(0.55, 0.65), width * rng.uniform(0.32, 0.45))
    radii = (height * rng.uniform(0.13, 0.17), width * rng.uniform(0.14, 0.19))
    polyp = _irregular_ellipse(shape, center, radii, rng, roughness=0.08)
    # dome height for shading: 1 at the centre, 0 at the border
    distance = ndimage.distance_transform_edt(polyp)
    dome = np.sqrt(np.clip(distance / (distance.max() + 1e-9), 0, 1))
    gy, gx = np.gradient(ndimage.gaussian_filter(dome, 2.0))
    shading = np.clip(1.0 - 6.0 * (gy * 0.7 + gx * 0.7), 0.6, 1.3)
    polyp_colour = np.array([0.80, 0.33, 0.32]) * (1.0 + 0.08 * _smooth_noise(rng, shape, 2))[..., None]
    soft = ndimage.gaussian_filter(polyp.astype(np.float64), 1.2)[..., None]
    rgb = rgb * (1 - soft) + polyp_colour * shading[..., None] * soft

    # specular highlights: small saturated spots, mostly on the dome
    spots = (_smooth_noise(rng, shape, 1.5) > 2.0) & (dome > 0.35)
    spots |= _smooth_noise(rng, shape, 1.0) > 3.4
    highlight = ndimage.gaussian_filter(spots.astype(np.float64), 0.9)
    rgb = rgb + 1.6 * highlight[..., None]

    # round field of view of the scope
    radius = np.hypot(yy - height / 2, xx - width / 2) / (0.5 * np.hypot(height, width))
    rgb *= np.clip(1.25 - radius ** 2, 0, 1)[..., None]
    rgb += 0.015 * rng.standard_normal(rgb.shape)

    image = (255 * np.clip(rgb, 0, 1)).astype(np.uint8)
    return image, polyp.astype(np.uint8)


def make_volume(shape: tuple[int, int, int] = (32, 96, 96), spacing=(3.0, 1.0, 1.0),
                seed: int = DEFAULT_SEED):
    """A 3D volume with two bright blob structures, sampled with anisotropic spacing.

    Returns ``(volume, mask, spacing)``: volume (Z, Y, X) float32, mask (Z, Y, X)
    uint8 with both blobs as 1, spacing (z, y, x) in mm. The blobs are round in
    physical space, so they look flattened along Z in voxels.
    """
    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing)
    grid = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing)]

    mask = np.zeros(shape, dtype=bool)
    for fraction in ((0.5, 0.33, 0.35), (0.45, 0.66, 0.62)):
        center = [f * e + rng.uniform(-3, 3) for f, e in zip(fraction, extent)]
        radius = rng.uniform(0.13, 0.17) * min(extent)
        squared = sum(((g - c) / (radius * w)) ** 2 for g, c, w in
                      zip(grid, center, rng.uniform(0.85, 1.15, size=3)))
        mask |= squared <= 1.0

    sigma_voxels = [1.0 / s for s in spacing]  # about 1 mm of blur in every direction
    background = 0.25 + 0.05 * _smooth_noise(rng, shape, [4 * s for s in sigma_voxels])
    volume = background + 0.5 * ndimage.gaussian_filter(mask.astype(np.float64), sigma_voxels)
    volume += 0.06 * rng.standard_normal(shape)
    return volume.astype(np.float32), mask.astype(np.uint8), spacing


def _truth_kwargs(name: str, **geometry) -> dict:
    return {"name": f"{name} ground truth", "opacity": 0.4, "visible": False, **geometry}


def ultrasound_sample() -> list[LayerData]:
    """2D ultrasound-like image (0.2 mm pixels) and its lesion ground truth."""
    image, mask = make_ultrasound()
    geometry = {"scale": (0.2, 0.2), "units": ("mm", "mm"), "axis_labels": ("y", "x")}
    return [
        (image, {"name": "ultrasound", "colormap": "gray", "metadata": {MODEL_HINT_KEY: "lgmsnet-synthetic-us"},
                 **geometry}, "image"),
        (mask, _truth_kwargs("ultrasound", **geometry), "labels"),
    ]


def endoscopy_sample() -> list[LayerData]:
    """2D RGB endoscopy-like frame and its polyp ground truth."""
    image, mask = make_endoscopy()
    return [
        (image, {"name": "endoscopy", "rgb": True}, "image"),
        (mask, _truth_kwargs("endoscopy"), "labels"),
    ]


def volume_sample() -> list[LayerData]:
    """3D volume with anisotropic voxels (3 x 1 x 1 mm) and its blob ground truth."""
    volume, mask, spacing = make_volume()
    geometry = {"scale": spacing, "units": ("mm",) * 3, "axis_labels": ("z", "y", "x")}
    return [
        (volume, {"name": "volume", "colormap": "gray", **geometry}, "image"),
        (mask, _truth_kwargs("volume", **geometry), "labels"),
    ]
