"""``napari-lgms segment``: one mask per input image, written beside nothing but in --output.

Names: ``<stem><mask suffix>`` (NIfTI -> the same NIfTI suffix with the source
affine and header, TIFF -> TIFF, PNG/JPEG/BMP -> PNG, DICOM series -> .nii.gz);
with ``--probabilities`` also ``<stem>_probabilities.tif`` (``.nii``/``.nii.gz``
for NIfTI sources), float32. Every file is written atomically.

Failures: the output folder is checked for writing before the model is loaded.
With several inputs, a bad one is reported on stderr and the rest go on; the
exit status is then 2. A single bad input ends with its one-line error (status 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from napari_lgms._words import counted
from napari_lgms.errors import InputError, LgmsError, OutputError
from napari_lgms.inference.windows import DEFAULT_OVERLAP


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment images or volumes and write masks",
        description="Segment every INPUT (files, or folders of images) with a model and write one "
        "mask per input into --output, in the input's format family (NIfTI keeps the affine).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--model", "-m", required=True, help="model name or path to a .json card / .safetensors file")
    parser.add_argument("--output", "-o", required=True, help="folder for the masks (created if missing)")
    add_device_argument(parser)
    parser.add_argument("--roi", help='region to segment: "y0:y1,x0:x1" or "z0:z1,y0:y1,x0:x1" (index coordinates)')
    parser.add_argument("--probabilities", action="store_true", help="also write float32 probability maps")
    parser.add_argument("--slice-axis", type=int, default=0,
                        help="axis a 2D model walks through a volume (default 0, the first spatial axis)")
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                        help=f"window overlap for tiling (default {DEFAULT_OVERLAP})")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: by device)")
    add_tta_argument(parser)
    return parser


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    from napari_lgms.inference.augment import TEST_TIME_AUGMENTATIONS

    parser.add_argument("--tta", default="auto", choices=("auto",) + TEST_TIME_AUGMENTATIONS,
                        help="test-time augmentation: flips averages the prediction over flipped copies "
                        "(4 passes in 2D, 8 in 3D); auto (default) uses the model card's choice")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (default), cpu, cuda, cuda:N or mps")


@dataclass
class Job:
    source: Path
    mask: Path
    probabilities: Path | None


def parse_roi(text: str) -> tuple[tuple[int, int], ...]:
    """``"y0:y1,x0:x1"`` -> ((y0, y1), (x0, x1)); 2 or 3 ranges."""
    ranges = []
    for part in text.split(","):
        try:
            start, stop = (int(value) for value in part.split(":"))
        except ValueError:
            raise InputError(f"--roi {text!r} is not like 'y0:y1,x0:x1' or 'z0:z1,y0:y1,x0:x1' (integers)") from None
        ranges.append((start, stop))
    if len(ranges) not in (2, 3):
        raise InputError(f"--roi {text!r} has {counted(len(ranges), 'range')}; give 2 (y, x) or 3 (z, y, x)")
    return tuple(ranges)


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; OutputError otherwise."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".napari-lgms-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write into output folder {folder}: {reason}") from None
    return folder


def ensure_writable_file(path: str | os.PathLike) -> Path:
    """The folder of ``path`` must be writable and ``path`` must not be a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    ensure_writable_folder(path.parent)
    return path


def collect_inputs(arguments: list[str]) -> tuple[list[Path], list[tuple[str, LgmsError]]]:
    """Expand folders (non-recursive, supported images only); missing paths become problems."""
    from napari_lgms.io import is_supported

    files: list[Path] = []
    problems: list[tuple[str, LgmsError]] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir() and not is_supported(path):
            found = sorted(child for child in path.iterdir()
                           if not child.name.startswith(".") and is_supported(child)
                           and (child.is_file() or child.is_dir()))
            if not found:
                problems.append((argument, InputError(f"{path}: folder holds no supported image")))
            files.extend(found)
        elif not path.exists():
            problems.append((argument, InputError(f"{path}: no such file or folder")))
        else:
            files.append(path)
    return files, problems


def plan_jobs(files: list[Path], output: Path, probabilities: bool):
    """Output paths per input; an input whose mask would overwrite it or another mask is a problem."""
    from napari_lgms.io import mask_suffix_for
    from napari_lgms.io.image import stem_of

    jobs: list[Job] = []
    problems: list[tuple[str, LgmsError]] = []
    taken: dict[Path, Path] = {}
    for source in files:
        try:
            suffix = mask_suffix_for(source)
        except LgmsError as error:
            problems.append((str(source), error))
            continue
        stem = stem_of(source)
        mask = output / f"{stem}{suffix}"
        prob = None
        if probabilities:
            prob_suffix = suffix if suffix in (".nii", ".nii.gz") else ".tif"
            prob = output / f"{stem}_probabilities{prob_suffix}"
        targets = [mask] + ([prob] if prob else [])
        if any(_same_file(target, source) for target in targets):
            problems.append((str(source), OutputError(
                f"{source}: its mask would overwrite the image itself; choose another --output folder")))
            continue
        clash = next((taken[t] for t in targets if t in taken), None)
        if clash is not None:
            problems.append((str(source), OutputError(
                f"{source}: its mask name {mask.name} is already used by {clash.name}; segment it separately")))
            continue
        for target in targets:
            taken[target] = source
        jobs.append(Job(source, mask, prob))
    return jobs, problems


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def load_model_for_cli(name_or_path: str, device_text: str):
    """Pick the device and load the model; every failure is a one-line LgmsError."""
    from napari_lgms._device import select_device
    from napari_lgms.zoo import load_model

    try:
        device = select_device(device_text)
    except ValueError as error:
        raise InputError(str(error)) from None
    return load_model(name_or_path, device=device), device


def run(args: argparse.Namespace) -> int:
    roi = parse_roi(args.roi) if args.roi else None
    created = missing_folders(args.output)
    output = ensure_writable_folder(args.output)
    try:
        return _segment_all(args, roi, output)
    finally:
        remove_if_empty(created)


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """The folders ``folder`` and its missing parents that creating it would make, deepest first."""
    missing = []
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove folders this run created (deepest first) when nothing was written in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _segment_all(args, roi, output) -> int:
    from napari_lgms._generators import run_to_end, throttled
    from napari_lgms.inference import segment_steps
    from napari_lgms.io import read_image

    files, problems = collect_inputs(args.inputs)
    jobs, plan_problems = plan_jobs(files, output, args.probabilities)
    problems += plan_problems
    count = len(jobs) + len(problems)
    if count == 1 and problems:
        raise named_error(*problems[0])
    for name, error in problems:
        _report(name, error)
    if not jobs:
        raise InputError("no image to segment")

    model, device = load_model_for_cli(args.model, args.device)
    bar = _ProgressBar(len(jobs))  # also for one input: a large image takes minutes
    failures = len(problems)
    for index, job in enumerate(jobs):
        try:
            image = read_image(job.source)
            steps = segment_steps(
                image.array, model, channel_axis=image.channel_axis, spacing=image.spacing, roi=roi,
                slice_axis=args.slice_axis, probabilities=args.probabilities, batch_size=args.batch_size,
                device=device, overlap=args.overlap, test_time_augmentation=args.tta,
            )
            result = run_to_end(throttled(steps),
                                lambda step: bar.show(index + step.done / max(step.total, 1), job.source.name))
            _warn_if_clipped(roi, result.roi, args.slice_axis, job.source)
            written = _write_outputs(job, result, image)
        except LgmsError as error:
            bar.clear()
            if count == 1:
                raise named_error(str(job.source), error) from None
            failures += 1
            _report(str(job.source), error)
            continue
        bar.clear()
        print(f"{job.source} -> {', '.join(str(p) for p in written)} "
              f"({result.seconds:.2f} s on {result.device})")
    if failures:
        print(f"napari-lgms segment: {failures} of {counted(count, 'input')} failed", file=sys.stderr)
        return 2
    return 0


def _warn_if_clipped(asked, used, slice_axis: int, source) -> None:
    """Say so when the engine clipped ``--roi`` to the image (stops past an edge)."""
    if asked is None or used is None:
        return
    if len(asked) != len(used):  # a 2D model on a volume: the slice axis is not part of the ROI used
        asked = tuple(r for axis, r in enumerate(asked) if axis != slice_axis % len(asked))
    if tuple(map(tuple, asked)) != tuple(map(tuple, used)):
        shown = ",".join(f"{start}:{stop}" for start, stop in used)
        print(f"napari-lgms segment: note: --roi reaches past the edge of {Path(source).name}; used {shown}",
              file=sys.stderr)


def _write_outputs(job: Job, result, image) -> list[Path]:
    from napari_lgms.io import write_mask, write_probabilities

    written = [write_mask(result.labels, job.mask, reference=image)]
    if job.probabilities is not None:
        try:
            write_probabilities(result.probabilities, job.probabilities, image)
        except BaseException:
            job.mask.unlink(missing_ok=True)  # a mask without its requested probabilities is partial
            raise
        written.append(job.probabilities)
    return written


def named_error(name: str, error: LgmsError) -> LgmsError:
    """The same kind of error, its message prefixed with the input's name unless it names it already."""
    if Path(name).name in str(error):
        return error
    try:
        return type(error)(f"{name}: {error}")
    except TypeError:
        return LgmsError(f"{name}: {error}")


def _report(name: str, error: LgmsError) -> None:
    print(f"napari-lgms segment: error: {named_error(name, error)}", file=sys.stderr)


PROGRESS_LOG_SECONDS = 10.0  # off a terminal, a progress line this often while one input takes that long


class _ProgressBar:
    """A one-line stderr bar on a terminal; elsewhere (a log) a progress line every
    :data:`PROGRESS_LOG_SECONDS` while one input takes that long."""

    WIDTH = 30

    def __init__(self, total: int) -> None:
        from napari_lgms._generators import every

        self.total = total
        self.interactive = sys.stderr.isatty()
        self._log_due = every(PROGRESS_LOG_SECONDS, time.monotonic)
        self._log_due()  # the first line comes after PROGRESS_LOG_SECONDS

    def show(self, position: float, name: str) -> None:
        if not self.interactive:
            if self._log_due():
                print(f"napari-lgms segment: {name}: {100 * (position % 1):.0f}% "
                      f"(input {min(int(position) + 1, self.total)} of {self.total})", file=sys.stderr)
            return
        filled = int(self.WIDTH * position / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                         f"{min(int(position) + 1, self.total)}/{self.total} {name[:40]:<40}")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.interactive:
            sys.stderr.write("\r" + " " * (self.WIDTH + 52) + "\r")
            sys.stderr.flush()
