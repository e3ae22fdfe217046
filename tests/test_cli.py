"""The `petseg` command line end to end on synthetic data: train (with the course's flag spellings), evaluate, predict,
checkpoint round trip, usage errors (exit 2, one line, no traceback), petseg errors (exit 1), an interrupted training
(exit 130 and a resume command that continues exactly), a folder with unreadable files, and real `petseg` processes."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petseg import cli
from petseg.cli import build_parser, main, train_config_from_args
from petseg.data import read_split
from petseg.evaluate import evaluate
from petseg.callbacks import TrainingInterrupted
from petseg.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

# one PyTorch thread here and in the `petseg` processes: tiny models gain nothing from more, and on a busy 2-core
# machine competing threads make a run many times slower
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TINY = ["--features", "4,8,16,32", "--size", "32", "--device", "cpu", "--num-workers", "0", "--seed", "0", "-q"]


def run(capsys, *argv) -> tuple[int, str, str]:
    "`petseg *argv` in-process: (exit code, stdout, stderr)."
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def petseg_exe() -> list[str]:
    """The `petseg` command of the Python running these tests: the console script beside `sys.executable`, else
    `python -m petseg` (never another environment's `petseg` found on PATH, e.g. in a supported-versions virtualenv)."""
    exe = Path(sys.executable).with_name("petseg")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "petseg"]


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> dict:
    "Two tiny epochs trained through the CLI with the course's flag spellings."
    tmp = tmp_path_factory.mktemp("cli")
    code = main(["train", "--model", "unet", "--data_path", str(synthetic_root), "--epoch", "2", "--batch_size", "4",
                 "--learning-rate", "0.003", *TINY, "--out-dir", str(tmp / "ck")])
    assert code == 0
    run_dir = tmp / "ck" / "unet"
    return dict(root=synthetic_root, tmp=tmp, best=run_dir / "best.pt", last=run_dir / "last.pt", run_dir=run_dir)


def test_train_writes_checkpoints_and_logs(trained):
    assert trained["best"].is_file() and trained["last"].is_file()
    ckpt = load_checkpoint(trained["last"])
    assert (ckpt["model_name"], ckpt["epoch"], ckpt["image_size"]) == ("unet", 2, 32)
    assert list(ckpt["model_kwargs"]["features"]) == [4, 8, 16, 32]
    assert ckpt["config"]["lr"] == 0.003 and ckpt["config"]["batch_size"] == 4
    assert (trained["run_dir"] / "metrics.csv").is_file() and (trained["run_dir"] / "config.json").is_file()


@pytest.mark.parametrize("sub", ["download", "train", "evaluate", "predict", "demo"])
def test_every_subcommand_has_help(capsys, sub):
    code, out, err = run(capsys, sub, "--help")
    assert code == 0 and out.startswith(f"usage: petseg {sub}") and "--help" in out


def test_course_spellings_equal_petseg_spellings():
    course = ["train", "--model", "resnet34_unet", "--device", "cpu", "--data_path", "d", "--epoch", "3",
              "--batch_size", "5", "--learning-rate", "0.02"]
    ours = ["train", "--model", "resnet34_unet", "--device", "cpu", "--data-root", "d", "--epochs", "3",
            "--batch-size", "5", "--lr", "0.02"]
    a, b = (train_config_from_args(build_parser().parse_args(x)) for x in (course, ours))
    assert a == b
    assert (a.model, a.device, a.data_root, a.epochs, a.batch_size, a.lr) == ("resnet34_unet", "cpu", "d", 3, 5, 0.02)
    for alias in ("--out-dir", "--log-dir"):   # the course's output folders are the run folders' parent
        assert train_config_from_args(build_parser().parse_args(["train", alias, "runs"])).checkpoint_dir == "runs"
    e = build_parser().parse_args(["evaluate", __file__, "--data_path", "d", "--batch_size", "3"])
    assert (e.data_root, e.batch_size) == ("d", 3)


def test_evaluate_writes_csv_with_consistent_figures(trained, capsys, tmp_path):
    code, out, err = run(capsys, "evaluate", trained["best"], "--data_path", trained["root"], "--split", "test",
                         "--csv", tmp_path / "rows.csv", "--json", tmp_path / "fig.json", "-q")
    assert code == 0, err
    figs = json.loads((tmp_path / "fig.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert [r["name"] for r in rows] == read_split(trained["root"], "test")
    assert list(rows[0]) == ["name", "species", "breed", "dice", "iou"]
    dice = np.array([float(r["dice"]) for r in rows]); iou = np.array([float(r["iou"]) for r in rows])
    assert figs["mean_dice"] == pytest.approx(dice.mean(), abs=1e-5)
    assert figs["mean_iou"] == pytest.approx(iou.mean(), abs=1e-5)
    assert np.allclose(dice, 2 * iou / (1 + iou), atol=1e-5)       # per image, Dice = 2 IoU / (1 + IoU)
    assert 0 <= figs["pooled_iou"] <= figs["pooled_dice"] <= 1
    assert f"mean Dice   {figs['mean_dice']:.4f}" in out and "pooled Dice" in out
    # the same figures from Python
    res = evaluate(trained["best"], trained["root"], "test", progress=False, device="cpu")
    assert res.mean_dice == pytest.approx(figs["mean_dice"]) and res.pooled_dice == pytest.approx(figs["pooled_dice"])
    # the default CSV lands next to the checkpoint
    code, out, err = run(capsys, "evaluate", trained["best"], "--data-root", trained["root"], "-q")
    assert code == 0 and (trained["best"].parent / "best_test_per_image.csv").is_file()


def test_evaluate_options_original_tta_ensemble_folder(trained, capsys, tmp_path):
    root = trained["root"]
    for extra in (["--protocol", "original"], ["--tta"], [trained["last"]]):
        code, out, err = run(capsys, "evaluate", trained["best"], *extra, "--data-root", root, "--json",
                             tmp_path / "f.json", "--csv", tmp_path / "r.csv", "-q")
        assert code == 0, (extra, err)
        assert 0 <= json.loads((tmp_path / "f.json").read_text())["mean_dice"] <= 1
    assert "original resolution" in run(capsys, "evaluate", trained["best"], "--protocol", "original", "--data-root",
                                        root, "--csv", tmp_path / "r.csv", "-q")[1]
    assert "models: 2 (ensemble" in run(capsys, "evaluate", trained["best"], trained["last"], "--data-root", root,
                                        "--csv", tmp_path / "r.csv", "-q")[1]
    # an ImageMaskFolder: the test split as images/ and 0/255 masks/
    (tmp_path / "im").mkdir(); (tmp_path / "mk").mkdir()
    for n in read_split(root, "test"):
        shutil.copy(root / "images" / f"{n}.jpg", tmp_path / "im")
        tri = np.asarray(Image.open(root / "annotations" / "trimaps" / f"{n}.png"))
        Image.fromarray(((tri != 2) * 255).astype(np.uint8)).save(tmp_path / "mk" / f"{n}.png")
    code, out, err = run(capsys, "evaluate", trained["best"], "--images-dir", tmp_path / "im", "--masks-dir",
                         tmp_path / "mk", "--json", tmp_path / "g.json", "--csv", tmp_path / "g.csv", "-q")
    assert code == 0, err
    code, _, _ = run(capsys, "evaluate", trained["best"], "--data-root", root, "--json", tmp_path / "o.json",
                     "--csv", tmp_path / "o.csv", "-q")
    assert json.loads((tmp_path / "g.json").read_text())["mean_dice"] == \
        pytest.approx(json.loads((tmp_path / "o.json").read_text())["mean_dice"], abs=1e-6)


def test_predict_masks_at_original_sizes(trained, capsys, tmp_path):
    images = trained["root"] / "images"
    code, out, err = run(capsys, "predict", trained["best"], images, "--out", tmp_path / "pred", "-q")
    assert code == 0, err
    masks = sorted((tmp_path / "pred" / "masks").glob("*.png"))
    assert [m.stem for m in masks] == sorted(p.stem for p in images.glob("*.jpg"))
    for m in masks:
        a = np.asarray(Image.open(m))
        assert a.shape == np.asarray(Image.open(images / f"{m.stem}.jpg")).shape[:2]
        assert set(np.unique(a)) <= {0, 255}
        assert Image.open(tmp_path / "pred" / "overlays" / m.name).size == Image.open(m).size
    # -c for an ensemble, --no-overlay, and any colour mode / size
    odd = tmp_path / "odd"; odd.mkdir()
    Image.new("RGBA", (51, 23), (200, 80, 20, 100)).save(odd / "rgba.png")
    Image.new("L", (17, 40), 90).save(odd / "gray.jpg")
    Image.new("P", (30, 30)).save(odd / "palette.png")
    code, out, err = run(capsys, "predict", "-c", trained["best"], "-c", trained["last"], odd, "--out",
                         tmp_path / "p2", "--no-overlay", "-q")
    assert code == 0, err
    assert {m.name: Image.open(m).size for m in (tmp_path / "p2" / "masks").iterdir()} == \
        {"rgba.png": (51, 23), "gray.png": (17, 40), "palette.png": (30, 30)}
    assert not (tmp_path / "p2" / "overlays").exists()


def test_checkpoint_round_trip_same_outputs(trained, capsys, tmp_path):
    "A checkpoint loaded, saved again and reloaded gives the same logits and the same mask files."
    model, ckpt = model_from_checkpoint(trained["best"])
    copy = save_checkpoint(tmp_path / "copy.pt", **load_checkpoint(trained["best"]))
    model2, _ = model_from_checkpoint(copy)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): assert torch.equal(model(x), model2(x))
    images = trained["root"] / "images"
    for name, ck in (("a", trained["best"]), ("b", copy)):
        assert run(capsys, "predict", ck, images, "--out", tmp_path / name, "--no-overlay", "-q")[0] == 0
    for m in (tmp_path / "a" / "masks").iterdir():
        assert m.read_bytes() == (tmp_path / "b" / "masks" / m.name).read_bytes()


def test_predict_folder_with_unreadable_files(trained, capsys, tmp_path):
    folder = tmp_path / "mixed"; folder.mkdir()
    names = read_split(trained["root"], "test")[:3]
    for n in names: shutil.copy(trained["root"] / "images" / f"{n}.jpg", folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    jpeg = (folder / f"{names[0]}.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[:200])
    (folder / "notes.txt").write_text("not an image, not an image extension: ignored")
    code, out, err = run(capsys, "predict", trained["best"], folder, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    for bad in ("empty.jpg", "random.png", "truncated.jpg"):
        assert sum(bad in line for line in err.splitlines()) == 1, (bad, err)   # reported, each once
    assert "skipped 3 unreadable" in out and "Traceback" not in err
    assert sorted(p.stem for p in (tmp_path / "out" / "masks").iterdir()) == sorted(names)


def test_predict_only_unreadable_files_is_an_error(trained, capsys, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\x00" * 64)
    code, out, err = run(capsys, "predict", trained["best"], tmp_path / "bad.jpg", "--out", tmp_path / "o", "-q")
    assert code == 1 and "bad.jpg" in err and "Traceback" not in err and err.count("\n") == 1


def _usage_cases(tmp: Path, trained: dict) -> list[tuple[str, list]]:
    afile = tmp / "afile.txt"; afile.write_text("x")
    adir = tmp / "adir"; adir.mkdir(exist_ok=True)
    ck, root = trained["best"], trained["root"]
    return [
        ("unknown model", ["train", "--model", "vgg16"]),
        ("zero epochs", ["train", "--epochs", "0"]),
        ("negative epochs", ["train", "--epoch", "-3"]),
        ("fractional epochs", ["train", "--epochs", "1.5"]),
        ("zero batch size", ["train", "--batch-size", "0"]),
        ("negative batch size", ["train", "--batch_size", "-1"]),
        ("zero learning rate", ["train", "--lr", "0"]),
        ("negative learning rate", ["train", "--learning-rate", "-0.1"]),
        ("NaN learning rate", ["train", "--lr", "nan"]),
        ("non-numeric learning rate", ["train", "--lr", "fast"]),
        ("bad --features", ["train", "--features", "8,x"]),
        ("bad --model-kwargs JSON", ["train", "--model-kwargs", "{features"]),
        ("images dir without masks dir", ["train", "--images-dir", adir]),
        ("missing images dir", ["train", "--images-dir", tmp / "nope", "--masks-dir", adir]),
        ("--pretrained with unet (ConfigError)", ["train", "--model", "unet", "--pretrained", "--data-root", root,
                                                  "--epochs", "1", *TINY, "--checkpoint-dir", tmp / "x"]),
        ("model kwargs that do not fit (ConfigError)", ["train", "--model-kwargs", '{"colour": 3}', "--data-root", root,
                                                        "--epochs", "1", *TINY, "--checkpoint-dir", tmp / "x"]),
        ("checkpoint dir is a file", ["train", "--checkpoint-dir", afile]),
        ("resume checkpoint missing", ["train", "--resume", tmp / "missing_last.pt"]),
        ("init-from checkpoint missing", ["train", "--init-from", tmp / "missing_best.pt"]),
        ("--init-from another model (ConfigError)", ["train", "--model", "resnet34_unet", "--init-from", ck, "--data-root",
                                                     root, "--epochs", "1", "--checkpoint-dir", tmp / "x"]),
        ("evaluate: missing checkpoint", ["evaluate", tmp / "missing.pt", "--data-root", root]),
        ("evaluate: checkpoint is a folder", ["evaluate", adir, "--data-root", root]),
        ("evaluate: missing data root", ["evaluate", ck, "--data-root", tmp / "nope"]),
        ("evaluate: --csv is a folder", ["evaluate", ck, "--data-root", root, "--csv", adir]),
        ("evaluate: unknown split", ["evaluate", ck, "--data-root", root, "--split", "dev"]),
        ("evaluate: unknown protocol", ["evaluate", ck, "--data-root", root, "--protocol", "full"]),
        ("predict: missing input", ["predict", ck, tmp / "nope.jpg"]),
        ("predict: no input", ["predict", ck]),
        ("predict: first path not a checkpoint", ["predict", adir, adir]),
        ("predict: output folder is a file", ["predict", ck, adir, "--out", afile]),
        ("predict: zero batch size", ["predict", ck, adir, "--batch-size", "0"]),
        ("demo: output folder is a file", ["demo", "--out", afile]),
        ("demo: zero epochs", ["demo", "--epochs", "0"]),
        ("download: root is a file", ["download", "--data-root", afile]),
        ("unknown subcommand", ["frobnicate"]),
        ("unknown flag", ["train", "--epochz", "3"]),
        ("no subcommand", []),
    ]


def test_usage_errors_exit_2_one_line(trained, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # the default --data-root (data/oxford-pet) is relative: never touch the checkout
    for case, argv in _usage_cases(tmp_path, trained):
        code, out, err = run(capsys, *argv)
        assert code == 2, (case, code, err)
        assert "Traceback" not in err and "Traceback" not in out, case
        if argv: assert err.count("\n") == 1 and "error" in err, (case, err)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file: no unreadable path")
def test_unreadable_checkpoint_is_a_usage_error(trained, capsys, tmp_path):
    ck = tmp_path / "locked.pt"; shutil.copy(trained["best"], ck); ck.chmod(0)
    code, out, err = run(capsys, "evaluate", ck, "--data-root", trained["root"])
    assert code == 2 and "permission denied" in err


def test_petseg_errors_exit_1_without_traceback(trained, capsys, tmp_path):
    bad = tmp_path / "bad.pt"; bad.write_bytes(os.urandom(300))
    code, out, err = run(capsys, "evaluate", bad, "--data-root", trained["root"])
    assert code == 1 and "bad.pt" in err and "Traceback" not in err
    code, out, err = run(capsys, "train", "--data-root", tmp_path / "absent", "--no-download", *TINY)
    assert code == 1 and "petseg download" in err and "Traceback" not in err
    half = tmp_path / "half"; (half / "images").mkdir(parents=True)
    code, out, err = run(capsys, "evaluate", trained["best"], "--data-root", half)
    assert code == 1 and "annotations" in err


def test_rerun_keeps_earlier_checkpoints_and_best_is_not_resumable(trained, capsys, tmp_path):
    "A second run under a taken name writes <name>-2/, the first run's files untouched; --overwrite replaces them;"
    "resuming from a best checkpoint (weights only) names the last one to resume from."
    ck = tmp_path / "ck"
    shutil.copytree(trained["run_dir"], ck / "unet")
    before = {p.name: p.read_bytes() for p in (ck / "unet").iterdir() if p.is_file()}
    args = ["train", "--data-root", trained["root"], "--epochs", "1", "--batch-size", "4", *TINY, "--checkpoint-dir", ck,
            "-q"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "earlier run" in out and f"last checkpoint: {ck / 'unet-2' / 'last.pt'}" in out
    assert {p.name: p.read_bytes() for p in (ck / "unet").iterdir() if p.is_file()} == before
    assert (ck / "unet-2" / "best.pt").stat().st_size < (ck / "unet-2" / "last.pt").stat().st_size   # no optimizer state
    code, out, err = run(capsys, "train", "--resume", ck / "unet-2" / "best.pt", "-q")
    assert code == 1 and f"--resume {ck / 'unet-2' / 'last.pt'}" in err and "Traceback" not in err
    code, out, err = run(capsys, *args, "--overwrite")
    assert code == 0 and not (ck / "unet-3").exists()
    assert (ck / "unet" / "last.pt").read_bytes() != before["last.pt"]


def test_train_downloads_missing_dataset(http_server, monkeypatch, capsys, tmp_path):
    "A missing dataset is downloaded first (from $PETSEG_DATA_URL here: a loopback server), saying so; then it trains."
    monkeypatch.setenv("PETSEG_DATA_URL", http_server.url)
    monkeypatch.setenv("PETSEG_DATA_MD5S", ",".join(f"{n}={m}" for n, m in http_server.md5s.items()))   # the mirror's MD5s
    args = ["train", "--data-root", tmp_path / "pets", "--epochs", "1", "--batch-size", "4", *TINY,
            "--checkpoint-dir", tmp_path / "ck"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "downloading" in err and str(tmp_path / "pets") in err
    assert [name for name, _ in http_server.requests] == ["images.tar.gz", "annotations.tar.gz"]
    assert (tmp_path / "ck" / "unet" / "best.pt").is_file()
    code, out, err = run(capsys, *args)                        # present now: nothing downloaded again
    assert code == 0 and "downloading" not in err and len(http_server.requests) == 2


def test_download_subcommand(http_server, monkeypatch, capsys, tmp_path, refused_url):
    "petseg download: success; a checksum mismatch and a refused connection are petseg errors (exit 1, one message)."
    code, out, err = run(capsys, "download", "--data-root", tmp_path / "bad", "--base-url", http_server.url, "-q")
    assert code == 1 and "MD5" in err and "Traceback" not in err          # the official checksums do not match
    code, out, err = run(capsys, "download", "--data_path", tmp_path / "r", "--base-url", refused_url, "-q")
    assert code == 1 and refused_url in err and "Traceback" not in err
    monkeypatch.setenv("PETSEG_DATA_MD5S", ",".join(f"{n}={m}" for n, m in http_server.md5s.items()))
    code, out, err = run(capsys, "download", "--data-root", tmp_path / "ok", "--base-url", http_server.url, "-q")
    assert code == 0 and (tmp_path / "ok" / "annotations" / "trainval.txt").is_file() and "ready" in out


def test_interrupted_training_exits_130_with_resume_command(monkeypatch, capsys, tmp_path):
    def interrupted(cfg):
        raise TrainingInterrupted("Training stopped by SIGINT", tmp_path / "unet" / "last.pt", signal.SIGINT)
    monkeypatch.setattr(cli, "train", interrupted)
    code, out, err = run(capsys, "train", "--images-dir", tmp_path, "--masks-dir", tmp_path, "--epochs", "5",
                         "--resume", __file__)
    assert code == 130 and "Traceback" not in err
    cmd = err.split("resume with: ")[1].strip()
    assert shlex.split(cmd) == ["petseg", "train", "--images-dir", str(tmp_path), "--masks-dir", str(tmp_path),
                                "--epochs", "5", "--resume", str(tmp_path / "unet" / "last.pt")]


def test_subprocess_sigint_then_resume_equals_uninterrupted(synthetic_root, tmp_path):
    "A real `petseg train` process: Ctrl-C mid-epoch -> exit 130 and a resume command; resuming ends bit-identical."
    args = ["train", "--data-root", str(synthetic_root), "--epochs", "6", "--batch-size", "2", *TINY]
    assert main([*args, "--checkpoint-dir", str(tmp_path / "full")]) == 0
    last = tmp_path / "cut" / "unet" / "last.pt"
    with open(tmp_path / "out.txt", "w") as out_f, open(tmp_path / "err.txt", "w") as err_f:
        proc = subprocess.Popen([*petseg_exe(), *args, "--checkpoint-dir", str(tmp_path / "cut")], stdout=out_f,
                                stderr=err_f, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 600
            # wait until epoch 1 has been saved (a fresh run first writes last.pt for "epoch 0"), then press Ctrl-C
            while not (last.is_file() and load_checkpoint(last)["epoch"] >= 1):
                assert proc.poll() is None, (tmp_path / "err.txt").read_text()
                assert time.monotonic() < deadline, "no checkpoint of epoch 1 after 600 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None: proc.kill(); proc.wait()
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # stopped inside an epoch: the resumable checkpoint is the end of the epoch before
    stopped = re.search(r"Training stopped by SIGINT in epoch (\d+); a resumable checkpoint "
                        r"\(end of epoch (\d+)\) is at (\S+)\.", out)
    assert stopped, (out, err)
    epoch, saved = int(stopped[1]), int(stopped[2])
    assert 2 <= epoch <= 6 and saved == epoch - 1 and Path(stopped[3]) == last
    assert load_checkpoint(last)["epoch"] == saved
    cmd = shlex.split(err.split("resume with: ")[1].splitlines()[0])
    assert cmd[:2] == ["petseg", "train"] and cmd[-2:] == ["--resume", str(last)]
    done = subprocess.run([*petseg_exe(), *cmd[1:]], capture_output=True, text=True, timeout=900, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f"resuming {last} at epoch {epoch}" in done.stdout
    a, b = (load_checkpoint(tmp_path / d / "unet" / "last.pt") for d in ("full", "cut"))
    assert a["epoch"] == b["epoch"] == 6
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert not (tmp_path / "cut" / "unet-2").exists()      # the resumed run kept writing into its own folder


def test_real_petseg_process(trained, tmp_path):
    "The installed console script: --help, a usage error, and an evaluation."
    exe = petseg_exe()
    r = subprocess.run([*exe, "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and all(sub in r.stdout for sub in ("download", "train", "evaluate", "predict", "demo"))
    r = subprocess.run([*exe, "train", "--epochs", "0"], capture_output=True, text=True, timeout=120, env=ENV,
                       cwd=tmp_path)   # the default --data-root is relative: keep it out of the checkout
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([*exe, "evaluate", str(trained["best"]), "--data_path", str(trained["root"]), "--csv",
                        str(tmp_path / "rows.csv"), "-q"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and "mean Dice" in r.stdout and (tmp_path / "rows.csv").is_file()
