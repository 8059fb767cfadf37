"""ONNX export of a network, and running an export with ONNX Runtime.

Exports use a fixed input shape (batch 1, the model card's patch size unless
told otherwise): the networks compute reshape sizes from the input shape in
Python, so an export with symbolic sizes would silently bake in the traced
ones. :func:`export_model` also writes the model card beside the ``.onnx``
file with an ``onnx`` section (file, sha256, input shape, opset).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from napari_lgms.errors import InputError, LgmsError, OutputError

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(LgmsError):
    """The network could not be exported or the export could not be run."""


def onnx_bytes(network, input_shape: tuple[int, ...]) -> bytes:
    """Serialise ``network`` (eval mode) for inputs of ``input_shape`` (N, C, *spatial) -> ONNX bytes.

    Graph inputs/outputs are named ``image`` (N, C, *spatial) and ``logits`` (N, K, *spatial).
    """
    import torch

    from napari_lgms.models.layout import set_depthwise_layout

    sample = torch.zeros(tuple(int(s) for s in input_shape))
    buffer = io.BytesIO()
    was_training = network.training
    layouts = {m: m.channels_last for m in network.modules() if hasattr(m, "channels_last")}
    network.eval()
    set_depthwise_layout(network, False)  # the exporter has no memory formats
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (sample,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=OPSET, dynamo=False)
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed for input shape {tuple(input_shape)}: {type(error).__name__}: {error}") from None
    finally:
        network.train(was_training)
        for module, channels_last in layouts.items():
            module.channels_last = channels_last
    return buffer.getvalue()


def ort_session(model_bytes: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on; ``threads`` intra-op threads."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def size_divisor(model) -> int:
    """What every spatial input size of ``model`` (a LoadedModel) must be a multiple of."""
    from napari_lgms.models.registry import get_architecture

    divisor = getattr(model.network, "size_divisor", None) or get_architecture(model.card.architecture).size_divisor
    return int(divisor)


def check_divisible(spatial: tuple[int, ...], divisor: int) -> None:
    """InputError (one line, with the nearest accepted shape) unless every size is a multiple of ``divisor``."""
    if any(int(s) % divisor for s in spatial):
        nearest = ",".join(str(max(divisor, round(int(s) / divisor) * divisor)) for s in spatial)
        shown = ",".join(str(int(s)) for s in spatial)
        raise InputError(f"input shape {shown} must be a multiple of {divisor} (the network's size divisor) "
                         f"in every axis, e.g. {nearest}")


def export_model(model, output: str | Path | None = None, *, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export a LoadedModel to ``output`` (default ``NAME.onnx`` in the current folder); returns its path.

    The network is exported with batch-norm folded into the convolutions (see
    :mod:`napari_lgms.inference.fast`). The card is written beside it as
    ``NAME.json`` with ``onnx = {file, sha256, input_shape, opset, input, output}``.
    """
    from napari_lgms._atomic import atomic_write_bytes, atomic_write_text
    from napari_lgms.inference.fast import optimize_for_inference
    from napari_lgms.zoo import sha256_of

    from napari_lgms.zoo import validate_model_name

    card = model.card
    path = Path(output) if output is not None else Path(f"{validate_model_name(card.name)}.onnx")
    if path.suffix.lower() != ".onnx":
        raise OutputError(f"output {path} must end in .onnx")
    if input_shape is None:
        patch = card.input.patch_size or ([96] * 3 if card.spatial_dims == 3 else [256, 256])
        input_shape = (1, card.in_channels, *(int(p) for p in patch))
    check_divisible(input_shape[2:], size_divisor(model))
    network = optimize_for_inference(model.network.to("cpu"))
    data = onnx_bytes(network, input_shape)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        card_data = card.to_dict()
        card_data["onnx"] = {
            "file": path.name,
            "sha256": sha256_of(path),
            "input_shape": [int(s) for s in input_shape],
            "opset": OPSET,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "batch_norm_folded": int(getattr(network, "folded_batch_norms", 0)),
        }
        import json

        atomic_write_text(path.with_suffix(".json"), json.dumps(card_data, indent=2))
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error}") from None
    return path
