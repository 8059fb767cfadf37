"""Model files: safetensors + card, hash checks, lookup places, legacy .pt, devices."""
from __future__ import annotations

import json
import re

import pytest
import torch

from napari_lgms._device import select_device
from napari_lgms.zoo import ModelLoadError, list_available_models, load_model, save_model, user_model_dir
from napari_lgms.zoo.card import LEGACY_INPUT_FIELDS, ModelCard
from napari_lgms.zoo.store import load_legacy_state_dict, read_card


class NotAStateDict:
    """Pickled by a test: a weights_only load must refuse it."""


def _outputs_equal(a, b, spatial_dims=2):
    x = torch.randn(1, a.card.in_channels, *([16] * spatial_dims))
    with torch.no_grad():
        return torch.equal(a.network(x), b.network(x))


def test_save_load_round_trip_keeps_outputs_and_card(tiny_model, tmp_path):
    original = tiny_model(in_channels=3, num_classes=2, metrics={"split": "seed 0, 80/20", "dice": 0.9})
    card_file = save_model(original.network, original.card, tmp_path)
    loaded = load_model(card_file)
    assert _outputs_equal(original, loaded)
    assert loaded.card.metrics == {"split": "seed 0, 80/20", "dice": 0.9}
    assert loaded.card.weights["sha256"] and len(loaded.card.weights["sha256"]) == 64
    assert loaded.origin == "path"
    # the .safetensors path and the folder resolve to the same model
    assert _outputs_equal(original, load_model(tmp_path / "tiny-test.safetensors"))
    assert _outputs_equal(original, load_model(tmp_path))


def test_half_precision_storage_loads_as_float32(tiny_model, tmp_path):
    original = tiny_model()
    save_model(original.network, original.card, tmp_path, half=True)
    loaded = load_model(tmp_path / "tiny-test.json")
    assert loaded.card.weights["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    ref = original.network.state_dict()["head.weight"]
    assert torch.allclose(loaded.network.state_dict()["head.weight"], ref, atol=1e-3)


def test_tampered_weights_fail_the_hash_check(tiny_model, tmp_path):
    original = tiny_model()
    save_model(original.network, original.card, tmp_path)
    weights = tmp_path / "tiny-test.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as info:
        load_model(tmp_path / "tiny-test.json")
    assert "\n" not in str(info.value)


def test_unknown_architecture_is_a_clear_error(tiny_model, tmp_path):
    original = tiny_model()
    card_file = save_model(original.network, original.card, tmp_path)
    data = json.loads(card_file.read_text())
    data["architecture"] = "resnet9000"
    card_file.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="unknown architecture 'resnet9000'"):
        load_model(card_file)


def test_card_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a valid model card"):
        load_model(tmp_path / "x.json")


def test_unknown_name_lists_what_is_accepted():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_registry_name_without_weights_needs_allow_untrained():
    with pytest.raises(ModelLoadError, match="no trained weights"):
        load_model("unext")
    model = load_model("unext", allow_untrained=True)
    assert model.origin == "untrained" and model.card.architecture == "unext"


def test_user_folder_models_are_listed_and_found_by_name(tiny_model):
    original = tiny_model(name="my-finetuned")
    save_model(original.network, original.card, user_model_dir())
    entries = {e.name: e for e in list_available_models()}
    assert entries["my-finetuned"].origin == "user"
    assert entries["lgmsnet"].origin in ("none yet", "shipped")
    loaded = load_model("my-finetuned")
    assert loaded.origin == "user" and _outputs_equal(original, loaded)


def test_legacy_pt_loads_only_plain_state_dicts(tiny_model, tmp_path):
    original = tiny_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in original.network.state_dict().items()}},
               tmp_path / "legacy.pt")
    network = load_legacy_state_dict(tmp_path / "legacy.pt", original.card)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(network(x), original.network(x))

    torch.save(NotAStateDict(), tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="must be plain state dicts of tensors$"):
        load_legacy_state_dict(tmp_path / "evil.pt", original.card)


def test_card_from_dict_requires_the_essentials():
    with pytest.raises(ValueError, match="architecture"):
        ModelCard.from_dict({"name": "x", "arguments": {}})


def test_read_card_gives_defaults_for_optional_fields(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "m", "architecture": "lgmsnet",
                                "arguments": {"in_channels": 3, "num_classes": 1}}))
    card = read_card(path)
    assert card.class_names == ["background", "foreground"]
    assert "not a medical device" in card.intended_use


def test_device_selection(monkeypatch):
    monkeypatch.setenv("NAPARI_LGMS_DEVICE", "auto")
    monkeypatch.setenv("CI", "true")
    assert select_device("auto").type == "cpu"
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")


def test_saved_model_files_get_normal_permissions(tiny_model, tmp_path):
    import os

    original = tiny_model()
    card_file = save_model(original.network, original.card, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for path in (card_file, card_file.with_suffix(".safetensors")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_saving_over_a_model_replaces_the_pair_and_leaves_no_staged_file(tiny_model, tmp_path):
    first, second = tiny_model(seed=1, version="1"), tiny_model(seed=2, version="2")
    save_model(first.network, first.card, tmp_path)
    card_file = save_model(second.network, second.card, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.json", "tiny-test.safetensors"]
    assert json.loads(card_file.read_text())["weights"]["file"] == "tiny-test.safetensors"
    loaded = load_model(card_file)
    assert loaded.card.version == "2" and _outputs_equal(second, loaded)


def test_a_card_committed_to_staged_weights_loads_and_is_listed(tiny_model):
    """A save killed after its commit point: the card names the hidden staged weights."""
    original = tiny_model(name="staged")
    card_file = save_model(original.network, original.card, user_model_dir())
    staged = card_file.with_name(".staged.0123456789ab.safetensors")
    card_file.with_suffix(".safetensors").rename(staged)
    data = json.loads(card_file.read_text())
    data["weights"]["file"] = staged.name
    card_file.write_text(json.dumps(data))
    assert "staged" in {e.name for e in list_available_models()}
    assert _outputs_equal(original, load_model("staged"))


def test_a_saved_card_derives_its_dimensions_channels_and_axes_from_the_arguments(tiny_model, tmp_path):
    original = tiny_model(spatial_dims=3, in_channels=2)
    data = json.loads(save_model(original.network, original.card, tmp_path).read_text())
    assert not set(LEGACY_INPUT_FIELDS) & set(data["input"])
    card = read_card(tmp_path / "tiny-test.json")
    assert (card.spatial_dims, card.image_channels, card.axes) == (3, 2, "ZYXC")


@pytest.mark.parametrize("prompt", [None, {"channels": ["positive", "negative", "previous"]}])
def test_an_old_card_that_repeats_the_arguments_in_its_input_still_loads(tiny_model, tmp_path, prompt):
    """Cards written before held input.spatial_dims, input.channels and input.axes (the image's
    channels: a click model's in_channels less its prompt channels)."""
    original = tiny_model(in_channels=3 + (3 if prompt else 0))
    card_file = save_model(original.network, original.card, tmp_path)
    data = json.loads(card_file.read_text())
    data["input"] = {"spatial_dims": 2, "channels": 3, "axes": "YXC", **data["input"]}
    if prompt:
        data["prompt"] = prompt
    card_file.write_text(json.dumps(data))
    loaded = load_model(card_file)
    assert (loaded.card.spatial_dims, loaded.card.image_channels, loaded.card.axes) == (2, 3, "YXC")
    assert not set(LEGACY_INPUT_FIELDS) & set(loaded.card.to_dict()["input"])  # saved again without them
    assert _outputs_equal(original, loaded)


@pytest.mark.parametrize("key, value, message", [
    ("spatial_dims", 3, "input.spatial_dims 3 contradicts the arguments, which give 2"),
    ("channels", 3, "input.channels 3 contradicts the arguments, which give 1"),
    ("axes", "YXC", "input.axes 'YXC' contradicts the arguments, which give 'YX'"),
])
def test_an_old_card_whose_input_contradicts_its_arguments_is_refused(tiny_model, tmp_path, key, value, message):
    original = tiny_model()
    card_file = save_model(original.network, original.card, tmp_path)
    data = json.loads(card_file.read_text())
    data["input"][key] = value
    card_file.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
        read_card(card_file)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field, value, message", [
    ("arguments", {"num_classes": 1}, "arguments.in_channels must be an integer"),
    ("input", {"patch_size": [0, 16]}, "input.patch_size must be 2 integers"),
    ("output", {"activation": "sigmoid", "threshold": "x"}, "output.threshold must be a number"),
    ("weights", {"file": "../w.safetensors"}, "must be a plain file name"),
    ("name", "../../x", "name: model name '../../x' is not a plain name"),
])
def test_card_schema_names_the_field_in_one_line(tiny_model, tmp_path, field, value, message):
    original = tiny_model()
    card_file = save_model(original.network, original.card, tmp_path)
    data = json.loads(card_file.read_text())
    data[field] = value
    card_file.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
        read_card(card_file)
    assert "\n" not in str(info.value)


def test_validate_model_name_accepts_plain_names():
    from napari_lgms.errors import InputError
    from napari_lgms.zoo import validate_model_name

    for name in ("lgmsnet-polyp", "my_model.v2", "A1", "x" * 100):
        assert validate_model_name(name) == name
    for name in ("../x", "a/b", ".x", "", "x" * 101, None):
        with pytest.raises(InputError, match="letters, digits"):
            validate_model_name(name)


def test_deleting_a_model_removes_its_card_and_weights_and_nothing_else(tiny_model, tmp_path):
    from napari_lgms.zoo import delete_model

    kept, doomed = (save_model(m.network, m.card, tmp_path) for m in (tiny_model(name="kept"), tiny_model(name="doomed")))
    (tmp_path / ".doomed.abc123.safetensors").write_bytes(b"a staged save of it")
    assert delete_model(doomed) == doomed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "kept.safetensors"]
    assert load_model(kept).card.name == "kept"
    assert delete_model(doomed) == doomed  # already gone: nothing to do
