"""Training engine: data discovery, splits, augmentation, losses, config, train loop, resume, CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from tests.training_helpers import ellipse_phantom, tiny_config, write_2d_dataset, write_msd_dataset  # noqa: E402


@pytest.fixture
def tiny_arch(tiny_model):
    tiny_model()  # registers "tiny_test_net"
    return "tiny_test_net"


# ----------------------------------------------------------------------------- data
def test_folder_pairs_skip_hidden_and_pair_suffixed_masks(tmp_path):
    from napari_lgms.training.data import discover_examples

    root = write_2d_dataset(tmp_path / "d", count=3, mask_suffix="_mask.png")
    examples, kind, unpaired = discover_examples(str(root))
    assert kind == "folders" and unpaired == []
    assert [e.name for e in examples] == ["case00", "case01", "case02"]
    raw = examples[0].load()
    assert raw.image.shape == (1, 32, 32) and raw.mask.shape == (32, 32)


def test_msd_layout_is_found_and_prepared_as_3d(tmp_path, tiny_arch):
    from napari_lgms.training.data import PrepareSpec, discover_examples, prepare

    root = write_msd_dataset(tmp_path / "Task04", count=2)
    examples, kind, _ = discover_examples(str(root))
    assert kind == "msd" and len(examples) == 2
    spec = PrepareSpec(1, 3, 3, (16, 16, 16), "patch", {"kind": "zscore"})
    sample = prepare(examples[0].load(), spec, examples[0].name)
    assert sample.image.shape == (1, 16, 16, 16) and sample.image.dtype == np.float32
    assert set(np.unique(sample.mask)) <= {0, 1, 2}
    assert abs(float(sample.image.mean())) < 1e-3  # normalised as inference normalises


def test_patch_mode_resamples_to_the_models_spacing_as_inference_does():
    import torch

    from napari_lgms.inference.geometry import resize
    from napari_lgms.inference.normalize import normalize
    from napari_lgms.training.data import PrepareSpec, RawExample, prepare

    rng = np.random.default_rng(3)
    volume = rng.normal(size=(1, 8, 20, 20)).astype(np.float32)
    mask = np.zeros((8, 20, 20), np.uint8)
    mask[2:6, 5:15, 5:15] = 2
    region = mask > 0
    spec = PrepareSpec(1, 3, 3, (16, 16, 16), "patch", {"kind": "zscore"}, spacing=(1.0, 1.0, 1.0))
    sample = prepare(RawExample(volume, mask, region, (2.0, 0.5, 0.5)), spec)
    assert sample.image.shape == (1, 16, 10, 10) and sample.mask.shape == sample.region.shape == (16, 10, 10)
    assert sample.spacing == (1.0, 1.0, 1.0) and sample.original_shape == (8, 20, 20)
    expected = resize(torch.from_numpy(normalize(volume, spec.normalization))[None], (16, 10, 10))[0].numpy()
    np.testing.assert_allclose(sample.image, expected, rtol=1e-5, atol=1e-5)
    assert set(np.unique(sample.mask)) == {0, 2} and sample.region[8, 5, 5]
    for spacing in (None, (1.0, 1.0, 1.0)):  # unknown, or already the model's: as it is
        kept = prepare(RawExample(volume, mask, None, spacing), spec)
        assert kept.image.shape == (1, 8, 20, 20) and kept.spacing == spacing


def test_prepare_resizes_adapts_channels_and_binarises():
    from napari_lgms.training.data import PrepareSpec, RawExample, prepare

    rng = np.random.default_rng(1)
    image, mask = ellipse_phantom(rng, (40, 48))
    raw = RawExample(np.stack([image] * 3), mask * 255)
    sample = prepare(raw, PrepareSpec(1, 1, 2, (32, 32), "resize", {"kind": "range", "max_value": 255}))
    assert sample.image.shape == (1, 32, 32)
    assert set(np.unique(sample.mask)) == {0, 1}
    assert sample.focus is not None and np.all(sample.mask.flat[sample.focus] == 1)


def test_training_inputs_match_what_inference_feeds_the_network():
    """Same channel mapping (RGB -> BT.601 luminance), normalisation and resampling as the engine."""
    import torch

    from napari_lgms.inference.geometry import match_channels, resize
    from napari_lgms.inference.normalize import normalize
    from napari_lgms.training.data import PrepareSpec, RawExample, prepare

    rgb = np.random.default_rng(2).integers(0, 255, (3, 40, 48)).astype(np.uint8)
    spec = PrepareSpec(1, 1, 2, (32, 32), "resize", {"kind": "percentile_zscore"})
    sample = prepare(RawExample(rgb, np.zeros((40, 48), np.uint8)), spec)
    engine = normalize(match_channels(rgb, 1), spec.normalization)
    expected = resize(torch.from_numpy(engine)[None], (32, 32))[0].numpy()
    np.testing.assert_allclose(sample.image, expected, rtol=1e-5, atol=1e-5)


def test_near_duplicates_never_straddle_the_split():
    from napari_lgms.training.data import duplicate_groups, split_examples, thumbnail

    rng = np.random.default_rng(3)
    originals = [ellipse_phantom(rng, (64, 64))[0] for _ in range(10)]
    images = []
    for original in originals:  # each image twice: itself and a slightly noisy copy
        images.append(original)
        images.append(original + rng.normal(0, 2, original.shape))
    groups = duplicate_groups([thumbnail(im[None]) for im in images], min_correlation=0.95)
    assert all(groups[2 * i] == groups[2 * i + 1] for i in range(10))
    assert len(set(groups)) == 10  # similar-looking phantoms of different shapes stay apart
    for seed in range(5):
        split = split_examples(len(images), 0.3, seed, groups)
        val = set(split.val)
        assert all((2 * i in val) == (2 * i + 1 in val) for i in range(10))
        assert val and len(split.train) + len(split.val) == 20
    assert split_examples(20, 0.3, 7, groups).val == split_examples(20, 0.3, 7, groups).val


def test_a_big_duplicate_group_trains_instead_of_swallowing_validation():
    from napari_lgms.training.data import split_examples

    groups = [0] * 60 + list(range(1, 41))  # one group of 60 near-identical frames, 40 singletons
    for seed in range(10):
        split = split_examples(100, 0.2, seed, groups)
        assert 20 <= len(split.val) <= 22
        assert not set(range(60)) & set(split.val)


def test_a_recorded_split_is_reused_by_name(tmp_path):
    import json

    from napari_lgms.errors import InputError
    from napari_lgms.training.data import split_from_file

    record = {"description": "drawn earlier", "seed": 41, "val_fraction": 0.4, "grouped_near_duplicates": True,
              "groups": 4, "train": ["a", "c", "e"], "val": ["d", "b"]}
    (tmp_path / "split.json").write_text(json.dumps(record))
    split = split_from_file(tmp_path / "split.json", ["a", "b", "c", "d", "e", "f"])
    assert split.val == [1, 3] and split.train == [0, 2, 4, 5]  # "f" is new: it trains
    assert "recorded split" in split.describe() and split.seed == 41
    with pytest.raises(InputError, match="not in the data"):
        split_from_file(tmp_path / "split.json", ["a", "c", "d"])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="split_file .*not a readable split.json"):
        split_from_file(tmp_path / "broken.json", ["a"])


def test_few_examples_validate_on_training_and_say_so():
    from napari_lgms.training.data import split_examples

    split = split_examples(2, 0.2, 0)
    assert split.validated_on_training and split.train == split.val == [0, 1]
    assert "too few" in split.describe()


# ----------------------------------------------------------------------------- augmentation, losses
def test_augmentation_keeps_image_and_mask_aligned():
    from napari_lgms.training.augment import AugmentParams, augment

    rng = np.random.default_rng(0)
    image, mask = ellipse_phantom(rng, (32, 32))
    params = AugmentParams(rot90_p=1, flip_p=1, intensity_p=0, scale_p=1, elastic_p=1)
    for seed in range(5):
        out_image, out_mask = augment(image[None].astype(np.float32), mask, np.random.default_rng(seed), params)
        assert out_image.shape == (1, 32, 32) and out_mask.shape == (32, 32)
        inside = out_image[0][out_mask > 0].mean()
        outside = out_image[0][out_mask == 0].mean()
        assert inside - outside > 50  # the bright ellipse moved with its mask
    a = augment(image[None].astype(np.float32), mask, np.random.default_rng(9), params)
    b = augment(image[None].astype(np.float32), mask, np.random.default_rng(9), params)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_zoom_out_pads_labels_like_the_image_at_a_foreground_border():
    from napari_lgms.training.augment import AugmentParams, random_resample

    mask = np.zeros((32, 32), np.uint8)
    mask[:, :10] = 1  # foreground touching the left border
    image = mask[None].astype(np.float32)
    for params in (AugmentParams(scale_p=1.0, scale_range=(0.6, 0.6)), AugmentParams(elastic_p=1.0, elastic_alpha=0.3)):
        for seed in range(3):
            out_image, out_mask = random_resample(image, mask, np.random.default_rng(seed), params)
            assert np.array_equal(out_image[0] > 0.5, out_mask > 0)


def test_patch_sampling_prefers_focus_and_pads_small_images():
    from napari_lgms.training.augment import sample_patch

    image = np.zeros((1, 64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[60:, 60:] = 1
    focus = np.flatnonzero(mask)
    rng = np.random.default_rng(0)
    hits = sum(sample_patch(image, mask, (16, 16), rng, focus, bias=1.0)[1].any() for _ in range(20))
    assert hits == 20
    small_image, small_mask = sample_patch(image[:, :8, :8], mask[:8, :8], (16, 16), rng)
    assert small_image.shape == (1, 16, 16) and small_mask.shape == (16, 16)


def test_losses_match_the_recipe():
    from napari_lgms.training.losses import bce_dice_loss, ce_dice_loss

    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    perfect = (target.float() * 40 - 20)[:, None]
    assert float(bce_dice_loss(perfect, target)) < 1e-3
    zero = torch.zeros(2, 1, 8, 8)
    expected_bce = float(torch.nn.functional.binary_cross_entropy_with_logits(zero[:, 0], target.float()))
    dice = (2 * 0.5 * 16 + 1e-5) / (0.5 * 64 + 16 + 1e-5)
    assert float(bce_dice_loss(zero, target)) == pytest.approx(0.5 * expected_bce + 1 - dice, rel=1e-5)
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 30
    assert float(ce_dice_loss(logits, target)) < 0.51  # class 2 absent: its soft Dice is ~1 by smoothing


def test_sliding_window_validation_blends_windows_back_into_place():
    import torch

    from napari_lgms.training.evaluate import evaluate_sums, sliding_window_logits

    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 3, 1)  # a voxel's logits do not depend on the window it sits in
    volume = torch.randn(1, 1, 20, 13, 9)
    whole = pointwise(volume)
    blended = sliding_window_logits(pointwise, volume, (8, 8, 8), batch_size=3)
    torch.testing.assert_close(blended, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sliding_window_logits(pointwise, volume, (32, 32, 32)), whole)

    from napari_lgms.training.data import Sample

    mask = whole[0].argmax(0).numpy()
    sample = Sample("v", volume[0].numpy(), mask, None)
    scores = evaluate_sums(pointwise, [sample], "cpu", 3, window=(8, 8, 8))
    assert scores["count"] == 1 and scores["dice"] == pytest.approx(1.0)


def test_the_card_lets_whole_image_models_resize_images_as_large_as_their_training_images(tiny_arch):
    from napari_lgms.models import create_model
    from napari_lgms.training.config import TrainConfig
    from napari_lgms.training.data import Sample
    from napari_lgms.training.engine import card_input, largest_resize_factor

    samples = [Sample(name, np.zeros((1, 32, 32)), np.zeros((32, 32)), None, None, shape)
               for name, shape in (("a", (100, 50)), ("b", (300, 90)), ("c", ()))]
    factor = largest_resize_factor(samples, (32, 32))
    assert factor == pytest.approx(300 / 32)
    network = create_model("lgmsnet", in_channels=1)
    contract = card_input(TrainConfig(data="x", patch_size=[32, 32]), network, None, factor)
    assert contract.max_resize_factor == round(1.5 * 300 / 32, 2)
    patches = card_input(TrainConfig(data="x", patch_size=[32, 32], input_mode="patch"), network, None, factor)
    assert patches.max_resize_factor is None


# ----------------------------------------------------------------------------- config
def test_yaml_then_flags_override(tmp_path):
    import argparse

    from napari_lgms.training.config import add_config_flags, config_from_args

    path = tmp_path / "c.yaml"
    path.write_text("name: a\nepochs: 7\nlr: 0.5\npatch_size: [64, 64]\nmodel_args: {num_classes: 3}\ndata: x\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser)
    args = parser.parse_args(["--config", str(path), "--epochs", "3", "--patch-size", "32", "32", "--no-cache"])
    config = config_from_args(args)
    assert (config.name, config.epochs, config.lr, config.patch_size, config.cache) == ("a", 3, 0.5, [32, 32], False)
    assert config.model_args == {"num_classes": 3}
    from napari_lgms.errors import InputError

    path.write_text("epoch: 3\n")
    with pytest.raises(InputError, match="unknown setting"):
        config_from_args(parser.parse_args(["--config", str(path)]))


def test_shipped_example_configs_parse():
    from napari_lgms.errors import InputError
    from napari_lgms.training.config import config_from_dict, load_yaml

    folder = Path(__file__).resolve().parents[1] / "training" / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 5
    for file in files:
        config = config_from_dict(load_yaml(file), source=file.name)
        assert "NAPARI_LGMS_DATA" in (config.data + config.images)
        assert config.licence and config.citation and config.data_terms
    with pytest.raises(InputError, match="test_time_augmentation 'rotate' is not accepted; use one of none, flips"):
        config_from_dict({"data": "x", "test_time_augmentation": "rotate"}).validate()


# ----------------------------------------------------------------------------- the loop
def test_training_writes_model_log_plot_and_learns(tmp_path, tiny_arch):
    from napari_lgms.training.engine import TrainProgress, train_steps
    from napari_lgms.zoo import load_model, read_card

    data = write_2d_dataset(tmp_path / "data", count=8)
    config = tiny_config(tmp_path, data, epochs=6, optimizer="adamw", lr=0.02, schedule="cosine", warmup_epochs=1,
                         test_time_augmentation="flips")
    reports = []
    generator = train_steps(config, command="napari-lgms train --test")
    while True:
        try:
            reports.append(next(generator))
        except StopIteration as done:
            result = done.value
            break
    assert all(isinstance(r, TrainProgress) for r in reports)
    assert {"loading", "train", "validate", "epoch", "saving", "done"} <= {r.phase for r in reports}
    assert result.card_path is not None and result.card_path.exists()
    card = read_card(result.card_path)
    assert card.input.patch_size == [32, 32] and card.input.size_divisor == 4 and card.input.mode == "resize"
    assert card.input.max_resize_factor == 2.0  # 32x32 examples: the engine's default limit
    assert card.training["command"] == "napari-lgms train --test" and card.training["seed"] == 41
    assert card.training["split"]["val_fraction"] == 0.25 and card.metrics["split"].startswith("validation")
    assert card.licence == "CC0-1.0" and card.citation == ["test citation"] and card.intended_use
    assert 0 <= card.metrics["dice"] <= 1
    assert card.output.test_time_augmentation == "flips", "the config chooses the card's inference default"
    lines = [json.loads(line) for line in (tmp_path / "run" / "training_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    loaded = load_model(result.card_path)
    assert loaded.card.name == "tiny-trained"


def test_resume_gives_identical_weights(tmp_path, tiny_arch):
    from napari_lgms.training.checkpoint import load_checkpoint
    from napari_lgms.training.engine import train, train_steps

    data = write_2d_dataset(tmp_path / "data", count=8)
    straight = train(tiny_config(tmp_path / "a", data, epochs=2, intensity_p=0.5, scale_p=0.5))
    # Interrupt: close the generator right after epoch 1 is reported (checkpoint written), then resume.
    generator = train_steps(tiny_config(tmp_path / "b", data, epochs=2, intensity_p=0.5, scale_p=0.5))
    for progress in generator:
        if progress.phase == "epoch" and progress.epoch == 1:
            generator.close()
            break
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["epoch"] == 1
    resumed = train(tiny_config(tmp_path / "b", data, epochs=2, intensity_p=0.5, scale_p=0.5, resume=True))
    a = load_checkpoint(straight.checkpoint_path)
    b = load_checkpoint(resumed.checkpoint_path)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["best_epoch"] == b["best_epoch"]


def test_should_stop_ends_cleanly_with_best_model(tmp_path, tiny_arch):
    from napari_lgms.training.engine import train_steps

    data = write_2d_dataset(tmp_path / "data", count=8)
    seen = {"epochs": 0}

    def should_stop():
        return seen["epochs"] >= 1

    generator = train_steps(tiny_config(tmp_path, data, epochs=50), should_stop)
    try:
        while True:
            progress = next(generator)
            if progress.phase == "epoch":
                seen["epochs"] += 1
    except StopIteration as done:
        result = done.value
    assert result.stopped and result.epochs_completed == 1
    assert result.card_path is not None and result.card_path.exists()


def test_multiclass_3d_patches_and_early_stopping(tmp_path, tiny_arch):
    from napari_lgms.training.engine import train
    from napari_lgms.zoo import read_card

    data = write_msd_dataset(tmp_path / "Task04", count=4)
    config = tiny_config(
        tmp_path, data, model_args={"in_channels": 1, "num_classes": 3, "spatial_dims": 3},
        patch_size=[8, 8, 8], input_mode="patch", epochs=30, batch_size=2, samples_per_epoch=2,
        early_stop_patience=1, lr=1e-9, optimizer="adamw", normalization={"kind": "zscore"}, group_duplicates=False,
        class_names=["background", "anterior", "posterior"],
    )
    result = train(config)
    assert result.epochs_completed < 30  # a learning rate of 1e-9 cannot improve: stops early
    card = read_card(result.card_path)
    assert card.input.mode == "sliding_window" and card.input.spacing == [1.0, 1.0, 1.0]
    assert {"dice", "dice_class_1", "dice_class_2"} <= set(card.metrics)
    assert card.class_names == ["background", "anterior", "posterior"]
    resumed = train(dataclasses.replace(config, resume=True))  # an early-stopped run stays stopped
    assert resumed.epochs_completed == result.epochs_completed and resumed.steps == result.steps


def test_training_on_from_a_trained_model_keeps_its_classes_and_stages(tmp_path, tiny_arch):
    from napari_lgms.training.engine import train
    from napari_lgms.zoo import read_card

    data = write_2d_dataset(tmp_path / "data", count=6)
    first = train(tiny_config(tmp_path, data, epochs=1, class_names=["background", "lesion"]), command="stage one")
    second = train(tiny_config(tmp_path, data, epochs=1, name="continued", model=str(first.card_path),
                               model_args={}, patch_size=[64, 64], output=str(tmp_path / "second")),
                   command="stage two")
    third = train(tiny_config(tmp_path, data, epochs=1, name="again", model=str(second.card_path),
                              model_args={}, output=str(tmp_path / "third")), command="stage three")
    card = read_card(second.card_path)
    assert card.class_names == ["background", "lesion"]
    assert card.training["initialised_from"] == "tiny-trained" and card.input.patch_size == [64, 64]
    first_card, last_card = read_card(first.card_path), read_card(third.card_path)
    assert "earlier_stages" not in first_card.training
    stages = last_card.training["earlier_stages"]  # every command that made the weights, oldest first
    assert [stage["command"] for stage in stages] == ["stage one", "stage two"]
    assert [stage["model"] for stage in stages] == ["tiny-trained", "continued"]
    assert stages[0]["initialised_from"] == "random" and stages[1]["initialised_from"] == "tiny-trained"
    assert stages[0]["validation"]["dice"] == first_card.metrics["dice"]
    assert last_card.training["command"] == "stage three"


def test_cli_train_flags_override_yaml(tmp_path, tiny_arch):
    from napari_lgms.cli import main

    data = write_2d_dataset(tmp_path / "data", count=6)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "name: from-yaml\nmodel: tiny_test_net\nmodel_args: {in_channels: 1, num_classes: 1}\n"
        f"data: {data}\npatch_size: [32, 32]\nepochs: 5\nbatch_size: 4\ndevice: cpu\n"
    )
    out = tmp_path / "cli-out"
    code = main(["train", "--config", str(yaml_file), "--epochs", "1", "--name", "from-flag", "--output", str(out)])
    assert code == 0
    card = json.loads((out / "from-flag.json").read_text())
    assert card["training"]["config"]["epochs"] == 1
    assert "--epochs 1" in card["training"]["command"]
    assert main(["train", "--config", str(yaml_file), "--optimizer", "adam", "--output", str(out)]) == 2


@pytest.mark.data
def test_real_kvasir_loader_smoke(tmp_path, tiny_arch):
    root = Path(os.environ.get("NAPARI_LGMS_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    if not (root / "kvasir-seg" / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found under {root} (set NAPARI_LGMS_DATA)")
    from napari_lgms.training.data import PrepareSpec, discover_examples, prepare

    examples, kind, _ = discover_examples(str(root / "kvasir-seg"))
    assert kind == "folders" and len(examples) > 100
    sample = prepare(examples[0].load(), PrepareSpec(3, 1, 2, (64, 64), "resize", {"kind": "percentile_zscore"}))
    assert sample.image.shape == (3, 64, 64) and set(np.unique(sample.mask)) <= {0, 1}


# ----------------------------------------------------------------------------- the optimisation loop
def test_the_loop_keeps_to_its_budget_sets_the_learning_rate_and_stops_when_asked():
    from napari_lgms.training.loop import Budget, Stepper, optimise

    weight = torch.nn.Parameter(torch.tensor([4.0]))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    seen_lr, after = [], []

    def run(budget, should_stop=None, batches=None):
        steps = optimise(Stepper(optimizer), batches if batches is not None else iter(int, 1),
                         lambda _batch: (weight ** 2).sum(), budget=budget,
                         report=lambda taken, loss, progress: (taken, loss, progress), should_stop=should_stop,
                         lr_at=lambda progress: 0.1 * (1.0 - progress),
                         after_step=lambda progress: (after.append(progress),
                                                      seen_lr.append(optimizer.param_groups[0]["lr"])))
        reports = []
        while True:
            try:
                reports.append(next(steps))
            except StopIteration as done:
                return reports, done.value

    reports, (taken, stopped) = run(Budget(steps=5))
    assert taken == 5 and not stopped and [r[0] for r in reports] == [1, 2, 3, 4, 5]
    assert after == [0.0, 0.2, 0.4, 0.6, 0.8] and seen_lr == pytest.approx([0.1, 0.08, 0.06, 0.04, 0.02])
    assert reports[-1][1] < reports[0][1]  # the loss went down: the steps were taken
    _, (taken, stopped) = run(Budget(steps=5), should_stop=lambda: len(after) >= 7)
    assert (taken, stopped) == (2, True)
    _, (taken, stopped) = run(Budget(steps=100), batches=[0, 0, 0])
    assert (taken, stopped) == (3, False)  # the batches ran out
    assert Budget(seconds=10.0).progress(1000, 5.0) == 0.5 and Budget(steps=4, seconds=10.0).progress(3, 9.0) == 0.9


def test_a_stepper_told_to_skip_non_finite_losses_leaves_the_weights_alone():
    from napari_lgms.training.loop import Stepper

    weight = torch.nn.Parameter(torch.tensor([4.0]))
    stepper = Stepper(torch.optim.SGD([weight], lr=0.1), skip_non_finite=True)
    assert math.isnan(stepper(weight.sum() * float("nan")))
    assert stepper(weight.sum() * float("inf")) == float("inf")
    assert weight.item() == 4.0 and stepper.skipped == 2
    stepper((weight ** 2).sum())
    assert weight.item() < 4.0 and stepper.skipped == 2


def test_a_stepper_told_to_skip_non_finite_gradients_of_a_finite_loss_leaves_the_weights_alone():
    from napari_lgms.training.loop import Stepper

    weight = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    stepper = Stepper(optimizer, skip_non_finite=True)
    loss = torch.sqrt(weight).sum()  # 1.0, with an infinite gradient at 0
    assert stepper(loss) == 1.0 and stepper.skipped == 1
    assert weight.tolist() == [0.0, 1.0] and weight.grad is None and not optimizer.state
    stepper(((weight - 2) ** 2).sum())
    assert bool(torch.isfinite(weight).all()) and weight[1].item() > 1.0 and stepper.skipped == 1
