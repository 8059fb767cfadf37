"""Knowledge distillation: a trained teacher's probabilities as soft targets in the training engine."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training_helpers import tiny_config, write_2d_dataset  # noqa: E402


@pytest.fixture
def tiny_arch(tiny_model):
    tiny_model()  # registers "tiny_test_net"
    return "tiny_test_net"


@pytest.fixture
def teacher_path(tmp_path, tiny_model):
    """A saved tiny 1-channel binary model to learn from."""
    from napari_lgms.zoo import save_model

    loaded = tiny_model(seed=3, name="tiny-teacher")
    return save_model(loaded.network, loaded.card, tmp_path / "teacher")


def test_distillation_loss_is_lowest_at_the_teachers_probabilities():
    from napari_lgms.training.losses import distillation_loss

    generator = torch.Generator().manual_seed(0)
    for classes in (1, 3):
        teacher = torch.randn(2, classes, 8, 8, generator=generator)
        at_teacher = distillation_loss(teacher, teacher)
        for other in (teacher + torch.randn(teacher.shape, generator=generator), torch.zeros_like(teacher), -teacher):
            assert distillation_loss(other, teacher) > at_teacher, classes


def test_a_certain_teacher_gives_the_labels_loss():
    from napari_lgms.training.losses import distillation_loss, segmentation_loss

    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 1, 8, 8, generator=generator)
    labels = (torch.rand(2, 8, 8, generator=generator) > 0.5).long()
    certain = 40.0 * (2.0 * labels[:, None].float() - 1.0)  # sigmoid: exactly 0 or 1 in float32
    assert torch.allclose(distillation_loss(student, certain), segmentation_loss(student, labels), atol=1e-5)

    student = torch.randn(2, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (2, 8, 8), generator=generator)
    one_hot = 40.0 * torch.movedim(torch.nn.functional.one_hot(labels, 3), -1, 1).float()
    assert torch.allclose(distillation_loss(student, one_hot), segmentation_loss(student, labels), atol=1e-5)


def _same_images_other_masks(tmp_path):
    data = write_2d_dataset(tmp_path / "data", count=8)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    from skimage.io import imread, imsave

    for mask_file in (other / "masks").glob("*.png"):
        imsave(mask_file, (255 - imread(mask_file)).astype(np.uint8), check_contrast=False)
    return data, other


def _final_weights(result):
    from napari_lgms.training.checkpoint import load_checkpoint

    return load_checkpoint(result.checkpoint_path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_with_full_weight_only_the_teacher_teaches(tmp_path, tiny_arch, teacher_path):
    from napari_lgms.training.engine import train
    from napari_lgms.zoo import read_card

    data, inverted = _same_images_other_masks(tmp_path)
    settings = dict(teacher=str(teacher_path), distill_weight=1.0, group_duplicates=False, epochs=2)
    on_labels = train(tiny_config(tmp_path / "a", data, **settings))
    on_inverted = train(tiny_config(tmp_path / "b", inverted, **settings))
    _assert_same_weights(_final_weights(on_labels), _final_weights(on_inverted))

    without = train(tiny_config(tmp_path / "c", data, group_duplicates=False, epochs=2))
    assert any(not torch.equal(a, b) for a, b in zip(_final_weights(without).values(),
                                                       _final_weights(on_labels).values()))
    recorded = read_card(on_labels.card_path).training["teacher"]
    teacher_card = read_card(teacher_path)
    assert recorded["model"] == "tiny-teacher" and recorded["sha256"] == teacher_card.weights["sha256"]
    assert recorded["distill_weight"] == 1.0 and recorded["test_time_augmentation"] == "none"


def test_with_zero_weight_the_teacher_changes_nothing(tmp_path, tiny_arch, teacher_path):
    from napari_lgms.training.engine import train

    data = write_2d_dataset(tmp_path / "data", count=8)
    plain = train(tiny_config(tmp_path / "a", data, epochs=2))
    ignored = train(tiny_config(tmp_path / "b", data, epochs=2, teacher=str(teacher_path), distill_weight=0.0))
    _assert_same_weights(_final_weights(plain), _final_weights(ignored))


def test_a_flip_averaging_teacher_is_flip_equivariant(tmp_path, teacher_path):
    from napari_lgms.training.teacher import load_teacher

    config = tiny_config(tmp_path, tmp_path, teacher=str(teacher_path), teacher_test_time_augmentation="flips")
    arguments = {"in_channels": 1, "num_classes": 1, "spatial_dims": 2}
    teacher = load_teacher(config, arguments, torch.device("cpu"))
    assert len(teacher.flips) == 4
    images = torch.randn(2, 1, 16, 20, generator=torch.Generator().manual_seed(2))
    for axes in ((-1,), (-2,), (-2, -1)):
        assert torch.allclose(teacher(torch.flip(images, axes)), torch.flip(teacher(images), axes), atol=1e-6)
    one_pass = load_teacher(dataclasses.replace(config, teacher_test_time_augmentation="none"), arguments,
                            torch.device("cpu"))
    assert not torch.allclose(one_pass(torch.flip(images, (-1,))), torch.flip(one_pass(images), (-1,)), atol=1e-6)
    assert not any(p.requires_grad for p in teacher.network.parameters())


@pytest.mark.parametrize("overrides, message", [
    ({"teacher": "no-such-model"}, "teacher: unknown model 'no-such-model'"),
    ({"model_args": {"in_channels": 3, "num_classes": 1}}, "but the model being trained {'in_channels': 3"),
    ({"normalization": {"kind": "zscore"}}, "expects normalization"),
    ({"distill_weight": 1.5}, "distill_weight must be in [0, 1], got 1.5"),
    ({"teacher_test_time_augmentation": "rot"}, "teacher_test_time_augmentation 'rot' is not accepted"),
])
def test_a_bad_teacher_is_a_one_line_error(tmp_path, tiny_arch, teacher_path, overrides, message):
    from napari_lgms.errors import InputError
    from napari_lgms.training.engine import train_steps

    data = write_2d_dataset(tmp_path / "data", count=4)
    config = tiny_config(tmp_path, data, **{"teacher": str(teacher_path), **overrides})
    with pytest.raises(InputError) as raised:
        next(train_steps(config))  # before the first report: no data are read for a run that cannot start
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_cli_train_takes_a_teacher(tmp_path, tiny_arch, teacher_path):
    from napari_lgms.cli import main
    from napari_lgms.zoo import read_card

    data = write_2d_dataset(tmp_path / "data", count=6)
    status = main(["train", "--model", "tiny_test_net", "--model-args", '{"in_channels": 1, "num_classes": 1}',
                   "--data", str(data), "--patch-size", "32", "32", "--epochs", "1", "--batch-size", "4",
                   "--name", "student", "--output", str(tmp_path / "run"), "--teacher", str(teacher_path),
                   "--distill-weight", "0.3", "--teacher-test-time-augmentation", "flips"])
    assert status == 0
    recorded = read_card(tmp_path / "run" / "student.json").training["teacher"]
    assert recorded["distill_weight"] == 0.3 and recorded["test_time_augmentation"] == "flips"
