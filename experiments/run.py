"""Run one named experiment row of issue 23 on the real sample and append its result to experiments/results.csv.

    python experiments/run.py --list                       # the rows
    python experiments/run.py lr:finder --seed 0           # one row: train, pick the best epoch on valid, test once
    python experiments/run.py memory:keep-loss --seed 0    # peak RSS of a loop that keeps every loss tensor
    python experiments/run.py lr:1e-3 --smoke              # seconds, on synthetic pets (what CI runs)

Every row records the exact command that produced it, the size, epochs, seed, CPU seconds and the load average, so
that a row measured on a busy 2-core CPU at 64 px is never mistaken for the course's 256 px GPU recipe.
"""
from __future__ import annotations

import argparse, csv, json, os, resource, shlex, sys, tempfile, time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import petseg.callbacks
from petseg.data import course_data, make_synthetic_pets
from petseg.evaluate import evaluate
from petseg.losses import BCEDiceLoss
from petseg.models import build_model
from petseg.training import TrainConfig, find_lr, train

HERE = Path(__file__).resolve().parent
COLUMNS = ("experiment", "variant", "seed", "model", "image_size", "epochs", "batch_size", "lr", "norm", "loss", "augment",
           "swa", "best_epoch", "valid_dice", "test_dice", "test_dice_batch_stats", "test_images", "peak_rss_mb", "loop_rss_growth_mb",
           "cuda_peak_mb", "cpu_s", "wall_s", "load_avg", "device", "data", "when", "command")

# experiment -> variant -> changes to the base config (keys of TrainConfig, plus 'norm', 'lr_find', 'swa_bn_update')
EXPERIMENTS = {
    "epochs": {"3": dict(epochs=3), "6": dict(epochs=6), "12": dict(epochs=12), "24": dict(epochs=24)},
    "batch": {"16-bn": dict(batch_size=16), "1-bn": dict(batch_size=1), "1-gn": dict(batch_size=1, norm="group"),
              "16-gn": dict(batch_size=16, norm="group")},
    "lr": {"1e-4": dict(lr=1e-4), "1e-3": dict(lr=1e-3), "finder": dict(lr_find=True)},
    "swa": {"no-bn-update": dict(swa=True, swa_bn_update=False), "bn-update": dict(swa=True, swa_bn_update=True)},
    "loss": {"bce": dict(dice_weight=0.0), "dice": dict(bce_weight=0.0), "bce+dice": dict()},
    "aug": {"off": dict(augment=False), "on": dict(augment=True)},
    "size": {"96": dict(image_size=96), "128": dict(image_size=128), "160": dict(image_size=160)},
    "memory": {"item": dict(keep_loss=False), "keep-loss": dict(keep_loss=True)},
}


class BatchStatistics(nn.Module):
    "`model` with its BatchNorm layers normalising by each batch's own statistics even in eval mode (running ones untouched)."
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm): m.train(); m.momentum = 0.0
        return self
    def forward(self, x): return self.model(x)


def base_config(args, data_root: Path, run_dir: Path) -> TrainConfig:
    return TrainConfig(data_root=str(data_root), model=args.model, image_size=args.size, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, cache=True, cache_dir=str(args.cache_dir),
                       num_workers=0, device=args.device, checkpoint_dir=str(run_dir), run_name="run", progress=False,
                       verbose=False, live_plot=False, model_kwargs=dict(features=[8, 16, 32, 64]) if args.smoke else {})


def peak_rss_mb() -> float:
    "This process's peak resident memory so far, in MB (Linux reports KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    "This process's resident memory now, in MB."
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_row(cfg: TrainConfig, keep_loss: bool, steps: int) -> dict:
    """A plain loop of `steps` steps that keeps every loss tensor in a list (as `running_loss += loss` does: each keeps
    its autograd graph alive), or only `loss.item()`; RSS growth: the highest RSS after any step minus the RSS before."""
    from petseg.training import make_datasets
    from torch.utils.data import DataLoader
    from petseg.learner import ImageMaskPairs
    torch.manual_seed(cfg.seed)
    train_ds, _, _ = make_datasets(cfg)
    dl = DataLoader(ImageMaskPairs(train_ds), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    model, loss_fn = build_model(cfg.model, **cfg.model_kwargs), BCEDiceLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    kept, done, start_rss = [], 0, rss_mb()
    top = start_rss
    while done < steps:
        for x, y in dl:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            kept.append(loss if keep_loss else loss.item())
            done, top = done + 1, max(top, rss_mb())
            if done == steps: break
    return dict(peak_rss_mb=round(peak_rss_mb(), 1), loop_rss_growth_mb=round(top - start_rss, 1),
                epochs=f"{steps} steps")


def run_row(args) -> dict:
    experiment, variant = args.row.split(":", 1)
    change = dict(EXPERIMENTS[experiment][variant])
    tmp = Path(tempfile.mkdtemp(prefix="petseg-exp-"))
    data_root = (make_synthetic_pets(tmp / "pets", n_trainval=20, n_test=8, size=64, seed=0) if args.smoke
                 else Path(args.data_root) if args.data_root else course_data())
    cfg = base_config(args, data_root, tmp / "runs")
    norm, lr_find, swa, swa_bn_update = (change.pop(k, d) for k, d in (("norm", "batch"), ("lr_find", False),
                                                                        ("swa", False), ("swa_bn_update", True)))
    keep_loss = change.pop("keep_loss", None)
    cfg = replace(cfg, **change)
    if norm != "batch": cfg = replace(cfg, model_kwargs={**cfg.model_kwargs, "norm": norm})
    row = dict(experiment=experiment, variant=variant, seed=args.seed, model=cfg.model, image_size=cfg.image_size,
               epochs=cfg.epochs, batch_size=cfg.batch_size, norm=norm, augment=cfg.augment,
               loss=f"{cfg.bce_weight:g} BCE + {cfg.dice_weight:g} Dice", swa="")
    if keep_loss is not None:
        return dict(row, lr=cfg.lr, **memory_row(cfg, keep_loss, args.memory_steps))
    if lr_find:
        found = find_lr(cfg, start_lr=1e-6, end_lr=1.0, num_it=args.finder_steps)
        cfg = replace(cfg, lr=float(f"{found.suggestion:.2g}"))
    if swa:
        cfg = replace(cfg, swa_start=max(1, cfg.epochs * 3 // 4))
        if not swa_bn_update: petseg.callbacks.SWA.fix_batchnorm = lambda self: None   # this process only
        row["swa"] = f"from epoch {cfg.swa_start}, {'with' if swa_bn_update else 'without'} BatchNorm update"
    history = train(cfg)
    best = history.best
    ckpt = history.checkpoints["swa" if swa else "best"]
    test = evaluate(ckpt, data_root, "test", device=args.device, progress=False)
    row.update(lr=cfg.lr, best_epoch=best["epoch"], valid_dice=round(best["valid_dice"], 4),
               test_dice=round(test.mean_dice, 4), test_images=test.n_images, peak_rss_mb=round(peak_rss_mb(), 1))
    if norm == "batch" and experiment == "batch":
        from petseg.checkpoint import model_from_checkpoint
        model, _ = model_from_checkpoint(ckpt)
        stats = evaluate(BatchStatistics(model), data_root, "test", size=cfg.image_size, batch_size=1, device=args.device,
                         progress=False)
        row["test_dice_batch_stats"] = round(stats.mean_dice, 4)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("row", nargs="?", help="EXPERIMENT:VARIANT, e.g. lr:finder (see --list)")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image size unless the row sets it (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="epochs unless the row sets them (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--model", default="resnet34_unet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="Oxford-IIIT Pet folder (default: course_data(), the real sample here)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "petseg-exp-cache")
    p.add_argument("--finder-steps", type=int, default=60)
    p.add_argument("--memory-steps", type=int, default=20)
    p.add_argument("--csv", type=Path, default=HERE / "results.csv")
    p.add_argument("--smoke", action="store_true", help="synthetic pets, 32 px, 1 epoch, tiny UNet: seconds (CI)")
    args = p.parse_args(argv)
    rows = [f"{e}:{v}" for e, vs in EXPERIMENTS.items() for v in vs]
    if args.list or not args.row:
        print("\n".join(rows)); return 0
    if args.row not in rows: p.error(f"unknown row {args.row!r}; one of: {', '.join(rows)}")
    if args.smoke:
        args.size, args.epochs, args.model, args.batch_size = 32, 1, "unet", 4
        args.finder_steps, args.memory_steps = 8, 4
        if args.csv == HERE / "results.csv": args.csv = Path(tempfile.gettempdir()) / "petseg-exp-smoke.csv"
    load, t0, cpu0 = os.getloadavg()[0], time.time(), time.process_time()
    row = run_row(args)
    row.update(cpu_s=round(time.process_time() - cpu0, 1), wall_s=round(time.time() - t0, 1),
               load_avg=f"{load:.1f}-{os.getloadavg()[0]:.1f}", device=args.device, when=time.strftime("%Y-%m-%d %H:%M"),
               data="synthetic (smoke)" if args.smoke else str(args.data_root or "course_data()"),
               cuda_peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else "",
               command=shlex.join(["python", "experiments/run.py", *(sys.argv[1:] if argv is None else argv)]))
    new = not args.csv.exists()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        if new: w.writeheader()
        w.writerow(row)
    print(json.dumps({k: row.get(k, "") for k in COLUMNS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
