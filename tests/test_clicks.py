"""Click models: promptable networks, the prompt encoding, the click session and simulated users."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_lgms.clicks import Click, ClickSession
from napari_lgms.clicks.encoding import prompt_maps, whole_box, zoom_box
from napari_lgms.clicks.network import promptable_from
from napari_lgms.clicks.simulate import next_click, simulate, summarize_traces
from napari_lgms.errors import InputError
from napari_lgms.zoo.card import PromptSpec


def _card_for(name: str, in_channels: int, spatial_dims: int = 2):
    from napari_lgms.models.registry import get_model_config
    from napari_lgms.zoo import ModelCard
    from napari_lgms.zoo.card import InputSpec

    arguments = dict(get_model_config(name).arguments, in_channels=in_channels, num_classes=1)
    patch = [32] * spatial_dims
    return ModelCard(name=f"{name}-test", architecture=get_model_config(name).architecture, arguments=arguments,
                     input=InputSpec.for_network(patch, 32, "resize"),
                     normalization={"kind": "zscore"}, class_names=["background", "object"])


@pytest.mark.parametrize("name, channels, dims", [("lgmsnet", 3, 2), ("esdmrnet", 1, 2), ("lgmsnet3d", 1, 3)])
def test_a_promptable_network_without_clicks_is_its_parent(name, channels, dims):
    from napari_lgms.models.registry import create_model

    torch.manual_seed(0)
    parent_card = _card_for(name, channels, dims)
    parent = create_model(name, in_channels=channels, num_classes=1).eval()
    network, card = promptable_from(parent, parent_card)
    network.eval()
    assert card.in_channels == channels + 3 and card.image_channels == channels
    image = torch.randn(1, channels, *[32] * dims)
    prompts = (torch.rand(1, 3, *[32] * dims) > 0.5).float()
    with torch.no_grad():
        expected = parent(image)
        assert torch.equal(network(torch.cat([image, torch.zeros_like(prompts)], 1)), expected)
        # the prompt weights start at zero: even clicks change nothing before training
        assert torch.equal(network(torch.cat([image, prompts], 1)), expected)


def test_a_click_model_is_not_made_twice():
    from napari_lgms.models.registry import create_model

    parent_card = _card_for("esdmrnet", 1)
    network, card = promptable_from(create_model("esdmrnet", in_channels=1, num_classes=1), parent_card)
    with pytest.raises(InputError, match="already takes clicks"):
        promptable_from(network, card)


def test_click_model_cards_round_trip_and_bad_prompts_are_refused(tmp_path):
    from napari_lgms.models.registry import create_model
    from napari_lgms.zoo import ModelCard, load_model, save_model
    from napari_lgms.zoo.schema import CardError

    parent_card = _card_for("esdmrnet", 1)
    network, card = promptable_from(create_model("esdmrnet", in_channels=1, num_classes=1), parent_card)
    card.name = "esdmrnet-test-clicks"
    loaded = load_model(save_model(network, card, tmp_path))
    assert loaded.card.prompt == PromptSpec() and loaded.card.image_channels == 1
    assert "prompt" not in parent_card.to_dict()  # cards without clicks keep their JSON
    data = card.to_dict()
    for bad, match in (({"channels": ["positive", "elsewhere"]}, "prompt.channels"),
                       ({"radius": -1}, "prompt.radius"), ({"expansion": "big"}, "prompt.expansion"),
                       ({"first_view": "half"}, "prompt.first_view")):
        with pytest.raises(CardError, match=match):
            ModelCard.from_dict({**data, "prompt": {**data["prompt"], **bad}})
    with pytest.raises(CardError, match="in_channels"):
        ModelCard.from_dict({**data, "arguments": {**data["arguments"], "in_channels": 3}})


def test_segment_with_a_click_model_and_no_clicks_gives_its_parents_mask(tiny_model):
    from napari_lgms.inference.engine import segment

    parent = tiny_model(in_channels=1)
    network, card = promptable_from(parent.network, parent.card)
    image = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    clicks_model = SimpleNamespace(card=card, network=network.eval())
    assert np.array_equal(segment(image, clicks_model).labels, segment(image, parent).labels)


# ----------------------------------------------------------------------------- encoding
def test_the_zoomed_view_holds_the_mask_and_the_clicks_inside_the_image():
    mask = np.zeros((200, 300), bool)
    mask[50:70, 100:140] = True
    box = zoom_box(mask.shape, mask, [Click((90.0, 150.0))], expansion=1.4, min_crop=0.1)
    (y0, y1), (x0, x1) = box
    assert y0 <= 50 and y1 >= 91 and x0 <= 100 and x1 >= 151
    assert (y1 - y0) == pytest.approx(1.4 * 41, abs=2) and (x1 - x0) == pytest.approx(1.4 * 52, abs=2)
    corner = zoom_box(mask.shape, None, [Click((1.0, 298.0))], expansion=1.4, min_crop=0.25)
    assert corner == ((0, 50), (225, 300))  # the minimum crop, moved inside the image
    assert zoom_box(mask.shape, None, [], 1.4, 0.25) == whole_box(mask.shape)


def test_prompt_maps_draw_clicks_where_they_are_and_the_previous_mask():
    previous = np.zeros((100, 100), bool)
    previous[:50] = True
    box = ((0, 100), (0, 100))
    maps = prompt_maps(box, (50, 50), [Click((20.0, 80.0)), Click((70.0, 10.0), False)], previous,
                       ["positive", "negative", "previous"], radius=3)
    positive, negative, shown = maps
    assert positive[10, 40] == 1 and positive.sum() == pytest.approx(np.pi * 9, rel=0.3)
    assert negative[35, 5] == 1 and negative[10, 40] == 0
    assert shown[:25].all() and not shown[25:].any()
    # a click outside the view is not drawn
    outside = prompt_maps(((0, 40), (0, 40)), (20, 20), [Click((80.0, 80.0))], None, ["positive"], 2)
    assert not outside.any()


# ----------------------------------------------------------------------------- simulated users
def test_the_simulated_user_clicks_the_middle_then_the_largest_error():
    truth = np.zeros((60, 60), bool)
    truth[10:50, 10:30] = True
    first = next_click(truth, None)
    assert first.positive and 25 <= first.position[0] <= 34 and 18 <= first.position[1] <= 21
    shown = truth.copy()
    shown[10:50, 30:56] = True  # a large false positive
    assert not next_click(truth, shown).positive
    shown = truth.copy()
    shown[10:50, 10:16] = False  # a miss
    assert next_click(truth, shown).positive
    assert next_click(truth, truth) is None


def test_noc_and_iou_after_clicks_from_a_scripted_session():
    truth = np.zeros((40, 40), bool)
    truth[5:35, 5:35] = True
    left = truth.copy()
    left[:, 20:] = False
    steps = iter([left, truth & ~np.eye(40, dtype=bool), truth])

    trace = simulate(truth, lambda click: next(steps, truth), limit=20, min_clicks=3)
    assert trace.ious[0] == pytest.approx(0.5, abs=0.02) and trace.ious[-1] == 1.0
    assert trace.clicks_to(0.85) == 2 and trace.clicks_to(0.99) == 3
    summary = summarize_traces([trace])
    assert summary["noc85"] == 2 and summary["iou@1"] == pytest.approx(0.5, abs=0.02)
    assert summary["iou@5"] == 1.0  # the session had stopped: the last IoU holds
    never = simulate(truth, lambda click: np.zeros_like(truth), limit=4)
    assert never.clicks_to(0.85, limit=4) == 4 and len(never.ious) == 4


# ----------------------------------------------------------------------------- the session
class _EchoNetwork(torch.nn.Module):
    """Foreground where a positive click or the previous mask is, unless a negative click is there."""

    size_divisor = 1

    def forward(self, x):
        positive, negative, previous = x[:, -3], x[:, -2], x[:, -1]
        return 8 * (positive + previous - 2 * negative - 0.5)[:, None]


def _echo_session(image_shape=(100, 120), first_view="whole", model_spacing=None, **options):
    from napari_lgms.zoo import ModelCard
    from napari_lgms.zoo.card import InputSpec

    card = ModelCard(name="echo", architecture="echo", arguments={"in_channels": 4, "num_classes": 1},
                     input=InputSpec.for_network([32, 32], 1, "resize", spacing=model_spacing),
                     normalization={"kind": "zscore"},
                     class_names=["background", "object"],
                     prompt=PromptSpec(radius=3, min_crop=0.3, first_view=first_view))
    image = np.random.default_rng(1).random(image_shape).astype(np.float32)
    return ClickSession(image, SimpleNamespace(card=card, network=_EchoNetwork()), **options)


def test_a_positive_click_grows_a_region_and_a_negative_click_removes_it():
    session = _echo_session()
    first = session.add_click((30, 40))
    assert first[30, 40] and not first[80, 100] and first.sum() < 2000
    second = session.add_click((70, 90))
    assert second[70, 90] and second[30, 40]  # the first region is kept
    third = session.add_click((30, 40), positive=False)
    assert not third[30, 40] and third[70, 90]
    assert [c.positive for c in session.clicks] == [True, True, False]


def test_undo_restores_the_mask_before_the_last_click():
    session = _echo_session()
    masks = [session.add_click((30, 40)).copy(), session.add_click((60, 60)).copy()]
    assert np.array_equal(session.undo(), masks[0])
    assert np.array_equal(session.undo(), np.zeros((100, 120), bool))
    assert np.array_equal(session.undo(), np.zeros((100, 120), bool)) and session.clicks == []


def test_the_first_click_sees_the_whole_image_and_later_ones_a_zoomed_view():
    session = _echo_session()
    session.add_click((30, 40))
    assert session.view() == whole_box((100, 120))
    session.add_click((35, 45))
    (y0, y1), (x0, x1) = session.view()
    assert 0 <= y0 < 30 < 35 < y1 < 100 and 0 <= x0 < 40 < 45 < x1 < 120


def test_a_window_first_view_is_a_patch_at_the_images_resolution_around_the_click():
    session = _echo_session(first_view="window")
    mask = session.add_click((30, 40))
    assert session.view() == ((14, 46), (24, 56)) and mask[30, 40]
    assert not mask[:14].any() and not mask[:, 56:].any()  # nothing predicted outside the window
    session.add_click((35, 70))
    (y0, y1), (x0, x1) = session.view()  # then the zoomed view, as with a whole first view
    assert y0 < 30 < 35 < y1 and x0 < 40 < 70 < x1
    corner = _echo_session(first_view="window")
    corner.add_click((2, 118))
    assert corner.view() == ((0, 32), (88, 120))  # moved, not cut, to stay inside the image
    small = _echo_session((20, 120), first_view="window")
    small.add_click((10, 60))
    assert small.view() == ((0, 20), (44, 76))  # an axis shorter than the patch is seen whole


def test_a_window_first_view_covers_the_models_patch_in_millimetres():
    half_mm = _echo_session(first_view="window", model_spacing=[1.0, 1.0], spacing=(0.5, 0.25))
    half_mm.add_click((50, 60))
    assert half_mm.view() == ((18, 82), (0, 120))  # 32 mm: 64 rows of 0.5 mm; 128 columns > the image's 120
    for options in ({"model_spacing": [1.0, 1.0]}, {"spacing": (0.5, 0.5)}):  # one spacing unknown: the patch
        session = _echo_session(first_view="window", **options)
        session.add_click((50, 60))
        assert session.view() == ((34, 66), (44, 76))
    with pytest.raises(InputError, match="spacing"):
        _echo_session(spacing=(0.5, -1.0))


def test_click_training_shows_the_first_view_the_session_will_show():
    from napari_lgms.training.clicks import Example, training_view

    labels = np.zeros((60, 80), np.int32)
    labels[20:30, 50:62] = 1
    example = Example("one", np.random.default_rng(0).random((1, 60, 80), np.float32), labels, lambda x: x, [1])
    rng = np.random.default_rng(0)
    for first_view, shape in (("window", (16, 16)), ("whole", (60, 80))):
        image, truth = training_view(example, rng, 1.0, PromptSpec(first_view=first_view), (16, 16))
        assert image.shape == (1, *shape) and truth.shape == shape and truth.any()
    example.spacing = (0.5, 0.5)  # a window of 16 pixels at 1 mm is 32 pixels of this image
    image, truth = training_view(example, rng, 1.0, PromptSpec(first_view="window"), (16, 16), (1.0, 1.0))
    assert image.shape == (1, 32, 32) and truth.any()


def test_a_session_can_start_from_a_mask():
    start = np.zeros((100, 120), bool)
    start[10:20, 10:20] = True
    session = _echo_session(mask=start)
    mask = session.add_click((15, 15), positive=False)
    assert not mask[15, 15] and mask[10, 10]


def test_bad_clicks_and_models_without_prompts_get_one_line_errors(tiny_model):
    session = _echo_session()
    with pytest.raises(InputError, match="outside the image"):
        session.add_click((100, 5))
    with pytest.raises(InputError, match="outside the image"):
        session.add_click((5,))
    with pytest.raises(InputError, match="one number per spatial axis"):
        session.add_click(("a", 3))
    with pytest.raises(InputError, match="does not take clicks"):
        ClickSession(np.zeros((20, 20)), tiny_model())
    with pytest.raises(InputError, match="mask has shape"):
        _echo_session(mask=np.zeros((5, 5), bool))


def test_clicks_that_arrive_together_are_predicted_once():
    session = _echo_session()
    mask = session.add_clicks([Click((30, 40)), Click((70, 90)), Click((30, 40), False)])
    assert mask[70, 90] and not mask[30, 40] and len(session.clicks) == 3
    assert not session.undo().any() and len(session.clicks) == 2  # back to before the three


# ----------------------------------------------------------------------------- training
def _generated_folder(root, count=6):
    from napari_lgms.io import write_mask
    from napari_lgms.samples import make_ultrasound

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        image, truth = make_ultrasound((96, 96), seed=index)
        write_mask(image, root / "images" / f"case{index}.png")
        write_mask((truth > 0).astype(np.uint8) * 255, root / "masks" / f"case{index}.png")
    (root / "split.json").write_text('{"val": ["case0", "case1"]}')


def test_a_click_training_stage_resumes_after_a_stop_and_saves_only_an_improvement(tmp_path):
    from napari_lgms._generators import run_to_end
    from napari_lgms.training.clicks import CHECKPOINT, ClickTraining, click_training_steps, stage_rank

    _generated_folder(tmp_path / "data")
    output = tmp_path / "run"
    settings = ClickTraining("lgmsnet-synthetic-us", str(tmp_path / "data"), str(tmp_path / "data" / "split.json"),
                             str(output), seconds=None, steps=3, batch_size=2, validation_images=2)
    taken = []
    stopped = run_to_end(click_training_steps(settings, should_stop=lambda: len(taken) >= 1),
                         on_progress=lambda p: taken.append(p) if p.phase == "train" else None)
    assert stopped["stopped"] and stopped["steps"] == 1 and (output / CHECKPOINT).is_file()
    assert not (output / "lgmsnet-synthetic-us-clicks.json").exists()

    record = run_to_end(click_training_steps(settings))
    assert record["steps"] == 3 and not record["stopped"] and not (output / CHECKPOINT).exists()
    assert record["start"]["images"] == 2 and set(record["end"]) >= {"noc85", "noc90", "iou@1", "iou@3", "iou@5"}
    assert record["saved"] == (stage_rank(record["end"]) < stage_rank(record["start"]))
    assert (output / "lgmsnet-synthetic-us-clicks.json").exists() == record["saved"]


def test_a_later_stage_keeps_the_click_encoding_of_the_folders_model(tmp_path):
    from napari_lgms.training.clicks import ClickTraining, click_training_steps, describe_click_model
    from napari_lgms.zoo import load_model, save_model

    _generated_folder(tmp_path / "data")
    parent = load_model("lgmsnet-synthetic-us")
    network, card = promptable_from(parent.network, parent.card, PromptSpec(radius=2.5, first_view="window"))
    save_model(network, describe_click_model(card, parent.card, "lgmsnet-synthetic-us-clicks"), tmp_path / "run")
    for change in ({"radius": 5.0}, {"first_view": "whole"}):
        settings = ClickTraining("lgmsnet-synthetic-us", str(tmp_path / "data"), str(tmp_path / "data" / "split.json"),
                                 str(tmp_path / "run"), seconds=None, steps=1, **change)
        with pytest.raises(InputError, match=f"{next(iter(change))} .* leave it out"):
            next(click_training_steps(settings))


def test_a_new_click_model_card_says_where_it_comes_from():
    from napari_lgms.training.clicks import describe_click_model
    from napari_lgms.zoo import load_model

    parent = load_model("lgmsnet-synthetic-us")
    _, card = promptable_from(parent.network, parent.card)
    card = describe_click_model(card, parent.card, "lgmsnet-synthetic-us-clicks")
    assert card.lineage["parent"] == "lgmsnet-synthetic-us" and card.prompt == PromptSpec()
    assert card.training["initialised_from"] == "lgmsnet-synthetic-us" and card.training["earlier_stages"]
    assert card.metrics == {} and "Takes clicks" in card.description
