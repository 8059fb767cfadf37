"""The ``napari-lgms`` command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``
and ``run(args) -> int``; modules import torch only inside ``run``. A
:class:`napari_lgms.errors.LgmsError` (bad input, bad model file, unwritable
output) ends the program with its one-line message and exit status 2, never
a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("models", "segment", "evaluate", "train", "finetune", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-lgms",
        description="Lightweight medical image segmentation: list models, segment, evaluate, train, fine-tune.",
    )
    from napari_lgms import __version__

    parser.add_argument("--version", action="version", version=f"napari-lgms {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"napari_lgms.cli.{name}_cmd")
        except ModuleNotFoundError as error:
            if error.name != f"napari_lgms.cli.{name}_cmd":
                raise
            continue
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def printable_streams() -> None:
    """Make stdout and stderr print any file name: characters the encoding lacks (e.g. the
    undecodable bytes of a non-UTF-8 name) are written as backslash escapes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    from napari_lgms.errors import LgmsError

    printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except LgmsError as error:
        print(f"napari-lgms {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-lgms {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
