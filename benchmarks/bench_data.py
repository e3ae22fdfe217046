#!/usr/bin/env python
"""Data pipeline benchmark: training images/s delivered by

  (a) JPEG decode + albumentations `train_transforms` (OxfordPetDataset + DataLoader), per worker count,
  (b) the resized uint8 cache + albumentations `train_transforms`, per worker count,
  (c) the on-device path training takes on a GPU: uint8 cache batches (no CPU transform), moved to --device and
      augmented there by DeviceAugment, per worker count,

next to the rate at which ResNet34UNet consumes images in training on --device (same size and batch), so the
"x model" column says whether the loader keeps up (>= 1) or starves the model (< 1).

Each loader runs one untimed warm-up epoch (worker start-up, page cache), then --epochs timed epochs with
persistent workers; images/s = images delivered / wall time. The cache is built once into a temporary folder
(its build time is printed) so the shared sample stays read-only.

    python benchmarks/bench_data.py                                   # the real sample, CPU
    python benchmarks/bench_data.py --device cuda --workers 0,2,4,8
    python benchmarks/bench_data.py --synthetic 300                   # no dataset at hand: synthetic JPEGs, 500 px
    python benchmarks/bench_data.py --smoke                           # seconds, synthetic data, for CI
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench_model import Runner, loadavg, sync, timed
from bench_model import parse_args as model_args
from petseg.augment import DeviceAugment
from petseg.cache import cached_arrays
from petseg.data import OxfordPetDataset, train_transforms
from petseg.synthetic import make_synthetic_pets

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "oxford-pet-sample"


def loader_rate(ds, batch_size: int, workers: int, epochs: int, device: torch.device, on_device=None) -> float:
    """Images/s of a DataLoader over `ds` after one warm-up epoch; batches are moved to `device` as training would,
    then given to `on_device(images, masks)` when set (the on-device augmentation)."""
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                    persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    def epoch() -> int:
        n = 0
        for b in dl:
            x, y = b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True)
            if on_device: on_device(x, y)
            n += len(x)
        sync(device)
        return n
    epoch()
    t, n = time.perf_counter(), sum(epoch() for _ in range(epochs))
    return n / (time.perf_counter() - t)


def device_augment(size: int, device: torch.device):
    "What the AugmentOnDevice training callback does to a uint8 (N,H,W,3) batch and its (N,H,W) masks on `device`."
    aug = DeviceAugment(size, generator=torch.Generator(device=device).manual_seed(0))
    return lambda x, y: aug(x.permute(0, 3, 1, 2), y.unsqueeze(1))


def model_rate(size: int, batch_size: int, steps: int, device: torch.device) -> float:
    "Training images/s of ResNet34UNet (AdamW, BCEDiceLoss) on random data, as bench_model measures it."
    r = Runner("resnet34_unet", model_args(["--size", str(size), "--batch-size", str(batch_size), "--device", str(device)]), device)
    for _ in range(2): r.train_step()  # warm-up
    return batch_size / statistics.median(timed(r.train_step, device, steps))


def measured(pipeline: str, workers, rate) -> dict:
    """A table row: images/s from `rate()`, or the error it raised (a worker killed for lack of shared memory,
    say), so that one failing loader does not cost the other rows."""
    try: return dict(pipeline=pipeline, workers=workers, ips=rate())
    except Exception as e:  # noqa: BLE001 - reported in the table, not hidden
        print(f"{pipeline}, workers {workers}: failed: {type(e).__name__}: {str(e)[:300]}")
        return dict(pipeline=pipeline, workers=workers, ips=None, error=f"{type(e).__name__}: {str(e)[:300]}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=SAMPLE, help=f"dataset root in the official layout (default {SAMPLE})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for (c) and the model rate")
    p.add_argument("--size", type=int, default=256, help="training image size (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--workers", default=f"0,1,{os.cpu_count()}" if (os.cpu_count() or 1) > 1 else "0",
                   help="comma-separated DataLoader worker counts (default 0,1,<cpu count>)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per loader after one warm-up epoch (default 2)")
    p.add_argument("--model-steps", type=int, default=3, help="timed ResNet34UNet steps for the model rate; 0 skips it")
    p.add_argument("--model-ips", type=float, help="use this model rate (images/s) instead of measuring it")
    p.add_argument("--cache-dir", type=Path, help="where to build the uint8 cache (default: a temporary folder)")
    p.add_argument("--synthetic", type=int, metavar="N", help="use N synthetic trainval pets (JPEGs whose longer side "
                   "is 500 px, about the Oxford photos' size; make_synthetic_pets) instead of --root")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--smoke", action="store_true", help="seconds: synthetic data at 64 px, workers 0, 1 epoch")
    args = p.parse_args(argv)
    if args.smoke: args.size, args.batch_size, args.workers, args.epochs, args.model_steps = 64, 4, "0", 1, 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if args.smoke: root = make_synthetic_pets(Path(tmp) / "pets", n_trainval=40, n_test=4, size=96, seed=0)
        elif args.synthetic: root = make_synthetic_pets(Path(tmp) / "pets", n_trainval=args.synthetic, n_test=1, size=500, seed=0)
        elif not (root / "annotations" / "trainval.txt").exists():
            sys.exit(f"No dataset at {root}: pass --root (official layout, e.g. from `petseg download`) or use --smoke.")
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sample's known unreadable files are reported by the data module's tests
            n_train = len(cached_arrays(root, "train", args.size, cache_dir=cache_dir, progress=False)[0])
            build_s = time.perf_counter() - t
            jpeg_ds = OxfordPetDataset(root, "train", transform=train_transforms(args.size), progress=False)
            cache_ds = OxfordPetDataset(root, "train", transform=train_transforms(args.size), cache_size=args.size,
                                        cache_dir=cache_dir, progress=False)
            raw_ds = OxfordPetDataset(root, "train", cache_size=args.size, cache_dir=cache_dir, progress=False)
        print(f"data: {root} train split, {n_train} images; size {args.size}; batch {args.batch_size}; "
              f"uint8 cache built in {build_s:.1f} s; {os.cpu_count()} CPUs; device {device}; load average {loadavg()}")
        if args.model_ips: model_ips = args.model_ips
        elif args.model_steps: model_ips = model_rate(args.size, args.batch_size, args.model_steps, device)
        else: model_ips = None
        rows = []
        for name, ds in (("(a) JPEG decode + augment", jpeg_ds), ("(b) uint8 cache + augment", cache_ds)):
            for w in workers:
                rows.append(measured(name, w, lambda: loader_rate(ds, args.batch_size, w, args.epochs, device)))
        on_device = device_augment(args.size, device)
        for w in workers:
            rows.append(measured(f"(c) uint8 cache, augment on {device.type}", w,
                                 lambda: loader_rate(raw_ds, args.batch_size, w, args.epochs, device, on_device)))
    head = f"{'pipeline':34s} {'workers':>7s} {'images/s':>10s} {'x model':>8s}"
    print(head); print("-" * len(head))
    for r in rows:
        if r["ips"] is None: print(f"{r['pipeline']:34s} {str(r['workers']):>7s} {'failed':>10s}"); continue
        x = f"{r['ips'] / model_ips:8.2f}" if model_ips else f"{'-':>8s}"
        print(f"{r['pipeline']:34s} {str(r['workers']):>7s} {r['ips']:10.1f} {x}")
    if model_ips:
        print(f"{'ResNet34UNet training consumes':34s} {'':>7s} {model_ips:10.1f} {1.0:8.2f}"
              + ("  (given)" if args.model_ips else f"  (median of {args.model_steps} steps on {device})"))
    print(f"load average at the end: {loadavg()}")
    if args.json:
        data = (f"synthetic ({args.synthetic} trainval JPEGs, longer side 500 px)" if args.synthetic and not args.smoke
                else "synthetic (smoke)" if args.smoke else str(args.root))
        with open(args.json, "w") as f:
            json.dump(dict(data=data, n_train=n_train, size=args.size, batch_size=args.batch_size, device=str(device),
                           cache_build_s=build_s, model_ips=model_ips, model_ips_given=bool(args.model_ips), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
