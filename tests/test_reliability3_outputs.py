"""Reliability, third pass (issue 24, sections 2 and 4): no output is ever written over an input or over a file of the
user's (evaluate's --csv/--json, predict's folder, run names and --overwrite), and the remaining tracebacks become one
line (Ctrl-C while starting, a killed DataLoader worker, evaluate's workers, SIGTERM, wrong types in the Python API,
a closed stdout pipe, Python spellings in command-line messages, stub run folders)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.data
from petseg import cli
from petseg.data import PetsegError, make_synthetic_pets
from petseg.evaluate import evaluate
from petseg.inference import predict
from petseg.training import TrainConfig, train

from test_reliability import ENV, my_data, one_clean_line, petseg_exe, run_petseg, snapshot  # my_data: a fixture

T = ["--size", "32", "--features", "8,16,32,64", "--epochs", "1", "--max-train-batches", "2", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def ck(synthetic_root, tmp_path_factory) -> Path:
    "A tiny UNet trained for one epoch through the Python API: its best checkpoint."
    tmp = tmp_path_factory.mktemp("rel3")
    history = train(TrainConfig(data_root=str(synthetic_root), model="unet", model_kwargs={"features": (8, 16, 32, 64)},
                                image_size=32, epochs=1, batch_size=4, max_train_batches=2, device="cpu", num_workers=0,
                                seed=0, checkpoint_dir=str(tmp / "ck"), progress=False, verbose=False, live_plot=False))
    return Path(history.checkpoints["best"])


def cli_run(capsys, *argv) -> tuple[int, str, str]:
    "`petseg *argv` in this process: (exit code, stdout, stderr)."
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- 2. outputs never over inputs or the user's files

@pytest.mark.parametrize("target", ["checkpoint", "mask", "photo-json", "users-file"])
def test_evaluate_outputs_never_replace_inputs_or_users_files(ck, my_data, tmp_path, capsys, target):
    ck = Path(shutil.copy(ck, tmp_path / "best.pt"))
    mask, photo = sorted((my_data / "masks").iterdir())[0], sorted((my_data / "images").iterdir())[0]
    notes = tmp_path / "notes.csv"; notes.write_text("my own notes\n")
    flag, path = {"checkpoint": ("--csv", ck), "mask": ("--csv", mask), "photo-json": ("--json", photo),
                  "users-file": ("--csv", notes)}[target]
    before = {**snapshot(my_data), "ck": ck.read_bytes(), "notes": notes.read_text()}
    code, out, err = cli_run(capsys, "evaluate", ck, "--images-dir", my_data / "images", "--masks-dir", my_data / "masks",
                             flag, path, "--device", "cpu", "-q")
    assert code == 2 and flag in one_line(err) and str(path) in err, (code, err)
    assert {**snapshot(my_data), "ck": ck.read_bytes(), "notes": notes.read_text()} == before


def test_evaluate_replaces_its_own_csv(ck, my_data, tmp_path, capsys):
    csv = tmp_path / "rows.csv"
    for _ in range(2):   # the second run replaces the table the first wrote
        code, out, err = cli_run(capsys, "evaluate", ck, "--images-dir", my_data / "images", "--masks-dir", my_data / "masks",
                                 "--csv", csv, "--json", tmp_path / "f.json", "--device", "cpu", "-q")
        assert code == 0, err
    assert csv.read_text().startswith("name,species,breed,dice,iou")


def test_predict_keeps_a_hand_corrected_mask(ck, my_data, tmp_path, capsys):
    out = tmp_path / "o12"
    assert cli_run(capsys, "predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")[0] == 0
    corrected = sorted((out / "masks").iterdir())[0]
    shutil.copy(my_data / "masks" / corrected.name, corrected)        # the user's correction, same name
    fixed = corrected.read_bytes()
    code, _, err = cli_run(capsys, "predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")
    assert code == 2 and corrected.name in one_line(err) and "changed" in err, err
    assert corrected.read_bytes() == fixed


def test_predict_never_writes_through_a_symlinked_folder(ck, my_data, tmp_path, capsys):
    out = tmp_path / "o11"
    assert cli_run(capsys, "predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")[0] == 0
    shutil.rmtree(out / "masks")
    (out / "masks").symlink_to(my_data / "masks")                       # now masks/ is the ground truth
    before = snapshot(my_data)
    code, _, err = cli_run(capsys, "predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")
    assert code == 2 and "symbolic link" in one_line(err), err
    assert snapshot(my_data) == before


@pytest.fixture
def no_writes_in_the_root(monkeypatch):
    "Writes directly under / fail (PermissionError), so that a petseg that would write there cannot damage the machine."
    import builtins, io
    def guard(fn):
        def wrapped(path, *a, **k):
            mode = a[0] if a and isinstance(a[0], str) else k.get("mode", "w")
            if isinstance(path, (str, os.PathLike)) and os.path.dirname(os.path.abspath(path)) == "/" and \
                    any(c in mode for c in "wax+"):
                raise PermissionError(13, "Permission denied (test guard)", str(path))
            return fn(path, *a, **k)
        return wrapped
    for mod, name in ((builtins, "open"), (io, "open"), (os, "mkdir")): monkeypatch.setattr(mod, name, guard(getattr(mod, name)))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst, **k: guard(lambda d, *a, **kk: real_replace(src, d))(dst))


@pytest.mark.parametrize("where", ["root", "images"])
def test_predict_refuses_a_root_or_the_images_folder(ck, my_data, capsys, no_writes_in_the_root, where):
    out = Path("/") if where == "root" else my_data / "images"
    before = snapshot(my_data)
    code, _, err = cli_run(capsys, "predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")
    assert code == 2 and str(out) in one_line(err), err
    assert not Path("/masks").exists() and not Path("/overlays").exists() and snapshot(my_data) == before


class _Blocking(nn.Module):
    "A model whose forward waits until the test lets it go (a predict held in the middle of its work)."
    def __init__(self):
        super().__init__(); self.conv, self.entered, self.go = nn.Conv2d(3, 1, 1), threading.Event(), threading.Event()
    def forward(self, x):
        self.entered.set(); self.go.wait(120)
        return self.conv(x)


def test_two_predicts_into_one_folder_at_once(ck, my_data, tmp_path):
    out, model, result = tmp_path / "shared", _Blocking(), {}
    first = threading.Thread(target=lambda: result.update(p=predict(model, my_data / "images", out_dir=out, device="cpu",
                                                                      size=32, progress=False)))
    first.start()
    try:
        assert model.entered.wait(60)
        r = run_petseg("predict", ck, my_data / "images", "--out", out, "--device", "cpu", "-q")   # a second process
        assert r.returncode == 1 and "another petseg predict" in one_clean_line(r), r.stdout + r.stderr
    finally:
        model.go.set(); first.join(120)
    assert len(result["p"]) == 4


@pytest.mark.parametrize("name", ["..", "../../escaped", ".", "ABSOLUTE", "a/b"])
def test_run_name_is_one_plain_folder_name(synthetic_root, tmp_path, capsys, name):
    work = tmp_path / "a" / "b"; work.mkdir(parents=True)
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    code, _, err = cli_run(capsys, "train", "--data-root", synthetic_root, "--no-download", "--checkpoint-dir", work / "ck",
                           "--run-name", name, "--num-workers", "0", *T)
    assert code == 2 and "--run-name" in one_line(err) and "run_name=" not in err, err
    assert not (work / "ck").exists() and not (tmp_path / "escaped").exists() and sorted(tmp_path.iterdir()) == [tmp_path / "a"]


@pytest.mark.parametrize("case", ["overwrite-results", "photos"])
def test_a_users_folder_is_never_a_run_folder(synthetic_root, my_data, tmp_path, capsys, case):
    if case == "overwrite-results":
        folder = tmp_path / "results"; folder.mkdir()
        for f, data in (("config.json", b"{}"), ("metrics.csv", b"epoch\n1\n"), ("best.pt", b"my weights")):
            (folder / f).write_bytes(data)
        extra = ["--overwrite"]
    else: folder, extra = my_data / "images", []
    before = snapshot(folder)
    code, _, err = cli_run(capsys, "train", "--data-root", synthetic_root, "--no-download", "--checkpoint-dir", folder.parent,
                           "--run-name", folder.name, "--num-workers", "0", *extra, *T)
    assert code == 2 and str(folder) in one_line(err), err
    assert snapshot(folder) == before


def test_overwrite_replaces_a_run_petseg_made(synthetic_root, tmp_path, capsys):
    args = ["train", "--data-root", synthetic_root, "--no-download", "--checkpoint-dir", tmp_path / "ck", "--run-name", "r",
            "--num-workers", "0", *T]
    assert cli_run(capsys, *args)[0] == 0
    code, out, err = cli_run(capsys, *args, "--overwrite")
    assert code == 0 and sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["r"], err


# ---------------------------------------------------------------- 4. one line where a traceback was

def _children(pid: int) -> list[int]:
    try: return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError: return []


def _wait_for(cond, proc, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_ctrl_c_while_starting_is_one_line(synthetic_root, tmp_path):
    proc = subprocess.Popen([*petseg_exe(), "train", "--data-root", str(synthetic_root), "--no-download",
                             "--checkpoint-dir", str(tmp_path / "ck"), *T], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:   # torch's library is mapped: the process is in the middle of its imports
        _wait_for(lambda: "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text(), proc, "torch's import", 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "KeyboardInterrupt" not in err and "Ctrl-C" in one_line(err), err
    assert not (tmp_path / "ck").exists()


def test_a_killed_dataloader_worker_is_one_line_with_the_resume_command(tmp_path):
    root = make_synthetic_pets(tmp_path / "pets", n_trainval=40, n_test=4, size=40, seed=0)
    run = tmp_path / "ck" / "unet"
    proc = subprocess.Popen([*petseg_exe(), "train", "--data-root", str(root), "--no-download", "--checkpoint-dir",
                             str(tmp_path / "ck"), "--size", "32", "--features", "8,16,32,64", "--epochs", "500",
                             "--batch-size", "2", "--num-workers", "2", "--device", "cpu", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(lambda: (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) >= 2,
                  proc, "epoch 1")
        workers = _children(proc.pid)
        assert workers, "no DataLoader worker processes"
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    line = one_line(err)
    assert "killed" in line and f"--resume {run / 'last.pt'}" in line and "--num-workers" in line, line


def test_evaluate_with_workers_on_a_bad_mask_is_one_line(ck, my_data, capsys):
    bad = sorted((my_data / "masks").iterdir())[2]
    a = np.asarray(Image.open(bad)).copy(); a[0, 0] = 7; Image.fromarray(a).save(bad)
    code, _, err = cli_run(capsys, "evaluate", ck, "--images-dir", my_data / "images", "--masks-dir", my_data / "masks",
                           "--num-workers", "2", "--device", "cpu", "-q")
    assert code == 1 and bad.name in one_line(err) and "worker process" not in err, err


def test_sigterm_to_evaluate_says_so(ck, tmp_path):
    root = make_synthetic_pets(tmp_path / "pets", n_trainval=2, n_test=200, size=64, seed=0)
    proc = subprocess.Popen([*petseg_exe(), "evaluate", str(ck), "--data-root", str(root), "--size", "512", "--batch-size",
                             "1", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    seen = bytearray()
    reader = threading.Thread(target=lambda: [seen.extend(c) for c in iter(lambda: proc.stderr.read(1), b"")], daemon=True)
    reader.start()
    try:
        _wait_for(lambda: b"evaluate (resized)" in seen, proc, "the evaluation loop")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60); reader.join(10)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    err = seen.decode(errors="replace").replace("\r", "\n")
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert "SIGTERM" in err.splitlines()[-1] and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("call, argument", [
    (lambda ck, my_data: train("own"), "TrainConfig"), (lambda ck, my_data: train(None), "TrainConfig"),
    (lambda ck, my_data: train({"data_root": "own"}), "TrainConfig(**config)"),
    (lambda ck, my_data: evaluate(None, images_dir=my_data / "images", masks_dir=my_data / "masks"), "checkpoint path"),
    (lambda ck, my_data: evaluate(ck, data_root=123), "data_root"),
    (lambda ck, my_data: predict(ck, None), "images"), (lambda ck, my_data: predict(ck, 5), "images"),
    (lambda ck, my_data: predict(None, [my_data / "images"]), "checkpoint path")])
def test_wrong_types_in_the_python_api_name_the_argument(ck, my_data, call, argument):
    with pytest.raises((TypeError, PetsegError)) as e:
        call(ck, my_data)
    assert argument in str(e.value) and "NoneType' object" not in str(e.value) and "has no attribute" not in str(e.value), e.value


def test_a_closed_stdout_pipe_does_not_stop_training(synthetic_root, tmp_path):
    "`petseg train ... | head -1`: the reader leaves after one line; training goes on to the end, no 'disk' message."
    proc = subprocess.Popen([*petseg_exe(), "train", "--data-root", str(synthetic_root), "--no-download", "--checkpoint-dir",
                             str(tmp_path / "ck"), "--num-workers", "0", *T[:-1], "--epochs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        proc.stdout.readline(); proc.stdout.close()                  # what `head -1` does
        err = proc.stderr.read(); proc.wait(timeout=240)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == 0 and "Broken pipe" not in err and "free some space" not in err, (proc.returncode, err[-2000:])
    assert len((tmp_path / "ck" / "unet" / "metrics.csv").read_text().splitlines()) == 3   # both epochs trained


def test_command_line_messages_use_flags(synthetic_root, tmp_path, capsys):
    afile = tmp_path / "afile"; afile.write_text("x")
    code, _, err = cli_run(capsys, "train", "--data-root", synthetic_root, "--no-download", "--checkpoint-dir", tmp_path / "ck",
                           "--num-workers", "0", *T, "--cache", "--cache-dir", afile / "sub")   # a cache folder under a file
    assert code == 1 and "--cache-dir" in one_line(err) and "cache_dir" not in err, err


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder(pets_copy, tmp_path, capsys):
    from petseg.data import read_split
    trimap = pets_copy / "annotations" / "trimaps" / f"{read_split(pets_copy, 'train')[1]}.png"
    good = trimap.read_bytes()
    a = np.array(Image.open(trimap)); a[0, 0] = 0; Image.fromarray(a).save(trimap)      # a value no trimap holds
    base = ["train", "--data-root", pets_copy, "--no-download", "--checkpoint-dir", tmp_path / "ck", "--num-workers", "0", *T]
    code, _, err = cli_run(capsys, *base)
    assert code == 1 and trimap.name in one_line(err), err
    assert not (tmp_path / "ck" / "unet").exists()                                  # no stub run folder
    trimap.write_bytes(good)
    code, out, err = cli_run(capsys, *base[:-1])
    assert code == 0 and "An earlier run" not in out + err and (tmp_path / "ck" / "unet" / "best.pt").exists(), out + err
