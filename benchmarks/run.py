"""Inference/training benchmark of napari-lgms against peer networks, on this machine.

    python benchmarks/run.py [--quick] [--threads 2] [--output benchmarks/results.json]

Every case runs in its own child process (its peak resident memory, ru_maxrss,
is the case's memory); inside a case, the variants being compared run
interleaved (A B A B ...) after one warm-up call each, and the median is
reported. Variants: ``e2e_eager`` / ``e2e_fast`` (``napari_lgms.inference.segment``
on a uint8/float image, preprocessing and resampling included, with the
optimised path off / on) and ``model_eager`` / ``model_fast`` (the network alone
on a (1, C, *S) tensor). FLOPs come from ``torch.utils.flop_counter`` on the
meta device; achieved/peak compares with a measured fp32 matmul rate.
Prints a table, writes JSON and a plot. ``--quick`` is a smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS_2D = ("lgmsnet", "unext", "cmunext", "tinyunet", "esdmrnet")
MODELS_3D = ("lgmsnet3d", "esdmrnet3d")
CASES_2D = {"2d256": (256, 5), "2d512": (512, 3), "2d2048": (2048, 1)}  # size, repeats
CASES_3D = {"3d96": (96, 1), "3d160": (160, 1)}
LARGE_CASE_MODELS = ("lgmsnet", "unext", "lgmsnet3d")
PEER_SHAPES = {2: ((256, 256), (512, 512)), 3: ((96, 96, 96),)}


# ------------------------------------------------------------------------------ child side
def _median_interleaved(variants: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds per variant; variants run A B A B ... after one warm-up call each."""
    if warmup:
        for run in variants.values():
            run()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _flops(build, shape) -> float | None:
    """FLOPs of one forward of ``build()`` on a zero tensor of ``shape``, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            network = build().eval()
            x = torch.empty(shape)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(x)
        return float(counter.get_total_flops())
    except Exception:  # some operators have no meta kernel
        return None


def _image(spatial: tuple[int, ...], channels: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if len(spatial) == 3:
        return rng.normal(100.0, 20.0, spatial).astype(np.float32)
    from napari_lgms.samples import make_endoscopy

    image, _ = make_endoscopy(spatial)
    return image if channels == 3 else image.mean(-1).astype(np.uint8)


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def child_ours(job: dict) -> dict:
    import torch

    from napari_lgms.inference import fast, segment
    from napari_lgms.models import create_model
    from napari_lgms.zoo import LoadedModel, untrained_card

    name, size, repeats = job["model"], job["size"], job["repeats"]
    torch.manual_seed(0)
    network = create_model(name).eval()
    card = untrained_card(name)
    model = LoadedModel(network, card, None, "untrained")
    dims, channels = card.spatial_dims, card.in_channels
    spatial = (size,) * dims
    patch = tuple(card.input.patch_size)
    image = _image(spatial, channels)
    results: dict = {"model": name, "input": "x".join(map(str, spatial))}

    def eager_e2e():
        with fast.disabled():
            return segment(image, model)

    def fast_e2e():
        return segment(image, model)

    big = any(s > 2 * p for s, p in zip(spatial, patch))
    variants = {"e2e_eager": eager_e2e, "e2e_fast": fast_e2e}
    tensor_shape = (1, channels) + spatial
    if not big and not (dims == 3 and size > patch[0]):
        x = torch.randn(tensor_shape)
        optimized = fast.inference_network(network, torch.device("cpu"))

        def eager_model():
            with torch.inference_mode():
                network(x)

        def fast_model():
            with torch.inference_mode():
                optimized(x)

        variants.update(model_eager=eager_model, model_fast=fast_model)
        results["flops"] = _flops(lambda: create_model(name), tensor_shape)
        results["backend"] = type(optimized).__name__
    if size > patch[0]:
        # Windows have the patch shape: warm up (export, first call) on one patch-sized image only.
        warm = _image(patch, channels)
        started = time.perf_counter()
        segment(warm, model)
        results["prepare_s"] = time.perf_counter() - started
        with fast.disabled():
            segment(warm, model)
        medians = _median_interleaved(variants, repeats, warmup=False)
    else:
        started = time.perf_counter()
        fast_e2e()
        results["prepare_s"] = time.perf_counter() - started  # first call: includes export/session
        medians = _median_interleaved(variants, repeats)
    eager_labels, fast_labels = eager_e2e().labels, fast_e2e().labels
    results["dice_fast_vs_eager"] = min(
        [_dice(eager_labels == v, fast_labels == v) for v in set(eager_labels.ravel().tolist()) - {0}] or [1.0])
    results["seconds"] = medians
    results["repeats"] = repeats
    return results


def child_peer(job: dict) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import peers

    build, dims = peers.PEERS[job["peer"]]
    if job["peer"].startswith("sam"):
        shapes = [(1, 3, peers.SAM_INPUT, peers.SAM_INPUT)]
    else:
        shapes = [(1, 3 if dims == 2 else 1) + s for s in PEER_SHAPES[dims]]
    module, version, what = build()
    rows = []
    for shape in shapes:
        x = torch.randn(shape)
        if not job["peer"].startswith("sam") and shape[1] != 1:
            builder = peers.monai_basic_unet if "monai" in job["peer"] else peers.nnunet_plain_unet
            module = builder(dims, in_channels=shape[1])[0]

        def forward():
            with torch.inference_mode():
                module(x)

        seconds = _median_interleaved({"model_eager": forward}, job["repeats"])
        flops = _flops_of_module(module, shape)
        rows.append({"input": "x".join(map(str, shape[2:])), "seconds": seconds, "flops": flops})
    return {"peer": job["peer"], "version": version, "what": what, "rows": rows,
            "parameters": sum(p.numel() for p in module.parameters())}


def _flops_of_module(module, shape) -> float | None:
    """FLOPs of one forward of an existing module (real tensors; for peers, whose builders differ)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            module(torch.zeros(shape))
        return float(counter.get_total_flops())
    except Exception:
        return None


def child_matmul(job: dict) -> dict:
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(job["repeats"]):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    best = min(times)
    return {"n": n, "gflops_peak": 2 * n ** 3 / best / 1e9, "gflops_median": 2 * n ** 3 / statistics.median(times) / 1e9}


def child_ablation(job: dict) -> dict:
    """LGMSNet 2D 256x256, model only: each optimisation alone, interleaved, as ratios to eager."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from napari_lgms.inference import fast
    from napari_lgms.models import create_model

    network = create_model(job.get("model", "lgmsnet")).eval()
    x = torch.randn(1, 3, 256, 256)
    folded = fast.optimize_for_inference(network)
    channels_last = fast.optimize_for_inference(network, channels_last=True)
    variants = {"eager": network, "no_grad_only": network, "bn_folded": folded,
                "bn_folded+channels_last": channels_last}
    calls = {}
    for label, module in variants.items():
        context = torch.no_grad if label == "no_grad_only" else torch.inference_mode
        calls[label] = (lambda m=module, c=context: _call(m, x, c))
    calls["eager_with_grad"] = lambda: network(x)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return channels_last(x)

    def sdpa_math():
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
            return channels_last(x)

    calls["bf16_autocast+channels_last"] = bf16
    calls["sdpa_math+channels_last"] = sdpa_math
    extra = {}
    if fast.onnxruntime_available():
        started = time.perf_counter()
        ort = fast.build_inference_network(network, "cpu", backend="onnxruntime")
        ort(x)
        extra["onnxruntime_prepare_s"] = time.perf_counter() - started
        calls["onnxruntime"] = lambda: _call(ort, x, torch.inference_mode)
    with torch.inference_mode():
        reference = network(x)
    errors = {}
    for label, run in calls.items():
        with torch.inference_mode():
            out = run()
        errors[label] = float((out.float() - reference).abs().max())
    seconds = _median_interleaved(calls, job["repeats"])
    return {"model": job.get("model", "lgmsnet"), "input": "256x256", "seconds": seconds,
            "max_abs_diff": errors, **extra}


def child_compile(job: dict) -> dict:
    """torch.compile (inductor) of the folded LGMSNet: compile time and steady-state latency."""
    import torch

    from napari_lgms.inference import fast
    from napari_lgms.models import create_model

    network = create_model("lgmsnet").eval()
    folded = fast.optimize_for_inference(network)
    x = torch.randn(1, 3, 256, 256)
    started = time.perf_counter()
    try:
        compiled = torch.compile(folded)
        with torch.inference_mode():
            compiled(x)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    compile_s = time.perf_counter() - started
    seconds = _median_interleaved({"eager": lambda: _call(network, x, torch.inference_mode),
                                   "compiled": lambda: _call(compiled, x, torch.inference_mode)}, job["repeats"])
    return {"compile_s": compile_s, "seconds": seconds}


def _call(module, x, context):
    with context():
        return module(x)


def _write_examples(folder: Path, count: int, size: int, channels: int) -> None:
    import numpy as np
    import tifffile

    from napari_lgms.samples import make_endoscopy

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        image, mask = make_endoscopy((size, size), seed=i)
        tifffile.imwrite(folder / "images" / f"ex{i}.tif", image if channels == 3 else image.mean(-1).astype(np.uint8))
        tifffile.imwrite(folder / "masks" / f"ex{i}.tif", mask)


def child_train(job: dict) -> dict:
    """Images/s of the training engine's own loop (train_steps) at 256x256, batch 8, on
    ``job["device"]`` (default cpu) in ``job["precision"]`` (default fp32)."""
    try:
        from napari_lgms.training import train_steps
    except (ImportError, AttributeError) as error:
        return {"skipped": f"training API missing: {error}"}
    batch, steps = 8, job["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_examples(tmp / "data", 10, 256, 3)
        config = dict(name="bench", model=job["model"], images=str(tmp / "data" / "images"),
                      masks=str(tmp / "data" / "masks"), patch_size=[256, 256], batch_size=batch, epochs=1,
                      samples_per_epoch=batch * (steps + 1), val_fraction=0.2, output=str(tmp / "run"),
                      device=job.get("device", "cpu"), precision=job.get("precision", "fp32"), workers=0)
        marks = []
        for progress in train_steps(config):
            if progress.phase == "train" and progress.step >= 1:
                marks.append((progress.step, time.perf_counter()))
    marks = sorted(dict(marks).items())
    if len(marks) < 2:
        return {"skipped": "fewer than two training steps reported"}
    (first_step, first_time), (last_step, last_time) = marks[0], marks[-1]
    rate = batch * (last_step - first_step) / (last_time - first_time)
    return {"model": job["model"], "batch": batch, "input": "256x256", "images_per_s": rate,
            "steps_timed": last_step - first_step, "device": job.get("device", "cpu"),
            "precision": job.get("precision", "fp32")}


def child_finetune(job: dict) -> dict:
    """Wall time of finetune(preset="fast") on 10 corrected 256x256 examples (a corrections store)."""
    try:
        from napari_lgms.corrections import CorrectionsStore
        from napari_lgms.training import finetune
    except (ImportError, AttributeError) as error:
        return {"skipped": f"fine-tuning API missing: {error}"}
    import numpy as np
    import torch

    from napari_lgms.models import create_model
    from napari_lgms.samples import make_endoscopy
    from napari_lgms.zoo import save_model, untrained_card

    name = job["model"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        parent = save_model(create_model(name).eval(), untrained_card(name), tmp / "parent")
        store = CorrectionsStore(tmp / "store")
        for i in range(10):
            image, mask = make_endoscopy((256, 256), seed=100 + i)
            store.save(f"ex{i}", image, mask, np.zeros_like(mask), model=name)
        options = {"time_budget": job["budget"]} if job.get("budget") else {}
        started = time.perf_counter()
        result = finetune(str(parent), corrections=str(store.root), output=str(tmp / "out"), preset="fast",
                          device="cpu", **options)
        wall = time.perf_counter() - started
    return {"model": name, "wall_s": wall, "steps": result.steps, "dice_before": result.metrics_before.get("dice"),
            "dice_after": result.metrics_after.get("dice"), "budget": job.get("budget") or "preset"}


CHILDREN = {"ours": child_ours, "peer": child_peer, "matmul": child_matmul, "ablation": child_ablation,
            "compile": child_compile, "train": child_train, "finetune": child_finetune}


def run_child(job: dict) -> None:
    import torch

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    result = CHILDREN[job["kind"]](job)
    result.update(kind=job["kind"], peak_rss_mib=_peak_rss_mib(), child_wall_s=time.perf_counter() - started)
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------ parent side
def plan(quick: bool) -> list[dict]:
    jobs: list[dict] = [{"kind": "matmul", "repeats": 5}]
    if quick:
        jobs += [{"kind": "ours", "model": "lgmsnet", "size": 256, "repeats": 2},
                 {"kind": "ours", "model": "unext", "size": 512, "repeats": 1},
                 {"kind": "ablation", "repeats": 1},
                 {"kind": "peer", "peer": "monai_basicunet_2d", "repeats": 1},
                 {"kind": "train", "model": "unext", "steps": 1},
                 {"kind": "finetune", "model": "unext", "budget": 15.0}]
        return jobs
    jobs.append({"kind": "ablation", "repeats": 5})
    # The slowest cases (tiled 2048^2, sliding-window 160^3: minutes each on 2 cores) run for
    # LARGE_CASE_MODELS only, to keep a full run near 15-20 minutes on 2 shared cores.
    for name in MODELS_2D:
        for case, (size, repeats) in CASES_2D.items():
            if size < 2048 or name in LARGE_CASE_MODELS:
                jobs.append({"kind": "ours", "model": name, "size": size, "repeats": repeats})
    for name in MODELS_3D:
        for case, (size, repeats) in CASES_3D.items():
            if size < 160 or name in LARGE_CASE_MODELS:
                jobs.append({"kind": "ours", "model": name, "size": size, "repeats": repeats})
    for peer in ("sam_vit_b", "sam_vit_t_sized", "monai_basicunet_2d", "nnunet_plainunet_2d",
                 "monai_basicunet_3d", "nnunet_plainunet_3d"):
        jobs.append({"kind": "peer", "peer": peer, "repeats": 1 if peer.endswith("3d") or peer == "sam_vit_b" else 3})
    jobs += training_jobs()
    jobs += [{"kind": "finetune", "model": "lgmsnet"}, {"kind": "compile", "repeats": 3}]
    return jobs


def training_jobs() -> list[dict]:
    """Every 2D model through the training loop: CPU fp32 and bf16 (what ``precision: auto``
    picks on CPUs with native bf16), plus CUDA bf16 where a GPU is present."""
    import torch

    variants = [("cpu", "fp32"), ("cpu", "bf16")]
    if torch.cuda.is_available():
        variants.append(("cuda", "bf16"))
    return [{"kind": "train", "model": name, "steps": 2 if device == "cpu" else 10, "device": device,
             "precision": precision} for name in MODELS_2D for device, precision in variants]


def describe(job: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in job.items() if k not in ("threads",))


def run_jobs(jobs: list[dict], threads: int, timeout: float, output: Path) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from _options import cpu_info

    report = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py"] + sys.argv[1:]),
        "machine": {"cpu": cpu_info()["name"], "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "onnxruntime": _version_or_none("onnxruntime"), "load_average_start": os.getloadavg()},
        "results": [],
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for index, job in enumerate(jobs, 1):
        job = dict(job, threads=threads)
        print(f"[{index}/{len(jobs)}] {describe(job)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                                       capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                result = json.loads(lines[-1][len("RESULT "):])
            else:
                tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
                result = {"kind": job["kind"], "error": tail[:300]}
        except subprocess.TimeoutExpired:
            result = {"kind": job["kind"], "error": f"timed out after {timeout:.0f} s"}
        result["job"] = job
        result["wall_s"] = time.perf_counter() - started
        report["results"].append(result)
        print(f"    {time.perf_counter() - started:.1f} s" + (f"  ERROR {result['error']}" if "error" in result else "")
              + (f"  SKIPPED {result['skipped']}" if "skipped" in result else ""), file=sys.stderr, flush=True)
        _write_json(output, report)
    report["machine"]["load_average_end"] = os.getloadavg()
    _write_json(output, report)
    return report


def _write_json(path: Path, report: dict) -> None:
    from napari_lgms._atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=1))


def _version_or_none(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def table(report: dict) -> str:
    peak = next((r.get("gflops_peak") for r in report["results"] if r["kind"] == "matmul" and "gflops_peak" in r), None)
    lines = [f"peak fp32 matmul: {peak:.1f} GFLOP/s" if peak else "peak fp32 matmul: n/a", ""]
    header = f"{'network':<22} {'input':<12} {'variant':<12} {'ms':>10} {'vs eager':>8} {'GFLOP':>8} {'% peak':>7} {'RSS MiB':>8}"
    lines += [header, "-" * len(header)]

    def row(network, input_, variant, seconds, eager, flops, rss):
        ratio = f"{seconds / eager:.2f}" if eager else ""
        gflop = f"{flops / 1e9:.1f}" if flops and variant.startswith("model") else ""
        share = f"{100 * flops / seconds / 1e9 / peak:.1f}" if flops and peak and variant.startswith("model") else ""
        lines.append(f"{network:<22} {input_:<12} {variant:<12} {1e3 * seconds:>10.1f} {ratio:>8} {gflop:>8} {share:>7} {rss:>8.0f}")

    for r in report["results"]:
        if r["kind"] == "ours" and "seconds" in r:
            s = r["seconds"]
            for variant in ("e2e_eager", "e2e_fast", "model_eager", "model_fast"):
                if variant in s:
                    eager = s.get(variant.replace("fast", "eager")) if variant.endswith("fast") else None
                    row(r["model"], r["input"], variant, s[variant], eager, r.get("flops"), r["peak_rss_mib"])
        elif r["kind"] == "peer" and "rows" in r:
            for item in r["rows"]:
                row(r["peer"], item["input"], "model_eager", item["seconds"]["model_eager"], None, item["flops"],
                    r["peak_rss_mib"])
    lines.append("")
    for r in report["results"]:
        if r["kind"] == "ablation" and "seconds" in r:
            eager = r["seconds"]["eager"]
            lines.append(f"ablation ({r['model']} {r['input']}, model only), ratio to eager (inference_mode):")
            for label, seconds in r["seconds"].items():
                lines.append(f"  {label:<30} {1e3 * seconds:8.1f} ms  {seconds / eager:5.2f}  max|diff| {r['max_abs_diff'][label]:.1e}")
        elif r["kind"] == "compile":
            if "error" in r:
                lines.append(f"torch.compile: {r['error']}")
            else:
                s = r["seconds"]
                lines.append(f"torch.compile (lgmsnet 256, folded): compile {r['compile_s']:.1f} s, "
                             f"{1e3 * s['compiled']:.1f} ms vs eager {1e3 * s['eager']:.1f} ms ({s['compiled'] / s['eager']:.2f})")
        elif r["kind"] == "train":
            lines.append(f"training {r.get('model', '')}: " + (r.get("skipped") or r.get("error") or
                         f"{r['images_per_s']:.2f} images/s (256x256, batch 8, {r.get('device', 'cpu')} "
                         f"{r.get('precision', 'fp32')}), peak RSS {r['peak_rss_mib']:.0f} MiB"))
        elif r["kind"] == "finetune":
            lines.append(f"fine-tune {r.get('model', '')} preset fast: " + (r.get("skipped") or r.get("error") or
                         f"{r['wall_s']:.1f} s wall, {r['steps']} steps, dice {r['dice_before']:.3f} -> {r['dice_after']:.3f}, "
                         f"peak RSS {r['peak_rss_mib']:.0f} MiB"))
        elif "error" in r:
            lines.append(f"{describe(r['job'])}: ERROR {r['error']}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, eager, fast = [], [], []
    for r in report["results"]:
        if r["kind"] == "ours" and "seconds" in r:
            labels.append(f"{r['model']}\n{r['input']}")
            eager.append(r["seconds"]["e2e_eager"])
            fast.append(r["seconds"]["e2e_fast"])
    peers = [(f"{r['peer']}\n{item['input']}", item["seconds"]["model_eager"])
             for r in report["results"] if r["kind"] == "peer" and "rows" in r for item in r["rows"]]
    columns = 2 if peers else 1
    figure, axes = plt.subplots(1, columns, figsize=(15 if peers else 9, 6), squeeze=False,
                                gridspec_kw={"width_ratios": [max(len(labels), 1), len(peers)][:columns]})
    axes = axes[0]
    positions = range(len(labels))
    axes[0].bar([p - 0.2 for p in positions], eager, 0.4, label="eager (plain)")
    axes[0].bar([p + 0.2 for p in positions], fast, 0.4, label="optimised (default)")
    axes[0].set_xticks(list(positions), labels, rotation=90, fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("end-to-end seconds (median)")
    axes[0].set_title("napari-lgms segment(), CPU")
    axes[0].legend()
    if peers:
        axes[1].bar(range(len(peers)), [p[1] for p in peers], color="grey")
        axes[1].set_xticks(range(len(peers)), [p[0] for p in peers], rotation=90, fontsize=7)
        axes[1].set_yscale("log")
        axes[1].set_title("peers, network only (random weights)")
    machine = report["machine"]
    capability = f" ({machine['cpu_capability']})" if machine.get("cpu_capability") else ""
    figure.suptitle(f"{machine['cpu']}{capability}, {machine['threads']} threads")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: few cases, few repeats (~3 min)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: the cores)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results[-quick].json)")
    parser.add_argument("--plot", type=Path, help="PNG file (default beside the JSON)")
    parser.add_argument("--only", nargs="*", help="run only jobs whose description contains one of these words")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return 0
    output = args.output or HERE / ("results-quick.json" if args.quick else "results.json")
    jobs = plan(args.quick)
    if args.only:
        jobs = [j for j in jobs if any(word in describe(j) for word in args.only)]
    report = run_jobs(jobs, args.threads, args.timeout, output)
    text = table(report)
    print(text)
    plot(report, args.plot or output.with_suffix(".png"))
    print(f"\nwrote {output} and {(args.plot or output.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
