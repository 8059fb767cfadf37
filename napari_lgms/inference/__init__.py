"""Inference: segment 2D images and 3D volumes with a loaded model.

>>> from napari_lgms.inference import segment          # doctest: +SKIP
>>> result = segment(image, model)                      # doctest: +SKIP
>>> result.labels.shape == image.shape[:2]              # doctest: +SKIP

:func:`segment_steps` is the same work as a generator of :class:`Progress`,
for progress bars and cancellable napari workers.
"""
from napari_lgms.inference.engine import Progress, SegmentationResult, segment, segment_steps

__all__ = ["Progress", "SegmentationResult", "segment", "segment_steps"]
