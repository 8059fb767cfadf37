"""Click to segment, click to correct: one object in one image with a promptable model.

>>> session = ClickSession(image, "lgmsnet-breast-us-clicks")    # doctest: +SKIP
>>> mask = session.add_click((120, 200))                          # doctest: +SKIP
>>> mask = session.add_click((90, 140), positive=False)           # doctest: +SKIP
>>> mask = session.undo()                                         # doctest: +SKIP

Each click predicts on a view of the image (for a first click on an empty mask the whole image or
a window around the click, as the card says, see :func:`.encoding.first_box`; else a crop around
the current object and the clicks, see :func:`.encoding.zoom_box`) resized to the card's patch,
with the prompt channels of :func:`.encoding.prompt_maps`; the prediction replaces the mask inside
that view. No Qt: the napari widget runs this in a worker.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_lgms.clicks.encoding import Box, Click, first_box, first_window, prompt_maps, zoom_box
from napari_lgms.errors import InputError


def network_input(view: np.ndarray, box: Box, grid: Sequence[int], clicks: Sequence[Click],
                  previous: np.ndarray | None, prompt) -> np.ndarray:
    """What a promptable network takes for one view: the normalised image crop ``view`` (C, *box
    size) resized to ``grid``, followed by the prompt channels -> (C + P, *grid) float32."""
    import torch

    from napari_lgms.inference.geometry import resize

    image = resize(torch.from_numpy(np.ascontiguousarray(view, np.float32))[None], tuple(grid))[0].numpy()
    prompts = prompt_maps(box, grid, clicks, previous, prompt.channels, prompt.radius)
    return np.concatenate([image, prompts])


class ClickSession:
    """Segment one object of ``image`` click by click with ``model`` (a promptable model's name,
    card path or LoadedModel). ``image``: 2D (optionally with channels) for a 2D model, 3D for a 3D
    one; ``mask``: a mask to start from (e.g. the automatic one), else empty; ``spacing``: the
    image's pixel size per spatial axis in the card's unit (mm), which sizes a "window" first view
    for a card with a spacing. ``mask`` (bool, the image's spatial shape) is always the current
    result."""

    def __init__(self, image, model, *, channel_axis="auto", mask: np.ndarray | None = None, spacing=None,
                 device="cpu"):
        from napari_lgms.inference import geometry
        from napari_lgms.inference.engine import loaded_model
        from napari_lgms.inference.normalize import fit_normalizer

        loaded = loaded_model(model)
        card = loaded.card
        if card.prompt is None:
            raise InputError(f"{card.name} does not take clicks; choose a model whose name ends in -clicks")
        array = geometry.check_image(image)
        axis = geometry.find_channel_axis(array.shape, channel_axis, card.spatial_dims, card.image_channels)
        data = geometry.match_channels(geometry.channels_first(array, axis), card.image_channels)
        if data.ndim - 1 != card.spatial_dims:
            raise InputError(f"{card.name} is a {card.spatial_dims}D model; the image has spatial shape "
                             f"{data.shape[1:]} (give one slice of a volume to a 2D model)")
        self.card, self.shape = card, tuple(data.shape[1:])
        self.window = first_window(card.input.patch_size, card.input.spacing,
                                   geometry.check_spacing(spacing, self.shape))
        self._data, self._normalize = data, fit_normalizer(data, card.normalization)
        self._predict, self.device = _click_predictor(loaded.network, card, device)
        if mask is not None and tuple(np.shape(mask)) != self.shape:
            raise InputError(f"mask has shape {np.shape(mask)}, the image {self.shape}")
        self.mask = np.zeros(self.shape, bool) if mask is None else np.asarray(mask, bool).copy()
        self.clicks: list[Click] = []
        self._before: list[np.ndarray] = []
        self._first_clicks = 0  # clicks predicted in the first view

    def add_click(self, position: Sequence[float], positive: bool = True) -> np.ndarray:
        """Add a click at ``position`` (index coordinates per spatial axis) and return the new mask."""
        return self.add_clicks([Click(tuple(position), bool(positive))])

    def add_clicks(self, clicks: Sequence[Click]) -> np.ndarray:
        """Add several clicks and predict once (clicks that arrived while the last prediction ran);
        undoing any of them returns to the mask before all of them."""
        try:
            clicks = [Click(tuple(float(p) for p in c.position), bool(c.positive)) for c in clicks]
        except (TypeError, ValueError):
            raise InputError(f"a click position is one number per spatial axis of the image {self.shape}; "
                             f"got {[c.position for c in clicks]}") from None
        for click in clicks:
            if len(click.position) != len(self.shape) or not all(
                    0 <= p < s for p, s in zip(click.position, self.shape)):
                raise InputError(f"click {click.position} is outside the image (spatial shape {self.shape})")
        if not clicks:
            return self.mask
        first_of_session = not self.clicks
        self._before.extend([self.mask] * len(clicks))
        self.clicks.extend(clicks)
        self.mask = self._predicted(first_of_session and not self.mask.any(), clicks)
        return self.mask

    def undo(self) -> np.ndarray:
        """Remove the last click and return the mask as it was before it."""
        if self.clicks:
            self.clicks.pop()
            self.mask = self._before.pop()
        return self.mask

    def view(self) -> Box:
        """The image region the last prediction covered: the first view (:func:`.encoding.first_box`)
        for the session's first clicks on an empty mask, else the zoomed view around the mask and
        every click."""
        prompt = self.card.prompt
        if self.clicks and len(self.clicks) == self._first_clicks and not self._before[0].any():
            return first_box(self.shape, self.clicks, prompt, self.window)
        return zoom_box(self.shape, self._before[-1] if self._before else self.mask, self.clicks,
                        prompt.expansion, prompt.min_crop)

    def _predicted(self, first_view: bool, new_clicks: Sequence[Click]) -> np.ndarray:
        import torch

        from napari_lgms.inference.geometry import resize

        if first_view:
            self._first_clicks = len(self.clicks)
        box = self.view()
        region = tuple(slice(a, b) for a, b in box)
        view = self._normalize(self._data[(slice(None),) + region])
        grid = tuple(int(p) for p in self.card.input.patch_size)
        inputs = network_input(view, box, grid, self.clicks, self.mask, self.card.prompt)
        logits = self._predict(torch.from_numpy(inputs)[None].to(self.device))
        logits = resize(logits.float().cpu(), tuple(b - a for a, b in box))[0, 0]
        predicted = (torch.sigmoid(logits) > self.card.output.threshold).numpy()
        if not first_view:
            start = [a for a, _ in box]
            moved = [Click(tuple(p - a for p, a in zip(c.position, start)), c.positive) for c in new_clicks]
            predicted = merged(self.mask[region], predicted, moved)
        mask = self.mask.copy()
        mask[region] = predicted
        return mask


def merged(before: np.ndarray, predicted: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """``before`` with only those changes of ``predicted`` that are connected to a new click
    (FocalClick's progressive merge): a click corrects the error it was made on and leaves the rest
    of the mask as the user last saw it. Clicks outside the arrays change nothing."""
    from scipy.ndimage import label

    changed, count = label(before != predicted)
    if count == 0:
        return predicted
    inside = [tuple(int(p) for p in c.position) for c in clicks
              if all(0 <= p < s for p, s in zip(c.position, before.shape))]
    at_clicks = {int(changed[position]) for position in inside} - {0}
    return np.where(np.isin(changed, list(at_clicks)), predicted, before)


def _click_predictor(network, card, device):
    """(predictor (1, C + P, *patch) -> logits, torch device) for one click, no test-time flips."""
    import torch

    from napari_lgms.inference.fast import inference_network
    from napari_lgms.inference.sliding import network_predictor

    device = torch.device(device)
    network.to(device).eval()
    divisor = int(card.input.size_divisor or getattr(network, "size_divisor", 1))
    return network_predictor(inference_network(network, device), divisor=divisor), device
