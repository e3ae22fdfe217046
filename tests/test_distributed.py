"""`train` under `torchrun --nproc_per_node=2` (gloo, CPU) on synthetic data: it finishes, writes one run folder of
checkpoints and logs, every rank sees the same valid Dice, which is the Dice a single process computes from the
checkpoint over the same split, and checkpoints resume in both directions (distributed -> single process ->
distributed)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from petseg.data import OxfordPetDataset, eval_transforms
from petseg.synthetic import make_synthetic_pets
from petseg.losses import dice_per_image
from petseg.checkpoint import load_checkpoint, model_from_checkpoint
from petseg.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this PyTorch build has no gloo backend")

TINY = {"features": (8, 16, 32, 64)}

SCRIPT = """
import os, sys
import torch
torch.set_num_threads(1)
from petseg.training import TrainConfig, train
cfg = TrainConfig(data_root={root!r}, model_kwargs={tiny!r}, image_size=32, batch_size=4, epochs={epochs}, lr=1e-2,
                  scheduler="none", num_workers=0, checkpoint_dir={ckpt!r}, progress=False, live_plot=False,
                  resume={resume!r})
h = train(cfg)
# one write per line: the ranks share stdout, and with PYTHONUNBUFFERED print() writes the newline separately
sys.stdout.write(f"RANK {{os.environ['RANK']}} OF {{os.environ['WORLD_SIZE']}} epochs={{len(h)}} "
                 f"valid_dice={{h[-1]['valid_dice']!r}} run_dir={{h.run_dir}}\\n")
sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    "50 trainval images: 45 train, 5 valid (split 3 + 2 over two ranks, so the shards are uneven)."
    return make_synthetic_pets(tmp_path_factory.mktemp("dist") / "pets", n_trainval=50, n_test=2, size=40, seed=1)


def torchrun(tmp_path: Path, pets: Path, epochs: int, resume: str | None = None) -> dict[int, float]:
    "Run the training script on 2 CPU processes; return each rank's last valid Dice."
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(root=str(pets), tiny=TINY, epochs=epochs, ckpt=str(tmp_path / "ckpt"),
                                    resume=resume))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    found = re.findall(r"RANK (\d) OF 2 epochs=(\d+) valid_dice=([0-9.e-]+) run_dir=(\S+)", proc.stdout)
    assert sorted(int(r) for r, _, _, _ in found) == [0, 1], proc.stdout
    assert all(int(n) == epochs for _, n, _, _ in found)
    assert len({d for _, _, _, d in found}) == 1  # one run folder, the same on every rank
    assert proc.stdout.count("epoch 1/") <= 1  # only rank 0 prints the epoch lines
    return {int(r): float(d) for r, _, d, _ in found}


def single_process_dice(ckpt_path: Path, pets: Path) -> float:
    "Mean per-image Dice over the whole valid split, from the checkpoint, in this process (model + losses only)."
    model, ck = model_from_checkpoint(ckpt_path)
    ds = OxfordPetDataset(pets, "valid", transform=eval_transforms(ck["image_size"], ck["mean"], ck["std"]))
    with torch.no_grad():
        dice = [dice_per_image(model(ds[i]["image"][None]), ds[i]["mask"][None]).item() for i in range(len(ds))]
    return sum(dice) / len(dice)


def test_torchrun_two_processes_and_resume_both_ways(pets, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try: _check(pets, tmp_path)
    finally: torch.set_num_threads(n)


def _check(pets: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    # 1. two processes, two epochs
    dice = torchrun(tmp_path, pets, epochs=2)
    assert dice[0] == dice[1]  # every rank sees the same mean Dice
    assert [p.name for p in ckpt_dir.iterdir()] == ["unet"]  # one run folder, written by rank 0 only
    run_dir = ckpt_dir / "unet"
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events.")) == \
        [".lock", ".petseg-run", "best.pt", "config.json", "last.pt", "metrics.csv"]
    assert len([p for p in run_dir.iterdir() if p.name.startswith("events.out.tfevents")]) == 1
    with open(run_dir / "metrics.csv") as f: assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    last = run_dir / "last.pt"
    ck = load_checkpoint(last)
    assert ck["world_size"] == 2 and ck["epoch"] == 2
    assert not any(k.startswith("module.") for k in ck["model_state"])  # the unwrapped model's weights
    assert ck["metrics"]["valid_dice"] == dice[0]
    assert single_process_dice(last, pets) == pytest.approx(dice[0], abs=1e-9)
    # 2. the distributed checkpoint resumes in a single process
    more = train(TrainConfig(resume=str(last), epochs=3, progress=False, live_plot=False))
    assert [r["epoch"] for r in more] == [1, 2, 3] and load_checkpoint(last)["world_size"] == 1
    # 3. and that single-process checkpoint resumes under torchrun
    dice = torchrun(tmp_path, pets, epochs=4, resume=str(last))
    ck = load_checkpoint(last)
    assert (ck["epoch"], ck["world_size"], len(ck["history"])) == (4, 2, 4)
    assert single_process_dice(last, pets) == pytest.approx(dice[0], abs=1e-9) and dice[0] == dice[1]
    assert [p.name for p in ckpt_dir.iterdir()] == ["unet"]  # resumed runs keep writing into the same run folder
    with open(run_dir / "metrics.csv") as f: assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
