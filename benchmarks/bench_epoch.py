#!/usr/bin/env python
"""End-to-end benchmark: epoch time and time to a target valid Dice with `petseg.training` on the real sample.

Trains each --models entry with the full recipe (augmentation, BCE + Dice, AdamW, one-cycle schedule; the uint8
cache; the device-side augmentation where `petseg.training` picks it, i.e. on CUDA) and prints, per model, the
median epoch time (training + validation), the training images/s, the best valid Dice (per-image mean at the
training size) and the wall time from the start of training until the valid Dice first reached each --target-dice.

    python benchmarks/bench_epoch.py                                 # CPU, ResNet34UNet, 256 px, 3 epochs
    python benchmarks/bench_epoch.py --device cuda --epochs 30 --models resnet34_unet,unet
    python benchmarks/bench_epoch.py --smoke                         # seconds, synthetic data, for CI
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench_model import describe_device, loadavg
from petseg.synthetic import make_synthetic_pets
from petseg.training import TrainConfig, train  # the one import of the training module in benchmarks/

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "oxford-pet-sample"


def resolve_device(name: str) -> torch.device:
    "The device that TrainConfig(device=name) trains on: 'auto' picks cuda, then mps, then cpu."
    if name != "auto": return torch.device(name)
    if torch.cuda.is_available(): return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available(): return torch.device("mps")
    return torch.device("cpu")


def summary(model: str, history: list[dict], reached: dict, total_s: float) -> dict:
    "One row of the table from the per-epoch rows so far."
    return dict(model=model, epochs=len(history), epoch_s=statistics.median(r["epoch_time_s"] for r in history),
                first_epoch_s=history[0]["epoch_time_s"], train_ips=statistics.median(r["images_per_s"] for r in history),
                best_dice=max(r["valid_dice"] for r in history), final_dice=history[-1]["valid_dice"], total_s=total_s,
                reached={str(t): v for t, v in reached.items()}, history=[dict(r) for r in history])


def run(model: str, root: Path, args, tmp: Path, done: list[dict]) -> dict:
    """Train `model` once; per-epoch times, best and last Dice and the time to --target-dice from its history.
    With --json, the file is rewritten after every epoch (rows in `done` first), so a run stopped from outside
    still leaves the epochs it finished."""
    cfg = TrainConfig(data_root=str(root), model=model, image_size=args.size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, cache=True, cache_dir=str(tmp / "cache"),
                      num_workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last,
                      checkpoint_dir=str(tmp / "checkpoints"), run_name=model,
                      progress=False, live_plot=False, seed=0)
    start, reached = time.perf_counter(), {}
    def on_epoch(row, history):
        for target in args.targets:
            if target not in reached and row["valid_dice"] >= target: reached[target] = (row["epoch"], time.perf_counter() - start)
        if args.json: write_json(args, done + [summary(model, history, reached, time.perf_counter() - start)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample's unreadable files: reported by the data tests, not here
        history = train(cfg, callbacks=[on_epoch])
    return summary(model, history, reached, time.perf_counter() - start)


def write_json(args, rows: list[dict]) -> None:
    "Write `rows` and the settings to --json (through a temporary file, so a reader never sees half a file)."
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(root="synthetic" if args.smoke else str(args.root), size=args.size,
                                   batch_size=args.batch_size, planned_epochs=args.epochs, amp=args.amp,
                                   channels_last=args.channels_last, workers=args.workers, rows=rows), indent=1, default=float))
    tmp.replace(args.json)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=SAMPLE, help=f"dataset root in the official layout (default {SAMPLE})")
    p.add_argument("--models", default="resnet34_unet", help="comma-separated: unet, resnet34_unet (default resnet34_unet)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda ... (default auto)")
    p.add_argument("--size", type=int, default=256, help="training image size (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per model (default 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the CPU-side pipeline (default 2)")
    p.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (petseg.training's meaning; default auto)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--target-dice", default="0.7,0.75,0.8", help="comma-separated valid Dice values whose first crossing "
                   "is timed (default 0.7,0.75,0.8)")
    p.add_argument("--json", help="also write the results to this JSON file (rewritten after every epoch)")
    p.add_argument("--smoke", action="store_true", help="seconds: synthetic data, 32 px, 1 epoch, tiny batch")
    args = p.parse_args(argv)
    if args.smoke: args.size, args.batch_size, args.epochs, args.workers = 32, 4, 1, 0
    args.targets = sorted(float(t) for t in args.target_dice.split(",") if t.strip())
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as d:
        tmp, root = Path(d), args.root
        if args.smoke: root = make_synthetic_pets(tmp / "pets", n_trainval=20, n_test=2, size=48, seed=0)
        elif not (root / "annotations" / "trainval.txt").exists():
            sys.exit(f"No dataset at {root}: pass --root (official layout, e.g. from `petseg download`) or use --smoke.")
        device = resolve_device(args.device)
        print(f"data: {root}; size {args.size}; batch {args.batch_size}; {args.epochs} epochs; device "
              f"{describe_device(device)}; amp {args.amp}; load average {loadavg()}")
        rows = []
        for m in models: rows.append(run(m, root, args, tmp, rows))
    if args.json: write_json(args, rows)
    head = (f"{'model':15s} {'epochs':>6s} {'epoch s (median)':>17s} {'train img/s':>12s} {'best valid Dice':>16s}"
            + "".join(f" {f'to Dice {t:g}':>20s}" for t in args.targets))
    print(head); print("-" * len(head))
    for r in rows:
        line = f"{r['model']:15s} {r['epochs']:6d} {r['epoch_s']:17.1f} {r['train_ips']:12.1f} {r['best_dice']:16.4f}"
        for t in map(str, args.targets):
            cell = f"{r['reached'][t][1]:.0f} s (epoch {r['reached'][t][0]})" if t in r["reached"] else "not reached"
            line += f" {cell:>20s}"
        print(line)
    print(f"load average at the end: {loadavg()}")
    return rows


if __name__ == "__main__":
    main()
