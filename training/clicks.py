"""Training click models from a shipped model, with simulated users (as RITM trains).

>>> result = train_clicks(ClickTraining("lgmsnet-breast-us", "${NAPARI_LGMS_DATA}/busi",
...                                     "training/splits/busi.json", "runs/busi-clicks"))  # doctest: +SKIP

Each step: a batch of views (the whole image, or a crop around the object as the click session
zooms in), resized to the card's patch; a state to correct (nothing, the network's own mask
without clicks, or a distorted true mask) with first clicks; 0 to ``max_iterations`` rounds in
which the network predicts without gradients and the simulated user clicks on its largest error;
then one step on the last prediction. The loop stops at the time or step budget.

A run is a *stage*: it starts from the parent (first stage) or from the output folder's model
(``resume``), saves a checkpoint every ``checkpoint_seconds`` and at the end, scores the
validation split through :class:`napari_lgms.clicks.ClickSession` (NoC@85/90, IoU after 1/3/5
clicks), and writes the model with its card when it improved on the stage it started from
(:func:`stage_rank`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Generator

import numpy as np

from napari_lgms.training.loop import Stepper


CHECKPOINT = "click_checkpoint.pt"
LOG = "click_stages.jsonl"


@dataclass
class ClickTraining:
    """A click-training stage. ``data``: a dataset folder; ``split_file``: the parent's recorded
    split (its validation examples never train); ``seconds`` / ``steps``: the stage's budget;
    ``radius`` / ``first_view``: the new model's :class:`~napari_lgms.zoo.card.PromptSpec` fields
    (None: the defaults; later stages keep the folder's model's, and refuse others)."""

    parent: str
    data: str
    split_file: str
    output: str
    name: str = ""
    seconds: float | None = 1800.0
    steps: int | None = None
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    seed: int = 0
    max_side: int = 512  # images are kept at most this large per axis in memory
    first_view_share: float = 0.35  # share of views that are the first click's view (card: prompt.first_view)
    max_iterations: int = 2
    prompt_lr_scale: float = 10.0  # the weights reading the prompt channels move this much faster
    validation_images: int = 60
    radius: float | None = None
    first_view: str | None = None
    checkpoint_seconds: float = 300.0
    resume: bool = True
    command: str = ""


@dataclass
class Example:
    """An image in memory, at most ``max_side`` per axis: ``image`` (C, *S) in the card's channels
    and file intensities, ``labels`` (*S) its objects (each foreground label is one object to
    click), ``normalize`` the card's normalisation with this image's statistics (as the click
    session fits it), ``spacing`` its pixel size per axis after that resizing (None: unknown)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    normalize: Callable[[np.ndarray], np.ndarray]
    objects: list[int] = field(default_factory=list)  # its foreground labels
    spacing: tuple[float, ...] | None = None


@dataclass
class ClickProgress:
    phase: str  # "loading", "train", "validate", "done"
    step: int
    loss: float | None = None
    message: str = ""
    scores: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- data
def load_examples(pairs, card, max_side: int) -> Generator[int, None, list[Example]]:
    """Every pair as an :class:`Example` (yields the count loaded so far)."""
    from napari_lgms.clicks.encoding import resize_nearest
    from napari_lgms.inference.geometry import match_channels
    from napari_lgms.inference.normalize import fit_normalizer
    from napari_lgms.training.data import resize_image

    examples = []
    for count, pair in enumerate(pairs, start=1):
        raw = pair.load()
        image = match_channels(raw.image, card.image_channels).astype(np.float32)
        labels = np.asarray(raw.mask).astype(np.int32)
        if labels.max(initial=0) == 255:  # 0/255 masks: one object
            labels = (labels > 0).astype(np.int32)
        spacing = raw.spacing
        scale = max_side / max(labels.shape)
        if scale < 1:
            shape = tuple(max(1, round(s * scale)) for s in labels.shape)
            if spacing is not None:
                spacing = tuple(p * s / n for p, s, n in zip(spacing, labels.shape, shape))
            image = resize_image(image, shape)
            labels = resize_nearest(labels, shape).astype(np.int32)
        objects = [int(v) for v in np.unique(labels) if v > 0]
        examples.append(Example(pair.name, image, labels, fit_normalizer(image, card.normalization), objects,
                                spacing))
        yield count
    return examples


def training_view(example: Example, rng: np.random.Generator, first_view_share: float, prompt, patch,
                  model_spacing=None):
    """A random view of one random object of ``example`` (flipped per axis with probability 1/2):
    the session's first view (the whole image, or a window of ``patch`` pixels at ``model_spacing``
    around a point well inside the object), or a crop around the object like the session's zoom
    (expansion 1.2-2.2, centre jittered). Returns (normalised image view (C, *v) float32, truth
    view (*v) bool)."""
    from napari_lgms.clicks.encoding import first_box, first_window, zoom_box
    from napari_lgms.training.augment import random_intensity, random_noise

    objects = example.objects
    truth = example.labels == (objects[int(rng.integers(len(objects)))] if objects else 1)
    if rng.random() < first_view_share or not truth.any():
        around = first_clicks(truth, rng) if prompt.first_view == "window" else []  # "whole" needs no click
        box = first_box(truth.shape, around, prompt, first_window(patch, model_spacing, example.spacing))
    else:
        box = zoom_box(truth.shape, truth, [], rng.uniform(1.2, 2.2), prompt.min_crop)
        shift = [int(rng.uniform(-0.15, 0.15) * (b - a)) for a, b in box]
        box = tuple((min(max(a + s, 0), n - (b - a)), min(max(a + s, 0), n - (b - a)) + b - a)
                    for (a, b), s, n in zip(box, shift, truth.shape))
    region = tuple(slice(a, b) for a, b in box)
    image, truth = example.normalize(example.image[(slice(None),) + region]), truth[region]
    image = random_noise(random_intensity(image, rng, 0.8), rng, 0.5)
    flips = [axis for axis in range(truth.ndim) if rng.random() < 0.5]
    if flips:
        image, truth = np.flip(image, [a + 1 for a in flips]), np.flip(truth, flips)
    return np.ascontiguousarray(image), np.ascontiguousarray(truth)


def first_clicks(truth: np.ndarray, rng: np.random.Generator) -> list:
    """One or two positive clicks a user might start with: the most interior point or a random
    point well inside the object, sometimes a second one."""
    from napari_lgms.clicks.encoding import Click
    from napari_lgms.clicks.simulate import depth_in

    if not truth.any():
        return []
    depth = depth_in(truth)
    inside = np.argwhere(depth >= 0.5 * depth.max())
    count = 1 + int(rng.random() < 0.3)
    chosen = [np.unravel_index(int(np.argmax(depth)), truth.shape)] if rng.random() < 0.5 else []
    while len(chosen) < count:
        chosen.append(tuple(inside[rng.integers(len(inside))]))
    return [Click(tuple(float(v) for v in point), True) for point in chosen]


def distorted(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong mask a user might be shown for ``truth`` (a view resized to the patch): grown or
    shrunk by a few pixels (2 to 7.5 % of the patch's shortest side, at least 2), cut along a
    random plane through the object, shifted, or with a false blob added."""
    from scipy.ndimage import binary_dilation, binary_erosion, shift

    kind = rng.integers(4)
    if kind == 0 or not truth.any():
        change = binary_dilation if rng.random() < 0.5 else binary_erosion
        most = max(3, round(0.075 * min(truth.shape)))
        return change(truth, iterations=int(rng.integers(2, most)))
    coordinates = np.stack(np.meshgrid(*[np.arange(s) for s in truth.shape], indexing="ij"), -1)
    centre = np.argwhere(truth).mean(axis=0)
    extent = np.ptp(np.argwhere(truth), axis=0) + 1
    if kind == 1:  # part of the object missing
        normal = rng.normal(size=truth.ndim)
        offset = rng.uniform(-0.3, 0.3) * float(np.dot(np.abs(normal), extent))
        return truth & ((coordinates - centre) @ normal > offset)
    if kind == 2:  # in the wrong place
        return shift(truth, rng.uniform(-0.3, 0.3, truth.ndim) * extent, order=0)
    blob_centre = centre + rng.uniform(-1.0, 1.0, truth.ndim) * extent
    radii = rng.uniform(0.15, 0.5, truth.ndim) * extent
    blob = (((coordinates - blob_centre) / radii) ** 2).sum(-1) <= 1
    return truth | blob


# ----------------------------------------------------------------------------- the stage
def click_training_steps(settings: ClickTraining, should_stop: Callable[[], bool] | None = None,
                         ) -> Generator[ClickProgress, None, dict]:
    """Run one stage (see the module docstring), yielding progress; returns its record."""
    import torch

    from napari_lgms.clicks.network import promptable_from
    from napari_lgms.errors import InputError
    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training import data as data_mod
    from napari_lgms.training.checkpoint import load_checkpoint, save_checkpoint
    from napari_lgms.training.loop import Budget, cosine_fraction, optimise
    from napari_lgms.training.losses import bce_dice_loss
    from napari_lgms.zoo import load_model
    from napari_lgms.zoo.card import PromptSpec

    pairs, _, _ = data_mod.discover_examples(settings.data)
    split = data_mod.split_from_file(data_mod.expand_path(settings.split_file), [p.name for p in pairs])
    output = data_mod.expand_path(settings.output)
    output.mkdir(parents=True, exist_ok=True)
    name = settings.name or f"{settings.parent}-clicks"
    previous_stage = output / f"{name}.json"
    if settings.resume and previous_stage.is_file():
        loaded = load_model(previous_stage)
        network, card = loaded.network, loaded.card
        start_scores = dict(card.metrics.get("clicks", {}))
        for key in ("radius", "first_view"):
            if getattr(settings, key) not in (None, getattr(card.prompt, key)):
                raise InputError(f"{previous_stage} takes clicks with {key} {getattr(card.prompt, key)!r}, "
                                 f"not {getattr(settings, key)!r}: leave it out, or train in a new output folder")
    else:
        parent = load_model(settings.parent)
        chosen = {k: v for k, v in (("radius", settings.radius), ("first_view", settings.first_view)) if v is not None}
        network, card = promptable_from(parent.network, parent.card, PromptSpec(**chosen))
        card, start_scores = describe_click_model(card, parent.card, name), {}

    loading = load_examples(pairs, card, settings.max_side)
    while True:
        try:
            done = next(loading)
        except StopIteration as finished:
            examples = finished.value
            break
        if done % 50 == 0:
            yield ClickProgress("loading", 0, message=f"loaded {done}/{len(pairs)}")
    train = [examples[i] for i in split.train]
    validation = [examples[i] for i in selection_indices(split, settings.validation_images, settings.seed)]
    rng = np.random.default_rng(settings.seed)

    torch.manual_seed(settings.seed)
    grid = tuple(int(p) for p in card.input.patch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    checkpoint_path, spent, step = output / CHECKPOINT, 0.0, 0
    if settings.resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        spent, step = float(state["spent"]), int(state["step"])
        rng = np.random.default_rng([settings.seed, step])
        yield ClickProgress("loading", step, message=f"resumed at step {step} ({spent:.0f} s spent)")
    if not start_scores:
        yield ClickProgress("validate", step, message="scoring the start")
        start_scores = click_scores(network, card, validation)
        yield ClickProgress("validate", step, scores=start_scores, message="start")

    network.train()
    use_layout_for(network, torch.device("cpu"), training=True)
    batches = (simulated_batch(network, card, train, rng, settings, grid) for _ in iter(int, 1))
    budget = Budget(steps=None if settings.steps is None else settings.steps - step,
                    seconds=None if settings.seconds is None else settings.seconds - spent)
    done_before = Budget(settings.steps, settings.seconds).progress(step, spent)  # a resumed stage's schedule
    started, last_save = time.monotonic(), time.monotonic()

    def save_state():
        save_checkpoint(checkpoint_path, {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                                          "spent": spent + time.monotonic() - started, "step": step})

    def loss_of(batch):
        inputs, truth = batch
        return bce_dice_loss(network(inputs), truth)

    stepper = PromptScaledStepper(optimizer, prompt_weights(network, card), settings.prompt_lr_scale)
    loop = optimise(stepper, batches, loss_of, budget=budget, should_stop=should_stop,
                    lr_at=lambda progress: settings.lr * cosine_fraction(done_before + (1 - done_before) * progress),
                    report=lambda taken, loss, progress: (taken, loss))
    while True:
        try:
            _, loss = next(loop)
        except StopIteration as finished:
            stopped = finished.value[1]
            break
        step += 1
        yield ClickProgress("train", step, loss)
        if time.monotonic() - last_save > settings.checkpoint_seconds:
            save_state()
            last_save = time.monotonic()
    save_state()
    if stopped:
        yield ClickProgress("done", step, message="stopped: the same command resumes the stage")
        return {"name": name, "steps": step, "stopped": True}
    network.eval()
    yield ClickProgress("validate", step, message="scoring the stage")
    scores = click_scores(network, card, validation)
    record = {"name": name, "steps": step, "seconds": round(spent + time.monotonic() - started, 1),
              "start": start_scores, "end": scores, "settings": asdict(settings),
              "validation": f"{len(validation)} images of {split.describe()}"}
    improved = not start_scores or stage_rank(scores) < stage_rank(start_scores)
    record["saved"], record["stopped"] = improved, False
    if improved:
        _save(network, card, scores, record, output)
    checkpoint_path.unlink(missing_ok=True)  # the next stage starts from the saved model
    with open(output / LOG, "a") as log:
        log.write(json.dumps(record) + "\n")
    yield ClickProgress("done", step, scores=scores, message="saved" if improved else "not better: not saved")
    return record


def selection_indices(split, count: int, seed: int) -> list[int]:
    """The validation examples a stage is scored and kept on: ``count`` of the split's, seeded
    (the benchmark leaves them out)."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(split.val)[:count]]


def stage_rank(scores: dict) -> tuple:
    """Which of two stages is better (smaller): fewer clicks to 85 %, then to 90 %, then a higher
    IoU after 5 clicks (objects that never reach 85 % in 20 clicks still tell stages apart)."""
    return scores["noc85"], scores["noc90"], -scores["iou@5"]


def prompt_weights(network, card) -> list[tuple]:
    """(parameter, index of its first prompt channel) for each weight that reads the prompt channels."""
    from napari_lgms.models.registry import create_model

    plain = create_model(card.architecture, **dict(card.arguments, in_channels=card.image_channels)).state_dict()
    return [(parameter, plain[key].shape[1]) for key, parameter in network.named_parameters()
            if key in plain and plain[key].shape != parameter.shape]


class PromptScaledStepper(Stepper):
    """A :class:`Stepper` whose update of the prompt channels' weights is ``scale`` times larger:
    they start at zero, and at the rate of the pretrained weights clicks would barely count."""

    def __init__(self, optimizer, weights: list[tuple], scale: float, grad_clip: float = 1.0):
        super().__init__(optimizer, grad_clip=grad_clip)
        self.weights, self.scale = weights, float(scale)

    def __call__(self, loss) -> float:
        import torch

        before = [parameter.detach()[:, start:].clone() for parameter, start in self.weights]
        value = super().__call__(loss)
        with torch.no_grad():
            for (parameter, start), old in zip(self.weights, before):
                part = parameter[:, start:]
                part.copy_(old + self.scale * (part - old))
        return value


def simulated_batch(network, card, examples, rng, settings: ClickTraining, grid):
    """One training batch after simulated clicking: (inputs (B, C + P, *grid), truth (B, *grid))."""
    import torch

    from napari_lgms.clicks.encoding import prompt_maps, resize_nearest, whole_box
    from napari_lgms.clicks.simulate import next_click
    from napari_lgms.training.data import resize_image

    prompt, box = card.prompt, whole_box(grid)
    views, truths, clicks, shown = [], [], [], []
    for index in rng.integers(len(examples), size=settings.batch_size):
        image, truth = training_view(examples[index], rng, settings.first_view_share, prompt, grid,
                                     card.input.spacing)
        truth = resize_nearest(truth, grid) > 0.5
        views.append(resize_image(image, grid))
        truths.append(truth)
        start = rng.random()
        if start < 0.4:  # nothing shown yet: the user's first clicks
            clicks.append(first_clicks(truth, rng))
            shown.append(np.zeros(grid, bool))
        else:  # a roughly right mask, or the network's own mask without clicks (None until predicted)
            clicks.append([])
            shown.append(distorted(truth, rng) if start < 0.7 else None)

    def inputs_now():
        return torch.from_numpy(np.stack([
            np.concatenate([view, prompt_maps(box, grid, c, s, prompt.channels, prompt.radius)])
            for view, c, s in zip(views, clicks, shown)]))

    def predict():
        network.eval()
        with torch.no_grad():
            predicted = (network(inputs_now())[:, 0] > 0).numpy()
        network.train()
        return predicted

    def click_on_errors():
        for i, truth in enumerate(truths):
            click = next_click(truth, shown[i])
            if click is not None:
                clicks[i].append(click)

    if any(s is None for s in shown):
        predicted = predict()
        shown = [predicted[i] if s is None else s for i, s in enumerate(shown)]
    for i, truth in enumerate(truths):
        if not clicks[i] and (click := next_click(truth, shown[i])) is not None:
            clicks[i].append(click)
    for _ in range(int(rng.integers(0, settings.max_iterations + 1))):
        shown = list(predict())
        click_on_errors()
    return inputs_now(), torch.from_numpy(np.stack(truths).astype(np.float32))


def click_scores(network, card, examples) -> dict:
    """NoC@85/90 and IoU after 1/3/5 clicks of simulated users on ``examples``, through the session."""
    from napari_lgms.clicks.session import ClickSession
    from napari_lgms.clicks.simulate import simulate, summarize_traces

    model = SimpleNamespace(card=card, network=network)
    traces = []
    for example in examples:
        one_channel = example.image.shape[0] == 1
        image = example.image[0] if one_channel else example.image
        for label in example.objects:
            session = ClickSession(image, model, channel_axis=None if one_channel else 0,
                                   spacing=example.spacing)
            traces.append(simulate(example.labels == label, lambda c, s=session: s.add_click(c.position, c.positive)))
    return {k: round(v, 4) for k, v in summarize_traces(traces).items()}


def describe_click_model(card, parent_card, name: str):
    """The card of a new click model (``card``: its parent's, widened by ``promptable_from``): its
    own name, description, lineage and training record (the parent's data and split, the stages
    that made the parent); no metrics until a stage has scored it."""
    from napari_lgms.training.cards import model_card
    from napari_lgms.training.engine import earlier_stages

    keep = ("data", "data_source", "terms", "examples", "split")
    return model_card(
        name=name, architecture=card.architecture, arguments=card.arguments, input_spec=card.input,
        normalization=card.normalization, class_names=card.class_names, output_spec=card.output,
        version="1", description=(f"{parent_card.description} Takes clicks: positive and negative points and "
                                  "the current mask are extra inputs (napari_lgms.clicks.ClickSession).").strip(),
        training={**{k: parent_card.training[k] for k in keep if k in parent_card.training},
                  "initialised_from": parent_card.name, "earlier_stages": earlier_stages(parent_card)},
        metrics={}, licence=parent_card.licence, citation=parent_card.citation,
        intended_use=parent_card.intended_use,
        lineage={"parent": parent_card.name, "parent_sha256": parent_card.weights.get("sha256")},
        prompt=card.prompt)


def _save(network, card, scores: dict, record: dict, output: Path) -> Path:
    from napari_lgms.zoo import save_model

    card.metrics = {"split": f"validation: {record['validation']}", "selected_by": "noc85", "clicks": scores}
    training = dict(card.training)
    training["click_stages"] = [*training.get("click_stages", []),
                                {k: record[k] for k in ("steps", "seconds", "start", "end", "validation")}
                                | {k: record["settings"][k] for k in ("command", "batch_size", "lr", "prompt_lr_scale",
                                                                      "first_view_share", "max_iterations", "seed",
                                                                      "validation_images")}]
    card.training = training
    return save_model(network, card, output)


def train_clicks(settings: ClickTraining, on_progress: Callable[[ClickProgress], None] | None = None) -> dict:
    """Run :func:`click_training_steps` to the end; returns the stage's record."""
    from napari_lgms._generators import run_to_end

    return run_to_end(click_training_steps(settings), on_progress)
