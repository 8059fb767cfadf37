"""Optimised inference copies of a network, used by the segmentation engine.

:func:`inference_network` returns a frozen copy of a network prepared for
inference, cached per network until its weights change:

* batch-norm folded into the preceding convolution (``conv -> BN`` inside an
  ``nn.Sequential``, and modules that declare ``norm_follows_conv``: their forward
  applies ``self.norm`` to ``self.conv``'s output first); GroupNorm, LayerNorm and
  InstanceNorm depend on the input and stay as they are;
* parameters without gradients, eval mode;
* on the CPU, when ``onnxruntime`` is installed, for the architectures registered
  as ``onnxruntime_faster`` (0.25-0.60 of eager torch in ``benchmarks/run.py``):
  the forward pass runs in ONNX Runtime with all graph optimisations (one
  fixed-shape export per window shape, made on first use: a few seconds once per
  model and shape);
* otherwise channels-last memory format for 2D networks.

The benchmark (``benchmarks/run.py``) measured each of these against the
plain eager path; see ``benchmarks/README.md``.

Each optimisation is exact up to float rounding; the copy is checked against the
original on a small random input when it is built and the original is used if
they disagree. :func:`disabled` (a context manager) or ``NAPARI_LGMS_FAST=0``
switch the whole path off, for the benchmark's eager baseline.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_lgms.models.layout import use_layout_for

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CHECK_TOLERANCE = 1e-3  # max |difference| / (max |logit| + 1) accepted for the optimised copy


@dataclass
class FastSettings:
    """Which optimisations :func:`inference_network` applies (process-wide).

    ``enabled`` and ``onnxruntime`` left at None follow ``NAPARI_LGMS_FAST`` and ``NAPARI_LGMS_ORT``
    ("0" switches off), read when a network is prepared.
    """

    enabled: bool | None = None
    fold_batch_norm: bool = True
    channels_last: bool = True  # 2D torch path only
    onnxruntime: bool | None = None  # CPU only, when installed

    def is_enabled(self) -> bool:
        return self.enabled if self.enabled is not None else os.environ.get("NAPARI_LGMS_FAST", "1") != "0"

    def uses_onnxruntime(self) -> bool:
        return self.onnxruntime if self.onnxruntime is not None else os.environ.get("NAPARI_LGMS_ORT", "1") != "0"


SETTINGS = FastSettings()
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@contextlib.contextmanager
def disabled():
    """Within the block, :func:`inference_network` returns the network unchanged (plain eager path)."""
    previous = SETTINGS.enabled
    SETTINGS.enabled = False
    try:
        yield
    finally:
        SETTINGS.enabled = previous


def _can_fold(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and isinstance(norm, _BATCH_NORMS)
        and norm.track_running_stats
        and norm.running_mean is not None
        and conv.out_channels == norm.num_features
    )


def fold_batch_norms(network: nn.Module) -> int:
    """Fold eval-mode BatchNorms into the convolution before them, in place; returns how many.

    The network must be in eval mode (running statistics are used).
    """
    folded = 0
    for module in list(network.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if _can_fold(conv, norm):
                    module._modules[first] = fuse_conv_bn_eval(conv, norm)
                    module._modules[second] = nn.Identity()
                    folded += 1
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if conv is not None and norm is not None and _can_fold(conv, norm) and getattr(module, "norm_follows_conv", False):
            module.conv = fuse_conv_bn_eval(conv, norm)
            module.norm = nn.Identity()
            folded += 1
    return folded


def optimize_for_inference(network: nn.Module, *, fold_batch_norm: bool = True,
                           channels_last: bool = False) -> nn.Module:
    """A frozen eval-mode copy of ``network`` with the chosen optimisations; the original is untouched.

    Same call contract as the original: (N, C, *spatial) -> (N, K, *spatial).
    """
    optimized = copy.deepcopy(network).eval()
    for parameter in optimized.parameters():
        parameter.requires_grad_(False)
    folded = fold_batch_norm and fold_batch_norms(optimized)
    if channels_last:
        optimized = _ChannelsLast(optimized)
    for name in ("architecture", "arguments", "size_divisor"):
        if hasattr(network, name):
            setattr(optimized, name, getattr(network, name))
    optimized.folded_batch_norms = int(folded or 0)
    return optimized


class _ChannelsLast(nn.Module):
    """Runs the wrapped network on channels-last input; returns contiguous logits."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        dims = getattr(network, "spatial_dims", None) or int(getattr(network, "arguments", {}).get("spatial_dims", 2))
        self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        self.network.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=self.memory_format)).contiguous()


class OnnxRuntimeNetwork(nn.Module):
    """(N, C, *S) -> (N, K, *S) through ONNX Runtime: one fixed-shape export per input shape.

    Samples run one at a time (exports have batch 1). Exports and sessions are
    made on first use of a shape and kept; ``network`` is the (folded) torch
    module being exported, also used when a shape cannot be exported.
    """

    def __init__(self, network: nn.Module, threads: int | None = None):
        super().__init__()
        self.network = network
        self.threads = threads
        self._sessions: dict[tuple[int, ...], object] = {}
        # napari's worker thread and the main thread may ask for the same new shape at once:
        # export it once (torch.onnx.export is not safe to run concurrently on one module).
        self._sessions_lock = threading.Lock()
        for name in ("architecture", "arguments", "size_divisor", "folded_batch_norms"):
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))

    def session(self, sample_shape: tuple[int, ...]):
        """The session for inputs (1, C, *S) of ``sample_shape``; None when export failed."""
        from napari_lgms.export import ExportError, onnx_bytes, ort_session

        with self._sessions_lock:
            if sample_shape not in self._sessions:
                try:
                    model_bytes = cached_onnx_bytes(self.network, sample_shape, onnx_bytes)
                    self._sessions[sample_shape] = ort_session(model_bytes, self.threads)
                except ExportError:
                    self._sessions[sample_shape] = None
            return self._sessions[sample_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from napari_lgms.export import INPUT_NAME

        outputs = []
        for sample in x.split(1):
            session = self.session(tuple(sample.shape))
            if session is None:
                outputs.append(self.network(sample))
            else:
                array = sample.detach().to("cpu", torch.float32).contiguous().numpy()
                outputs.append(torch.from_numpy(session.run(None, {INPUT_NAME: array})[0]))
        return torch.cat(outputs)


ONNX_CACHE_BYTES = 1 << 30  # exported graphs kept on disk, least recently used dropped first


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept between sessions (``$NAPARI_LGMS_CACHE_DIR`` overrides)."""
    override = os.environ.get("NAPARI_LGMS_CACHE_DIR")
    if override:
        return Path(override).expanduser() / "onnx"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-lgms", appauthor=False)) / "onnx"


def _weights_digest(network: nn.Module, sample_shape: tuple[int, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{torch.__version__}|{getattr(network, 'architecture', type(network).__name__)}|"
                  f"{sorted((getattr(network, 'arguments', None) or {}).items())}|{sample_shape}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_onnx_bytes(network: nn.Module, sample_shape: tuple[int, ...], export) -> bytes:
    """``export(network, sample_shape)``, kept on disk by a digest of weights, arguments and shape.

    The export costs seconds per model and shape; the cache makes that a
    once-per-machine cost. A cache that cannot be read or written is skipped.
    """
    from napari_lgms._atomic import atomic_write_bytes

    path = onnx_cache_dir() / f"{_weights_digest(network, sample_shape)}.onnx"
    with contextlib.suppress(OSError):
        model_bytes = path.read_bytes()
        os.utime(path)  # recently used: pruned last
        return model_bytes
    model_bytes = export(network, sample_shape)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, model_bytes)
        prune_onnx_cache(path.parent)
    return model_bytes


def prune_onnx_cache(folder: Path, max_bytes: int = ONNX_CACHE_BYTES) -> None:
    """Delete the least recently used graphs until the folder holds at most ``max_bytes``."""
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in files:
        total += path.stat().st_size
        if total > max_bytes:
            path.unlink(missing_ok=True)


def onnxruntime_available() -> bool:
    """Whether the exporter (onnx) and ONNX Runtime are installed, without importing them: the onnx
    extension holds the GIL while it starts, which would freeze napari for half a second."""
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def _fingerprint(network: nn.Module, device) -> tuple:
    tensors = list(network.parameters()) + list(network.buffers())
    return (str(device), SETTINGS.fold_batch_norm, SETTINGS.channels_last, SETTINGS.uses_onnxruntime(),
            tuple((t.data_ptr(), t._version, t.dtype) for t in tensors))


def _onnxruntime_faster(network: nn.Module) -> bool:
    from napari_lgms.models.registry import get_architecture

    try:
        return get_architecture(str(getattr(network, "architecture", ""))).onnxruntime_faster
    except (KeyError, ValueError):
        return False


def _spatial_dims(network: nn.Module) -> int:
    arguments = getattr(network, "arguments", None) or {}
    return int(arguments.get("spatial_dims", getattr(network, "spatial_dims", 2)))


def _check_input(network: nn.Module, device) -> torch.Tensor | None:
    arguments = getattr(network, "arguments", None) or {}
    channels = int(arguments.get("in_channels", getattr(network, "in_channels", 0)) or 0)
    if not channels:
        return None
    size = max(32, int(getattr(network, "size_divisor", 1) or 1))
    generator = torch.Generator().manual_seed(0)
    return torch.randn((1, channels) + (size,) * _spatial_dims(network), generator=generator).to(device)


def _agrees(original: nn.Module, optimized: nn.Module, device) -> bool:
    sample = _check_input(original, device)
    if sample is None:
        return True
    with torch.inference_mode():
        expected = original(sample).float()
        actual = optimized(sample).float()
    if expected.shape != actual.shape:
        return False
    scale = float(expected.abs().max()) + 1.0
    return float((expected - actual).abs().max()) <= CHECK_TOLERANCE * scale


def build_inference_network(network: nn.Module, device, *, backend: str = "auto") -> nn.Module:
    """An optimised copy of ``network`` for ``device``; ``backend``: "auto", "torch" or "onnxruntime".

    "auto" takes ONNX Runtime on the CPU for the architectures registered as ``onnxruntime_faster``
    when it is installed and enabled, else torch.
    """
    device = torch.device(device)
    use_ort = backend == "onnxruntime" or (
        backend == "auto" and SETTINGS.uses_onnxruntime() and device.type == "cpu"
        and _onnxruntime_faster(network) and onnxruntime_available()
    )
    channels_last = SETTINGS.channels_last and not use_ort and _spatial_dims(network) == 2
    optimized = optimize_for_inference(network, fold_batch_norm=SETTINGS.fold_batch_norm,
                                       channels_last=channels_last).to(device)
    if use_ort:
        return OnnxRuntimeNetwork(optimized)
    use_layout_for(optimized, device, training=False)
    return optimized


def inference_network(network: nn.Module, device=None) -> nn.Module:
    """The network to run for inference: an optimised copy (cached), or ``network`` itself.

    ``network`` itself when the fast path is off, when it is in training mode,
    when building the copy fails, or when the torch copy disagrees with it on a
    small random input. The
    cache entry is rebuilt whenever a parameter or buffer of ``network``
    changes (in-place updates included), so fine-tuning in place never leaves
    a stale copy.
    """
    if not SETTINGS.is_enabled() or network.training:
        return network
    if device is None:
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
    key = _fingerprint(network, device)
    with _LOCK:
        cached = _CACHE.get(network)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            optimized = build_inference_network(network, device)
            # An ONNX check would cost a second export; tests/test_fast_inference.py covers it instead.
            if not isinstance(optimized, OnnxRuntimeNetwork) and not _agrees(network, optimized, device):
                optimized = network
        except Exception:  # an optimisation that cannot be built must never stop a segmentation
            optimized = network
        _CACHE[network] = (key, optimized)
        return optimized
