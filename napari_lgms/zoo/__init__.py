"""Model files (safetensors + JSON card), where they live, and loading them."""
from napari_lgms.zoo.card import InputSpec, ModelCard, OutputSpec, default_class_names
from napari_lgms.zoo.locations import (
    ModelEntry,
    list_available_models,
    load_model,
    scan_models,
    shipped_model_dir,
    untrained_card,
    user_model_dir,
)
from napari_lgms.zoo.names import validate_model_name
from napari_lgms.zoo.store import LoadedModel, ModelLoadError, delete_model, read_card, save_model, sha256_of

__all__ = [
    "InputSpec", "LoadedModel", "ModelCard", "ModelEntry", "ModelLoadError", "OutputSpec", "default_class_names",
    "delete_model", "list_available_models", "load_model", "read_card", "save_model", "scan_models", "sha256_of",
    "shipped_model_dir", "untrained_card", "user_model_dir", "validate_model_name",
]
