"""Pure-torch segmentation networks and their registry.

Importing this package registers every built-in architecture and named model.
"""
from napari_lgms.models import cmunext, esdmrnet, lgmsnet, tinyunet, unext  # noqa: F401  (registration)
from napari_lgms.models.padding import padded_forward
from napari_lgms.models.registry import (
    create_model,
    get_architecture,
    get_model_config,
    list_architectures,
    list_model_configs,
    register_architecture,
    register_model,
)

__all__ = [
    "create_model", "get_architecture", "get_model_config", "list_architectures",
    "list_model_configs", "padded_forward", "register_architecture", "register_model",
]
