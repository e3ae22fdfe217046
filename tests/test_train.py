"""Training end to end on tiny synthetic data: history, logs and checkpoints in one run folder; exact resume (at an epoch
boundary, and after a stop in the middle of an epoch); every kind of bad checkpoint; atomic writes when the disk fails; NaN loss, out of memory,
SIGINT/SIGTERM; SWA in eval mode; a user's image/mask folder."""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import petseg.checkpoint as C
import petseg.training as T
from petseg.callbacks import METRIC_COLUMNS, LivePlot, TrainingError, TrainingInterrupted
from petseg.checkpoint import CheckpointError, ConfigError, load_checkpoint, model_from_checkpoint, save_checkpoint
from petseg.data import OxfordPetDataset, eval_transforms, IMAGENET_MEAN
from petseg.synthetic import make_synthetic_pets
from petseg.learner import Callback
from petseg.losses import BCEDiceLoss, dice_per_image
from petseg.models import build_model
from petseg.training import TrainConfig, train

CHECKPOINT_KEYS = ("petseg_version", "model_name", "model_kwargs", "model_state", "optimizer_state", "callbacks", "epoch",
                   "metrics", "config", "image_size", "mean", "std", "rng_state", "history")

TINY = {"features": (8, 16, 32, 64)}
STEPS = 9  # 36 training images / batch size 4


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    "40 trainval images (36 train, 4 valid) of 48 px: a tiny U-Net learns them in a few epochs."
    return make_synthetic_pets(tmp_path_factory.mktemp("train") / "pets", n_trainval=40, n_test=4, size=48, seed=0)


def config(pets: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(pets), model_kwargs=TINY, image_size=32, batch_size=4, epochs=2, lr=1e-2, num_workers=0,
                checkpoint_dir=str(tmp_path / "ckpt"), progress=False, live_plot=False)
    return TrainConfig(**{**base, **kw})


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict): assert_same_state(a[k], b[k])
        elif isinstance(a[k], torch.Tensor): assert torch.equal(a[k], b[k]), k
        else: assert a[k] == b[k], k


def valid_dice_of(model: torch.nn.Module, ckpt: dict, pets: Path) -> float:
    "Mean Dice over the valid split, computed here from the model and the losses module (not by train)."
    ds = OxfordPetDataset(pets, "valid", transform=eval_transforms(ckpt["image_size"], ckpt["mean"], ckpt["std"]))
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    with torch.no_grad(): return dice_per_image(model.eval()(x), y).double().mean().item()


# ------------------------------------------------------------------ a run and what it writes
def test_history_logs_and_checkpoints(pets, tmp_path):
    cfg = config(pets, tmp_path, run_name="run")
    hist = train(cfg)
    assert [r["epoch"] for r in hist] == [1, 2] and hist.status == "finished"
    for row in hist:
        assert set(METRIC_COLUMNS) <= set(row)
        assert all(math.isfinite(row[k]) for k in METRIC_COLUMNS)
        assert 0 <= row["valid_dice"] <= 1 and row["images_per_s"] > 0
    with open(hist.run_dir / "metrics.csv") as f: rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and list(rows[0]) == list(METRIC_COLUMNS)
    assert float(rows[1]["valid_dice"]) == pytest.approx(hist[1]["valid_dice"])
    assert any(p.name.startswith("events.out.tfevents") for p in hist.run_dir.iterdir())
    assert hist.run_dir == Path(cfg.checkpoint_dir) / "run"
    assert sorted(p.name for p in hist.run_dir.iterdir() if not p.name.startswith("events")) == \
        [".lock", ".petseg-run", "best.pt", "config.json", "last.pt", "metrics.csv"]  # no temp files
    assert json.loads((hist.run_dir / "config.json").read_text())["lr"] == cfg.lr
    ck = load_checkpoint(hist.checkpoints["last"])
    assert set(CHECKPOINT_KEYS) <= set(ck)
    assert (ck["epoch"], ck["model_name"], ck["model_kwargs"], ck["image_size"]) == (2, "unet", TINY, 32)
    assert tuple(ck["mean"]) == IMAGENET_MEAN and ck["finished"]
    assert TrainConfig(**ck["config"]) == cfg
    assert ck["history"] == list(hist)
    best = load_checkpoint(hist.checkpoints["best"])
    assert best["metrics"]["valid_dice"] == max(r["valid_dice"] for r in hist)


def test_checkpoint_round_trip_reproduces_valid_dice(pets, tmp_path):
    hist = train(config(pets, tmp_path, epochs=3))
    model, ck = model_from_checkpoint(hist.checkpoints["best"])
    assert not model.training
    assert valid_dice_of(model, ck, pets) == pytest.approx(ck["metrics"]["valid_dice"], abs=1e-6)
    assert ck["metrics"]["valid_dice"] > 0.5


def test_overwrite_replaces_the_earlier_runs_logs(pets, tmp_path):
    "A rerun under a taken name goes to <name>-2; with overwrite it reuses <name>, and TensorBoard shows only its epochs."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    first = train(config(pets, tmp_path, run_name="x", epochs=3))
    second = train(config(pets, tmp_path, run_name="x", epochs=1))
    assert (first.run_dir.name, second.run_dir.name, second.checkpoints["last"]) == ("x", "x-2", second.run_dir / "last.pt")
    assert load_checkpoint(first.checkpoints["last"])["epoch"] == 3   # the earlier run is intact
    redo = train(config(pets, tmp_path, run_name="x", epochs=2, lr=1e-3, overwrite=True))
    assert redo.run_dir == first.run_dir and redo.checkpoints == first.checkpoints
    with open(redo.run_dir / "metrics.csv") as f: assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    events = EventAccumulator(str(redo.run_dir)); events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("loss/train")] == \
           [(r["epoch"], round(r["train_loss"], 5)) for r in redo]


# ------------------------------------------------------------------ resume
def test_resume_equals_uninterrupted_run(pets, tmp_path):
    "4 epochs == 2 epochs (stop_after_epoch) + a resumed 2: same weights, optimizer state and metrics (onecycle, augment)."
    full = train(config(pets, tmp_path, epochs=4, run_name="full"))
    half = train(config(pets, tmp_path, epochs=4, run_name="half", stop_after_epoch=2))
    assert (len(half), half.status) == (2, "paused")
    assert not load_checkpoint(half.checkpoints["last"])["finished"]
    rest = train(TrainConfig(resume=str(half.checkpoints["last"]), progress=False, live_plot=False))
    assert [r["epoch"] for r in rest] == [1, 2, 3, 4] and rest.status == "finished"
    a, b = load_checkpoint(full.checkpoints["last"]), load_checkpoint(rest.checkpoints["last"])
    assert_same_state(a["model_state"], b["model_state"])
    assert_same_state(a["optimizer_state"]["state"], b["optimizer_state"]["state"])
    assert a["callbacks"]["lr_scheduler"] == b["callbacks"]["lr_scheduler"]
    assert [r["valid_dice"] for r in full] == [r["valid_dice"] for r in rest]
    with open(rest.run_dir / "metrics.csv") as f: assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_resume_extends_a_run_without_schedule(pets, tmp_path):
    three = train(config(pets, tmp_path, epochs=3, scheduler="none", run_name="three"))
    two = train(config(pets, tmp_path, epochs=2, scheduler="none", run_name="two"))
    more = train(TrainConfig(resume=str(two.checkpoints["last"]), epochs=3, progress=False))
    assert len(more) == 3
    assert_same_state(load_checkpoint(three.checkpoints["last"])["model_state"],
                      load_checkpoint(more.checkpoints["last"])["model_state"])
    once = train(config(pets, tmp_path, epochs=1, run_name="once"))  # onecycle: its length is fixed
    with pytest.raises(ConfigError, match="schedule was laid out for 1 epochs"):
        train(TrainConfig(resume=str(once.checkpoints["last"]), epochs=3))


def test_resume_finished_run_has_nothing_to_do(pets, tmp_path, capsys):
    hist = train(config(pets, tmp_path, epochs=1))
    capsys.readouterr()
    again = train(TrainConfig(resume=str(hist.checkpoints["last"]), progress=False))
    assert again.status == "nothing_to_do" and list(again) == list(hist)
    assert "Nothing to do" in capsys.readouterr().out


def test_resume_keeps_the_run_settings(pets, tmp_path):
    hist = train(config(pets, tmp_path, epochs=2, stop_after_epoch=1))
    with pytest.raises(ConfigError, match="lr=0.5 differs from the checkpoint's 0.01"):
        train(TrainConfig(resume=str(hist.checkpoints["last"]), lr=0.5))
    with pytest.raises(CheckpointError, match="not found"):
        train(TrainConfig(resume=str(tmp_path / "nope.pt")))


class SignalAfter(BCEDiceLoss):
    "The usual loss, which sends this process `signums` during its `at`-th call (train and valid calls count)."
    calls, at, signums = 0, None, (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, then torchrun's forwarded SIGTERM

    def forward(self, logits, target):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            for s in type(self).signums: os.kill(os.getpid(), s)
        return super().forward(logits, target)


def test_interrupt_mid_epoch_then_resume_is_exact(pets, tmp_path, monkeypatch):
    """SIGINT (and an echoed SIGTERM) in the 4th batch of epoch 2: the batch finishes, the run stops with the checkpoint
    of the end of epoch 1; resuming restarts epoch 2 and matches a plain run bit for bit."""
    full = train(config(pets, tmp_path, epochs=3, run_name="full"))
    monkeypatch.setattr(T, "BCEDiceLoss", SignalAfter)
    SignalAfter.calls, SignalAfter.at = 0, STEPS + 1 + 4  # epoch 1: 9 train + 1 valid batch; then 4 more
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGINT in epoch 2; a resumable checkpoint \\(end of epoch 1\\)") as info:
        train(config(pets, tmp_path, epochs=3, run_name="cut"))
    assert info.value.exit_code == 130 and "petseg train --resume" in str(info.value)
    assert load_checkpoint(info.value.checkpoint)["epoch"] == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # our handlers are removed
    SignalAfter.at = None
    rest = train(TrainConfig(resume=str(info.value.checkpoint), progress=False))
    assert len(rest) == 3
    assert_same_state(load_checkpoint(full.checkpoints["last"])["model_state"],
                      load_checkpoint(rest.checkpoints["last"])["model_state"])
    assert [r["train_loss"] for r in full] == pytest.approx([r["train_loss"] for r in rest], rel=1e-12)


def test_interrupt_in_the_first_epoch_resumes_from_epoch_0(pets, tmp_path, monkeypatch):
    "A fresh run writes last.pt before its first epoch: even a stop in epoch 1 can resume, and ends like a plain run."
    full = train(config(pets, tmp_path, epochs=2, run_name="full"))
    monkeypatch.setattr(T, "BCEDiceLoss", SignalAfter)
    SignalAfter.calls, SignalAfter.at, SignalAfter.signums = 0, 2, (signal.SIGTERM,)
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM in epoch 1; a resumable checkpoint \\(end of epoch 0\\)") as info:
            train(config(pets, tmp_path, epochs=2, run_name="cut"))
    finally: SignalAfter.signums, SignalAfter.at = (signal.SIGINT, signal.SIGTERM), None
    assert info.value.exit_code == 143
    rest = train(TrainConfig(resume=str(info.value.checkpoint), progress=False))
    assert_same_state(load_checkpoint(full.checkpoints["last"])["model_state"],
                      load_checkpoint(rest.checkpoints["last"])["model_state"])


SCRIPT = """
import sys, time
from petseg.training import TrainConfig, TrainingInterrupted, train
cfg = TrainConfig(data_root={root!r}, model_kwargs={tiny!r}, image_size=32, batch_size=4, epochs=500, scheduler="none",
                  num_workers={workers}, checkpoint_dir={ckpt!r}, progress=False, live_plot=False)
try:
    train(cfg, callbacks=[lambda row, history: time.sleep(0.3)])
except TrainingInterrupted as e:
    sys.exit(e.exit_code)
print("finished without being interrupted")
"""


@pytest.mark.parametrize("signum,workers", [(signal.SIGINT, 0), (signal.SIGTERM, 2)])
def test_signal_writes_resumable_checkpoint_and_exits_cleanly(pets, tmp_path, signum, workers):
    last = tmp_path / "ckpt" / "unet" / "last.pt"
    script = SCRIPT.format(root=str(pets), tiny=TINY, workers=workers, ckpt=str(tmp_path / "ckpt"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ckpt" / "unet" / "metrics.csv").exists() or \
                len((tmp_path / "ckpt" / "unet" / "metrics.csv").read_text().splitlines()) < 2:  # epoch 1 done
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch after 120 s"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, (proc.returncode, out, err)
    assert f"Training stopped by {name}" in out and f"petseg train --resume {last}" in out, out
    assert "Traceback" not in err, err
    done = load_checkpoint(last)["epoch"]
    rest = train(TrainConfig(resume=str(last), epochs=done + 1, num_workers=0, progress=False))
    assert [r["epoch"] for r in rest] == list(range(1, done + 2)) and rest.status == "finished"


# ------------------------------------------------------------------ failures
def test_nan_loss_stops_and_keeps_last_good_checkpoint(pets, tmp_path, monkeypatch):
    class NaNLater(BCEDiceLoss):
        calls = 0
        def forward(self, logits, target):
            type(self).calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if type(self).calls > STEPS + 1 else loss  # from the 1st batch of epoch 2
    monkeypatch.setattr(T, "BCEDiceLoss", NaNLater)
    cfg = config(pets, tmp_path, epochs=3)
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 2.*last good checkpoint.*is kept"):
        train(cfg)
    ck = load_checkpoint(Path(cfg.checkpoint_dir) / "unet" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model_state"].values() if v.is_floating_point())


def test_out_of_memory_suggests_smaller_batch_or_image(pets, tmp_path, monkeypatch):
    class Hungry(torch.nn.Module):
        def __init__(self, **kw):
            super().__init__(); self.net = build_model("unet", **kw)
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(T, "build_model", lambda name, **kw: Hungry(**kw))
    with pytest.raises(TrainingError, match=r"out of memory with batches of 4 images of 32 px: try a smaller batch size"):
        train(config(pets, tmp_path))


def test_failing_checkpoint_write_during_training(pets, tmp_path, monkeypatch):
    cfg = config(pets, tmp_path, epochs=3, run_name="full")
    real_save, calls = torch.save, []
    def save(obj, f, *a, **k):
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(C.torch, "save", save)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint there .* is intact"):
        train(cfg)
    run = Path(cfg.checkpoint_dir) / "full"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]     # no temporary files left


def test_disk_full_reported_by_torch_as_runtime_error(tmp_path, monkeypatch):
    "torch.save reports a full disk as RuntimeError ('PytorchStreamWriter failed writing file'): one clear CheckpointError."
    def full(obj, f, *a, **k): raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(C.torch, "save", full)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*PytorchStreamWriter failed"):
        save_checkpoint(tmp_path / "c.pt", model_name="unet", model_state={})
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_are_removed_on_the_next_start(pets, tmp_path):
    "kill -9 during a checkpoint write leaves .last.pt.<hex>.tmp; the run that resumes there removes it."
    half = train(config(pets, tmp_path, epochs=2, stop_after_epoch=1))
    stale = half.run_dir / ".last.pt.0123456789ab.tmp"
    stale.write_bytes(b"PK\x03\x04" + bytes(1000))
    train(TrainConfig(resume=str(half.checkpoints["last"]), progress=False))
    assert not stale.exists()


def test_a_second_process_on_the_same_run_is_refused(pets, tmp_path):
    "The run folder is locked while a run writes into it."
    cfg = config(pets, tmp_path, run_name="busy")
    with T.run_lock(Path(cfg.checkpoint_dir) / "busy"):   # as another process would hold it
        with pytest.raises(ConfigError, match="another petseg process is training in .*busy"):
            train(TrainConfig(**{**cfg.__dict__, "overwrite": True}))


def test_resume_writes_only_into_the_checkpoints_own_folder(pets, tmp_path):
    "A checkpoint is user input: a moved last.pt resumes where it now is, never into a path named inside the file."
    half = train(config(pets, tmp_path, epochs=2, stop_after_epoch=1, run_name="orig"))
    other = train(config(pets, tmp_path, epochs=1, run_name="other"))
    before = other.checkpoints["last"].read_bytes()
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "last.pt").write_bytes(half.checkpoints["last"].read_bytes())
    rest = train(TrainConfig(resume=str(moved / "last.pt"), progress=False))
    assert rest.run_dir == moved and (moved / "best.pt").exists() and (moved / "metrics.csv").exists()
    assert other.checkpoints["last"].read_bytes() == before
    assert load_checkpoint(half.checkpoints["last"])["epoch"] == 1


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", model_name="unet", model_state={"w": torch.ones(3)})
    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial"); raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(C.torch, "save", disk_full)
        with pytest.raises(CheckpointError, match="could not write checkpoint .*No space left"):
            save_checkpoint(path, model_name="unet", model_state={"w": torch.zeros(3)})
    with monkeypatch.context() as m:
        def read_only(*a, **k): raise PermissionError(errno.EACCES, "Permission denied")
        m.setattr(C.os, "open", read_only)          # creating the temporary file fails
        with pytest.raises(CheckpointError, match="Permission denied.*writable folder"):
            save_checkpoint(path, model_name="unet", model_state={"w": torch.zeros(3)})
    with monkeypatch.context() as m:  # Ctrl-C in the middle of a write: the old file stays, no temp file
        def interrupted(obj, f, *a, **k): f.write(b"PK"); raise KeyboardInterrupt
        m.setattr(C.torch, "save", interrupted)
        with pytest.raises(KeyboardInterrupt): save_checkpoint(path, model_name="unet", model_state={})
    assert torch.equal(torch.load(path, weights_only=True)["model_state"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_save_into_read_only_folder(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model_name="unet", model_state={"w": torch.ones(3)})
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied"):
            save_checkpoint(path, model_name="unet", model_state={"w": torch.zeros(3)})
    finally: tmp_path.chmod(0o700)
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(3))


class Evil:
    "Unpickling this would create a file: weights_only loading must refuse it."
    def __init__(self, target): self.target = target
    def __reduce__(self): return (Path.touch, (Path(self.target),))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    model = build_model("unet", **TINY)
    return save_checkpoint(tmp_path_factory.mktemp("good") / "good.pt", petseg_version="0.1.0", model_name="unet",
                           model_kwargs=TINY, model_state=model.state_dict(), image_size=32)


@pytest.mark.parametrize("kind,message", [
    ("missing", "checkpoint not found"),
    ("folder", "is a folder"),
    ("empty", "is empty"),
    ("truncated", "truncated or corrupt"),
    ("random", "not a PyTorch checkpoint: it looks like random bytes"),
    ("text", "not a PyTorch checkpoint: it looks like a text file"),
    ("photo", "not a PyTorch checkpoint: it looks like a JPEG image"),
    ("safetensors", "not a PyTorch checkpoint: it looks like a safetensors file"),
    ("bare_state_dict", "bare state_dict"),
    ("other_dict", "not a petseg checkpoint"),
    ("code", "never runs code"),
    ("architecture", "architecture mismatch"),
    ("unknown_model", "unknown model 'vit'"),
    ("huge_size", "image_size=100000 is outside"),
    ("zero_std", "std=\\[0.0, 1.0, 1.0\\] is not 3 finite numbers > 0"),
    ("huge_features", "model_kwargs\\['features'\\]"),
    ("nan_weights", "NaN or infinite weights"),
])
def test_bad_checkpoints_say_what_is_wrong(good_checkpoint, tmp_path, kind, message):
    p = tmp_path / f"{kind}.pt"
    good = good_checkpoint.read_bytes()
    if kind == "folder": p.mkdir()
    elif kind == "empty": p.write_bytes(b"")
    elif kind == "truncated": p.write_bytes(good[: len(good) // 2])
    elif kind == "random": p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text": p.write_text("epoch,loss\n1,0.5\n")
    elif kind == "photo": Image.new("RGB", (16, 16), (200, 120, 40)).save(p, format="JPEG")
    elif kind == "safetensors": pytest.importorskip("safetensors.torch").save_file({"w": torch.zeros(2, 2)}, str(p))
    elif kind == "bare_state_dict": torch.save(build_model("unet", **TINY).state_dict(), p)
    elif kind == "other_dict": torch.save({"weights": [1, 2, 3]}, p)
    elif kind == "code": torch.save({"model_name": "unet", "model_state": Evil(tmp_path / "pwned")}, p)
    elif kind != "missing":   # a real checkpoint with one thing changed
        ck = torch.load(good_checkpoint, weights_only=True)
        ck.update({"architecture": dict(model_kwargs={"features": (16, 32, 64, 128)}), "unknown_model": dict(model_name="vit"),
                   "huge_size": dict(image_size=100_000), "zero_std": dict(std=[0.0, 1.0, 1.0]),
                   "huge_features": dict(model_kwargs={"features": [10**6] * 4}),
                   "nan_weights": dict(model_state={k: v * float("nan") if v.is_floating_point() else v
                                                    for k, v in ck["model_state"].items()})}[kind])
        torch.save(ck, p)
    with pytest.raises(CheckpointError, match=message) as info:
        model_from_checkpoint(p)
    assert str(p) in str(info.value)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ options
def test_swa_model_in_eval_mode_scores_like_the_plain_model(pets, tmp_path):
    "The course report's SWA model scored 0.43 then 0 in eval mode (BatchNorm statistics never recomputed)."
    hist = train(config(pets, tmp_path, epochs=6, swa_start=5))
    plain, swa = hist[-1]["valid_dice"], hist.swa["valid_dice"]
    assert plain > 0.6 and swa > 0.6 and abs(swa - plain) < 0.1, (plain, swa)
    assert hist.swa["n_averaged"] == 2
    model, ck = model_from_checkpoint(hist.checkpoints["swa"])
    assert valid_dice_of(model, ck, pets) == pytest.approx(swa, abs=1e-6)  # the saved SWA model, BN stats included
    fresh_bn = build_model("unet", **TINY).state_dict()
    assert not torch.equal(ck["model_state"]["downs.0.0.1.running_var"], fresh_bn["downs.0.0.1.running_var"])


def test_many_options_together(pets, tmp_path):
    hist = train(config(pets, tmp_path, epochs=2, optimizer="sgd", lr=0.05, scheduler="cosine", grad_clip=1.0,
                        channels_last=True, amp="bf16", weight_decay=0.0, bce_weight=0.5, dice_weight=2.0,
                        augment=False, max_train_batches=3))
    assert len(hist) == 2 and all(math.isfinite(r["train_loss"]) for r in hist)
    assert hist[-1]["lr"] < 0.05
    ck = load_checkpoint(hist.checkpoints["last"])
    assert ck["optimizer_state"]["state"] and ck["callbacks"]["lr_scheduler"]["T_max"] == 2 * 3


class FlatValidDice(Callback):
    "The valid Dice never improves (set after the Recorder's own figure)."
    order = -29
    def after_validate(self): self.learn.recorder.valid = (0.5, 0.5, 4)


def test_early_stopping(pets, tmp_path, capsys):
    hist = train(config(pets, tmp_path, epochs=6, patience=1), callbacks=[FlatValidDice()])
    assert hist.status == "early_stopped" and len(hist) == 2
    assert "early stopping" in capsys.readouterr().out
    assert train(TrainConfig(resume=str(hist.checkpoints["last"]))).status == "nothing_to_do"


def test_device_augment_on_cpu_resumes_exactly(pets, tmp_path):
    "The GPU augmentation path (petseg.augment) also runs on the CPU; its randomness is seeded per batch."
    full = train(config(pets, tmp_path, epochs=2, device_augment=True, run_name="full"))
    half = train(config(pets, tmp_path, epochs=2, device_augment=True, run_name="half", stop_after_epoch=1))
    rest = train(TrainConfig(resume=str(half.checkpoints["last"]), progress=False))
    assert_same_state(load_checkpoint(full.checkpoints["last"])["model_state"],
                      load_checkpoint(rest.checkpoints["last"])["model_state"])


def test_user_folder_with_dataset_statistics_and_cache(pets, tmp_path):
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    images.mkdir(); masks.mkdir()
    ds = OxfordPetDataset(pets, "train")
    for i in range(22):
        item = ds[i]
        Image.fromarray(item["image"]).save(images / f"p{i:02d}.png")
        Image.fromarray(item["mask"] * 255).save(masks / f"p{i:02d}.png")
    hist = train(config(pets, tmp_path, data_root=None, images_dir=str(images), masks_dir=str(masks), epochs=1,
                        normalization="dataset", cache=True, cache_dir=str(tmp_path / "cache")))
    ck = load_checkpoint(hist.checkpoints["last"])
    assert tuple(ck["mean"]) != IMAGENET_MEAN and all(0 < m < 1 for m in ck["mean"])
    assert any((tmp_path / "cache").iterdir())
    on_device = train(config(pets, tmp_path, data_root=None, images_dir=str(images), masks_dir=str(masks), epochs=1,
                             device_augment=True, cache_dir=str(tmp_path / "cache")))   # resized cache, GPU-style augmentation
    assert math.isfinite(on_device[-1]["train_loss"])


@pytest.mark.parametrize("kw,message", [
    (dict(model="vit"), "model='vit' is not one of"),
    (dict(optimizer="lamb"), "optimizer='lamb'"),
    (dict(scheduler="step"), "scheduler='step'"),
    (dict(batch_size=0), "batch_size=0 must be a whole number from 1 to 4096"),
    (dict(image_size=100_000), "image_size=100000"),
    (dict(lr=1e308), "lr=1e\\+308 must be a number > 0 to 10"),
    (dict(seed=2**64), "seed="),
    (dict(model_kwargs={"features": [1, 2]}), "features="),
    (dict(epochs=-1), "epochs=-1"),
    (dict(lr=0.0), "lr=0.0 must be a number > 0"),
    (dict(amp="fp8"), "amp='fp8'"),
    (dict(swa_start=9), "swa_start=9 is after the last epoch"),
    (dict(pretrained=True), "needs model='resnet34_unet'"),
    (dict(device="cuda:7" if not torch.cuda.is_available() else "tpu"), "device"),
    (dict(model_kwargs={"widths": 3}), "model_kwargs="),
])
def test_bad_options(pets, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        train(config(pets, tmp_path, **kw))


def test_live_plot_callback_draws(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    shown = []
    import IPython.display
    class Handle:
        def update(self, fig): shown.append(("update", fig))
    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id=None: shown.append(("display", fig)) or Handle())
    rows = [dict(epoch=e, train_loss=1 / e, valid_loss=1 / e, train_dice=0.5, valid_dice=0.6) for e in (1, 2)]
    cb, history = LivePlot(), []
    cb.learn = type("FakeLearner", (), {"recorder": type("R", (), {"history": history})})()
    for r in rows: history.append(r); cb.after_epoch()
    assert [k for k, _ in shown] == ["display", "update"]
    assert len(shown[1][1].axes) == 2 and len(shown[1][1].axes[0].lines[0].get_xdata()) == 2


def test_an_error_in_a_dataloader_worker_exits_promptly_with_one_message(tmp_path):
    """A trimap with a value 0, read by one of the default 2 DataLoader workers: exit 1 with the data error alone (no
    worker traceback), and the process ends (it used to hang in multiprocessing's exit handler)."""
    from petseg.data import read_split
    root = make_synthetic_pets(tmp_path / "pets", n_trainval=20, n_test=4, size=40, seed=0)
    trimap = root / "annotations" / "trimaps" / f"{read_split(root, 'train')[3]}.png"
    a = np.array(Image.open(trimap)); a[0, 0] = 0; Image.fromarray(a).save(trimap)
    proc = subprocess.run([sys.executable, "-m", "petseg", "train", "--data-root", str(root), "--no-download",
                           "--epochs", "2", "--size", "32", "--features", "4,8,16,32", "--batch-size", "4", "--device", "cpu",
                           "--checkpoint-dir", str(tmp_path / "ck"), "-q"],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert f"{trimap} has values [0]" in proc.stderr
    assert "Traceback" not in proc.stderr and "worker process" not in proc.stderr, proc.stderr


def test_a_log_folder_that_cannot_be_written_is_one_line(pets, tmp_path, monkeypatch, capsys):
    "A read-only or full run folder met by the logs (not by a checkpoint write): exit 1, one line naming the file."
    from petseg import callbacks, cli
    def refuse(self): raise PermissionError(errno.EACCES, "Permission denied", str(self.csv_path))
    monkeypatch.setattr(callbacks.MetricsLogger, "before_fit", refuse)
    code = cli.main(["train", "--data-root", str(pets), "--no-download", "--epochs", "1", "--size", "32", "--features",
                     "4,8,16,32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
                     "--checkpoint-dir", str(tmp_path / "ck"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(tmp_path / "ck" / "unet" / "metrics.csv") in err and "Permission denied" in err, err
