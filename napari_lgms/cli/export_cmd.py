"""``napari-lgms export``: write a model as ONNX, with its card beside it."""
from __future__ import annotations

import argparse

FORMATS = ("onnx",)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export a model (batch-norm folded, fixed input shape: batch 1 and the card's patch size "
        "unless --shape is given) to ONNX, and write its card beside it with an 'onnx' section "
        "(file, sha256, input shape, opset).",
    )
    parser.add_argument("--model", "-m", required=True, help="model name or path to a .json card / .safetensors file")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default onnx)")
    parser.add_argument("--output", "-o", help="output file (default: NAME.onnx in the current folder)")
    parser.add_argument("--shape", help='spatial input shape, e.g. "256,256" or "96,96,96" (default: the patch size)')
    parser.add_argument("--untrained", action="store_true",
                        help="allow a registry name without weights (random weights, for testing)")
    return parser


def parse_shape(text: str | None, dims: int) -> tuple[int, ...] | None:
    from napari_lgms.errors import InputError

    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--shape must be {dims} comma-separated integers, got {text!r}") from None
    if len(shape) != dims or min(shape) < 1:
        raise InputError(f"--shape must be {dims} positive integers for a {dims}D model, got {text!r}")
    return shape


def run(args: argparse.Namespace) -> int:
    from napari_lgms.export import export_model
    from napari_lgms.zoo import load_model

    model = load_model(args.model, "cpu", allow_untrained=args.untrained)
    spatial = parse_shape(args.shape, model.card.spatial_dims)
    input_shape = None if spatial is None else (1, model.card.in_channels, *spatial)
    path = export_model(model, args.output, input_shape=input_shape)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
