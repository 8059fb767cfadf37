"""Synthetic training data and a tiny training config, shared by the training, DDP and distillation tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def ellipse_phantom(rng: np.random.Generator, shape=(32, 32)):
    """An ellipse (or ellipsoid) of brighter intensity in noise: (image float, mask uint8)."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [rng.uniform(0.35, 0.65) * s for s in shape]
    radii = [rng.uniform(0.15, 0.3) * s for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    image = rng.normal(60, 12, shape) + 90 * inside
    return np.clip(image, 0, 255), inside.astype(np.uint8)


def write_2d_dataset(root: Path, count=8, shape=(32, 32), seed=0, mask_suffix=".png"):
    """images/*.png + masks/*.png phantoms (plus a hidden junk file that must be skipped)."""
    from skimage.io import imsave

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(count):
        image, mask = ellipse_phantom(rng, shape)
        imsave(root / "images" / f"case{i:02d}.png", image.astype(np.uint8), check_contrast=False)
        imsave(root / "masks" / f"case{i:02d}{mask_suffix}", (mask * 255).astype(np.uint8), check_contrast=False)
    (root / "images" / "._case00.png").write_bytes(b"junk")
    return root


def write_msd_dataset(root: Path, count=4, shape=(16, 16, 16), seed=0):
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    for i in range(count):
        image, mask = ellipse_phantom(rng, shape)
        labels = mask.copy()
        labels[: shape[0] // 2][mask[: shape[0] // 2] > 0] = 2
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), root / "imagesTr" / f"vol_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), root / "labelsTr" / f"vol_{i:03d}.nii.gz")
        (root / "imagesTr" / f"._vol_{i:03d}.nii.gz").write_bytes(b"\x00\x05junk")
    return root


def tiny_config(tmp_path: Path, data: Path, **overrides):
    from napari_lgms.training.config import TrainConfig

    values = dict(
        name="tiny-trained", model="tiny_test_net", model_args={"in_channels": 1, "num_classes": 1},
        data=str(data), patch_size=[32, 32], epochs=2, batch_size=4, lr=0.05, output=str(tmp_path / "run"),
        val_fraction=0.25, device="cpu", licence="CC0-1.0", citation=["test citation"],
        data_description="synthetic ellipses", data_terms="generated",
    )
    values.update(overrides)
    return TrainConfig(**values)
