"""Registries of network architectures and of named model configurations.

Two levels, as in timm:

* an *architecture* is a network class (``LGMSNet``, ``CMUNeXt``...) that takes
  ``in_channels``, ``num_classes`` and ``spatial_dims`` plus its own keyword
  arguments;
* a *model* is a named default configuration of an architecture
  (``"lgmsnet"`` is LGMSNet 2D, 3 channels, 1 class; ``"lgmsnet3d"`` is the
  reference ``SegmsNet3D`` configuration).

``create_model(name, **overrides)`` builds either, so
``create_model("lgmsnet", in_channels=1, num_classes=4)`` works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class Architecture:
    """A network class and what it accepts.

    ``size_divisor`` is what every spatial input size must be a multiple of;
    callers pad to it (see :func:`napari_lgms.models.padding.padded_forward`).
    ``onnxruntime_faster``: its ONNX Runtime forward beat torch's on a CPU in
    ``benchmarks/run.py``, so the inference engine uses ONNX Runtime when it is installed.
    """

    name: str
    builder: Callable[..., nn.Module]
    spatial_dims: tuple[int, ...]
    size_divisor: int
    description: str = ""
    onnxruntime_faster: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """A named default configuration of an architecture."""

    name: str
    architecture: str
    arguments: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def spatial_dims(self) -> int:
        return int(self.arguments.get("spatial_dims", 2))

    @property
    def in_channels(self) -> int:
        return int(self.arguments["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.arguments["num_classes"])


_ARCHITECTURES: dict[str, Architecture] = {}
_MODELS: dict[str, ModelConfig] = {}


def register_architecture(
    name: str, *, spatial_dims: tuple[int, ...], size_divisor: int, description: str = "",
    onnxruntime_faster: bool = False,
) -> Callable:
    """Class decorator: register a network class under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        _ARCHITECTURES[name] = Architecture(
            name, builder, tuple(spatial_dims), int(size_divisor), description, bool(onnxruntime_faster)
        )
        return builder

    return decorate


def register_model(name: str, architecture: str, description: str = "", **arguments: Any) -> None:
    """Register a named configuration; ``arguments`` go to the architecture's builder."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    arguments.setdefault("spatial_dims", 2)
    _MODELS[name] = ModelConfig(name, architecture, dict(arguments), description)


def _ensure_loaded() -> None:
    # Importing the package registers every built-in network.
    import napari_lgms.models  # noqa: F401


def get_architecture(name: str) -> Architecture:
    _ensure_loaded()
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise KeyError(f"unknown architecture {name!r}; known architectures: {known}") from None


def get_model_config(name: str) -> ModelConfig:
    _ensure_loaded()
    if name in _MODELS:
        return _MODELS[name]
    if name in _ARCHITECTURES:
        return ModelConfig(name, name, {"spatial_dims": 2, "in_channels": 3, "num_classes": 1})
    known = ", ".join(sorted(_MODELS))
    raise KeyError(f"unknown model {name!r}; known models: {known}")


def list_architectures() -> list[Architecture]:
    _ensure_loaded()
    return [_ARCHITECTURES[k] for k in sorted(_ARCHITECTURES)]


def list_model_configs() -> list[ModelConfig]:
    _ensure_loaded()
    return [_MODELS[k] for k in sorted(_MODELS)]


def build_network(architecture: str, arguments: dict[str, Any]) -> nn.Module:
    """Instantiate ``architecture`` with ``arguments`` and tag it with its recipe.

    The returned module carries ``architecture``, ``arguments`` and
    ``size_divisor`` attributes so it can be saved and padded generically.
    """
    arch = get_architecture(architecture)
    dims = int(arguments.get("spatial_dims", 2))
    if dims not in arch.spatial_dims:
        raise ValueError(
            f"{architecture} supports spatial_dims {arch.spatial_dims}, got {dims}"
        )
    network = arch.builder(**arguments)
    network.architecture = architecture
    network.arguments = dict(arguments)
    network.size_divisor = arch.size_divisor
    return network


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model (or bare architecture) with optional overrides.

    >>> net = create_model("lgmsnet", in_channels=1, num_classes=3)
    """
    config = get_model_config(name)
    return build_network(config.architecture, {**config.arguments, **overrides})
