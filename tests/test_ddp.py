"""DistributedDataParallel: the train command under torchrun with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from tests.training_helpers import write_2d_dataset  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

PLUGIN = """
import sys
sys.path.insert(0, {tests!r})
import conftest
conftest.register_tiny_network()
"""

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

TRAIN_THEN_LIST_THREADS = """
import os
import tiny_arch_plugin
from napari_lgms.training.engine import train

train(dict(model="tiny_test_net", model_args={{"in_channels": 1, "num_classes": 1}}, data={data!r},
           patch_size=[32, 32], epochs=1, batch_size=2, val_fraction=0.3, device="cpu", name="m",
           output={output!r} + os.environ["RANK"]))
names = [open(f"/proc/self/task/{{task}}/comm").read().strip() for task in os.listdir("/proc/self/task")]
with open({output!r} + os.environ["RANK"] + ".threads", "w") as report:
    report.write(" ".join(sorted(names)))
"""


def _torchrun_setup(tmp_path):
    """(dataset folder, environment) for a 2-rank CPU torchrun that can import ``tiny_arch_plugin``."""
    data = write_2d_dataset(tmp_path / "data", count=10)
    (tmp_path / "tiny_arch_plugin.py").write_text(PLUGIN.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "NAPARI_LGMS_DEVICE": "cpu"}
    return data, env


def test_torchrun_two_cpu_ranks_write_once(tmp_path):
    data, env = _torchrun_setup(tmp_path)
    out = tmp_path / "out"
    command = [
        *TORCHRUN, "-m", "napari_lgms.cli", "train", "--imports", "tiny_arch_plugin", "--model", "tiny_test_net",
        "--model-args", '{"in_channels": 1, "num_classes": 1}', "--data", str(data), "--patch-size", "32", "32",
        "--epochs", "2", "--batch-size", "2", "--val-fraction", "0.3", "--device", "cpu",
        "--name", "ddp-model", "--output", str(out), "--lr", "0.05",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model: ") == 1  # only rank 0 reports
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["ddp-model.json", "ddp-model.safetensors", "checkpoint.pt", "training_log.jsonl",
                            "training_curves.png", "split.json", "train_config.yaml"])
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]  # one writer: no duplicated rows
    card = json.loads((out / "ddp-model.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["command"].startswith("torchrun")
    split = json.loads((out / "split.json").read_text())
    train_count = len(split["train"])
    # DistributedSampler: each rank takes ceil(train/2) samples -> steps per epoch at batch 2
    steps_per_epoch = -(-(-(-train_count // 2)) // 2)
    assert log[-1]["step"] == 2 * steps_per_epoch
    assert 0.0 <= card["metrics"]["dice"] <= 1.0 and "count" not in card["metrics"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc")
def test_process_group_is_gone_after_training(tmp_path):
    """No gloo thread outlives train(): one that does can abort the process as Python shuts down."""
    data, env = _torchrun_setup(tmp_path)
    script = tmp_path / "train_then_list_threads.py"
    script.write_text(TRAIN_THEN_LIST_THREADS.format(data=str(data), output=str(tmp_path / "out")))
    done = subprocess.run([*TORCHRUN, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [(tmp_path / f"out{rank}.threads").read_text() for rank in (0, 1)]  # one file per rank
    assert all("gloo" not in threads for threads in reports), reports
