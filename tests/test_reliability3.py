"""Reliability, third pass (issue 24, sections 1, 3 and the split-file items of 4): a run interrupted twice (SIGINT,
then SIGKILL) still resumes to the end bit for bit, `last.pt` changes only when an epoch completes, a resume refuses
data that are not the run's, the run lock dies with the training process (not with its DataLoader workers); split
files that would leak or shift the split are refused naming the file; broken symlinks and unreadable file types in a
user's folder are reported as such; `--features` and `--model-kwargs` may not disagree."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import petseg.data
from petseg.checkpoint import ConfigError, load_checkpoint
from petseg.cli import UsageError, build_parser, train_config_from_args
from petseg.cli import main as cli_main
from petseg.data import DatasetError, ImageMaskFolder, OxfordPetDataset, SkippedFilesWarning, read_split
from petseg.synthetic import make_synthetic_pets
from petseg.training import RUN_FILES, TrainConfig, run_lock, train

PETSEG_HOME = Path(petseg.data.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(PETSEG_HOME), *filter(None, [os.environ.get("PYTHONPATH")])])}

# `petseg *argv` in a real process that sends itself signal $SIGNAL_NAME right after its $SIGNAL_AT_BATCH-th training
# batch (a deterministic Ctrl-C or kill -9 in the middle of an epoch). With $CHILDREN_FILE, it first writes the pids of
# its children (the DataLoader workers) there.
SIGNAL_WRAPPER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import petseg.learner as L
    at, name, count = int(os.environ["SIGNAL_AT_BATCH"]), os.environ["SIGNAL_NAME"], [0]
    one_batch = L.Learner.one_batch
    def counted(self):
        one_batch(self)
        if not self.training: return
        count[0] += 1
        if count[0] != at: return
        if os.environ.get("CHILDREN_FILE"):
            kids = " ".join(Path(t, "children").read_text() for t in Path("/proc/self/task").iterdir())
            Path(os.environ["CHILDREN_FILE"]).write_text(kids)
        os.kill(os.getpid(), getattr(signal, name))
    L.Learner.one_batch = counted
    from petseg.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def petseg_with_signal(tmp_path: Path, signame: str, at_batch: int, *argv, children_file: Path | None = None):
    """Run `petseg *argv` as a real process that gets `signal` after its `at_batch`-th training batch. Its output goes
    to files, not pipes: a pipe would keep this call waiting for every child process that inherited it."""
    wrapper = tmp_path / "petseg_signal.py"
    wrapper.write_text(SIGNAL_WRAPPER)
    env = {**ENV, "SIGNAL_NAME": signame, "SIGNAL_AT_BATCH": str(at_batch),
           **({"CHILDREN_FILE": str(children_file)} if children_file else {})}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        code = subprocess.run([sys.executable, str(wrapper), *map(str, argv)], stdout=o, stderr=e, timeout=300, env=env).returncode
    return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


def main(argv) -> int:
    "`petseg *argv` in this process (paths as strings); the exit code."
    return cli_main([str(a) for a in argv])


def petseg_exe() -> list[str]:
    exe = Path(sys.executable).with_name("petseg")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "petseg"]


def alive(pid: int) -> bool:
    "Whether process `pid` exists and is not a zombie."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError: return False


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def epochs_in_csv(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f: return [int(r["epoch"]) for r in csv.DictReader(f)]


# ------------------------------------------------------------------ section 1: interrupted twice, resumed to the end
TINY = ["--size", "32", "--features", "8,16,32,64", "--epochs", "3", "--batch-size", "2", "--max-train-batches", "4",
        "--device", "cpu", "--seed", "0", "-q"]


def test_interrupted_twice_sigint_then_sigkill_resumes_bit_identical(synthetic_root, tmp_path, capsys):
    """Paused after epoch 1; a resume stopped by Ctrl-C in epoch 2; a resume killed (-9) in epoch 2 with a DataLoader
    worker alive; a last resume to the end: `last.pt` stays the end of epoch 1 throughout, the run lock is free at
    once after the kill, and the end equals an uninterrupted run bit for bit (one metrics row per epoch)."""
    args = ["train", "--data-root", synthetic_root, *TINY]
    assert main([*args, "--num-workers", "0", "--checkpoint-dir", tmp_path / "full"]) == 0
    assert main([*args, "--num-workers", "0", "--checkpoint-dir", tmp_path / "cut", "--stop-after-epoch", "1"]) == 0
    run_dir = tmp_path / "cut" / "unet"
    last = run_dir / "last.pt"
    paused = last.read_bytes()
    assert load_checkpoint(last)["epoch"] == 1
    capsys.readouterr()

    # 1st interruption: Ctrl-C after the 2nd batch of epoch 2; the checkpoint of epoch 1 is untouched and named
    r = petseg_with_signal(tmp_path, "SIGINT", 2, "train", "--resume", last, "--num-workers", "0", "-q")
    assert r.returncode == 130, r.stderr
    assert f"Training stopped by SIGINT in epoch 2; a resumable checkpoint (end of epoch 1) is at {last}." in r.stdout, r.stdout
    assert last.read_bytes() == paused

    # 2nd interruption: kill -9 after the 2nd batch of epoch 2; its DataLoader worker outlives it
    children = tmp_path / "children.txt"
    r = petseg_with_signal(tmp_path, "SIGKILL", 2, "train", "--resume", last, "--num-workers", "1", "-q", children_file=children)
    assert r.returncode == -signal.SIGKILL, r.stderr
    orphans = [p for p in map(int, children.read_text().split()) if alive(p)]
    with run_lock(run_dir): pass          # free at once: the dead process's workers do not hold it
    assert orphans, "no DataLoader worker outlived the killed process: the lock check above proved nothing"
    assert last.read_bytes() == paused

    done = subprocess.run([*petseg_exe(), "train", "--resume", str(last), "--num-workers", "0", "-q"], capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f"resuming {last} at epoch 2" in done.stdout
    a, b = load_checkpoint(tmp_path / "full" / "unet" / "last.pt"), load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 3 and b["finished"]
    assert a["model_state"].keys() == b["model_state"].keys()
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert epochs_in_csv(run_dir) == [1, 2, 3]


def test_a_resume_killed_in_its_first_epoch_changes_no_file(synthetic_root, tmp_path):
    "A resumed run changes no run file before an epoch completes (it used to rewrite last.pt as 'epoch 0' at its start)."
    assert main(["train", "--data-root", synthetic_root, *TINY, "--num-workers", "0", "--checkpoint-dir", tmp_path,
                 "--stop-after-epoch", "1"]) == 0
    last = tmp_path / "unet" / "last.pt"
    files = lambda: {p.name: p.read_bytes() for p in last.parent.iterdir() if p.name in RUN_FILES}
    before = files()
    assert {"last.pt", "best.pt", "metrics.csv", "config.json"} <= set(before)
    r = petseg_with_signal(tmp_path, "SIGKILL", 1, "train", "--resume", last, "--num-workers", "0", "-q")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert files() == before


def test_the_run_lock_dies_with_the_training_process(synthetic_root, tmp_path):
    """kill -9 of a run whose DataLoader workers live on for a while: the run is free at once (the workers used to
    hold the lock, so that a resume was refused with 'another petseg process is training')."""
    children = tmp_path / "children.txt"
    r = petseg_with_signal(tmp_path, "SIGKILL", 2, "train", "--data-root", synthetic_root, *TINY, "--num-workers", "1",
                           "--checkpoint-dir", tmp_path / "ck", children_file=children)
    assert r.returncode == -signal.SIGKILL, r.stderr
    orphans = [p for p in map(int, children.read_text().split()) if alive(p)]
    with run_lock(tmp_path / "ck" / "unet"): pass
    assert orphans, "no DataLoader worker outlived the killed process: the lock check above proved nothing"


# ------------------------------------------------------------------ section 1: a resume checks the data first
def _config(root: Path, ckpt_dir: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(root), model_kwargs={"features": (4, 8, 16, 32)}, image_size=32, batch_size=4, epochs=3,
                num_workers=0, seed=0, device="cpu", checkpoint_dir=str(ckpt_dir), progress=False, live_plot=False)
    return TrainConfig(**{**base, **kw})


def test_resume_refuses_data_that_are_not_the_runs(tmp_path, capsys):
    """Grown, shrunk or another dataset: the resume is refused in one message naming what changed, before anything is
    written; with the data put back, the same checkpoint resumes to the end."""
    big = make_synthetic_pets(tmp_path / "big", n_trainval=40, n_test=4, size=48, seed=0)
    lines = (big / "annotations" / "trainval.txt").read_text().splitlines()
    root = Path(shutil.copytree(big, tmp_path / "pets"))
    split = root / "annotations" / "trainval.txt"
    split.write_text("\n".join(lines[:20]) + "\n")                      # the run's data: 18 train, 2 valid
    other = Path(shutil.copytree(big, tmp_path / "other"))
    (other / "annotations" / "trainval.txt").write_text("\n".join(lines[20:]) + "\n")   # 18 + 2 other images

    half = train(_config(root, tmp_path / "ck", stop_after_epoch=1))
    last = half.checkpoints["last"]
    files = lambda: {p.name: p.read_bytes() for p in half.run_dir.iterdir() if p.is_file()}
    before = files()

    cases = [("\n".join(lines[:30]) + "\n", None, r"18 train images then, 27 now; .*4 batches per epoch then, 6 now"),
             ("\n".join(lines[:15]) + "\n", None, r"18 train images then, 13 now; 4 batches per epoch then, 3 now"),
             (None, other, r"as many images as before, but other ones")]
    for text, data_root, changed in cases:
        if text is not None: split.write_text(text)
        with pytest.raises(ConfigError, match=f"^resume: the data in .* are not those {last} was trained on .*{changed}"):
            train(TrainConfig(resume=str(last), progress=False, **({"data_root": str(data_root)} if data_root else {})))
        assert files() == before, text                                   # nothing written
        split.write_text("\n".join(lines[:20]) + "\n")
    rest = train(TrainConfig(resume=str(last), progress=False))
    assert [r["epoch"] for r in rest] == [1, 2, 3] and rest.status == "finished"

    # the same through the command line: one line, exit 2
    split.write_text("\n".join(lines[:15]) + "\n")
    half2 = train(_config(root, tmp_path / "ck2", stop_after_epoch=1))
    split.write_text("\n".join(lines[:20]) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(half2.checkpoints["last"]), "-q"]) == 2
    assert "13 train images then, 18 now" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ section 3 and 4: split files
def _write(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def _lines(root: Path, name: str = "trainval") -> list[str]:
    return (root / "annotations" / f"{name}.txt").read_text().splitlines()


def test_test_ids_in_trainval_are_refused(pets_copy, tmp_path, capsys):
    test = _lines(pets_copy, "test")
    _write(pets_copy / "annotations" / "trainval.txt", "\n".join(_lines(pets_copy) + test[:3]) + "\n")
    for split in ("train", "valid", "test"):
        with pytest.raises(DatasetError, match=r"trainval.txt lists 3 image\(s\) of the test split .*test.txt"):
            OxfordPetDataset(pets_copy, split)
    assert main(["train", "--data-root", pets_copy, "--checkpoint-dir", tmp_path / "ck", "--no-download", "-q"]) == 1
    assert "trainval.txt lists 3 image(s) of the test split" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "ck").exists()                 # refused before any run folder is made


@pytest.mark.parametrize("kind", ["one line", "whole file"])
def test_repeated_split_lines_are_refused(pets_copy, kind):
    "A repeated line would count an image twice and shift the every-10th-line split (an image in train and valid)."
    lines = _lines(pets_copy)
    _write(pets_copy / "annotations" / "trainval.txt",
           "\n".join(lines[:3] + lines[2:] if kind == "one line" else lines + lines) + "\n")
    expected = (r"lists 1 image id\(s\) more than once: Bengal_1 \(lines 3 and 4\)" if kind == "one line" else
                r"lists 20 image id\(s\) more than once \(the whole list appears twice\)")
    with pytest.raises(DatasetError, match=f"trainval.txt {expected}"):
        read_split(pets_copy, "train")


@pytest.mark.parametrize("bad_id", ["ABSOLUTE", "../outside", "sub/dir"])
def test_split_ids_that_are_paths_are_refused(pets_copy, tmp_path, bad_id):
    "An absolute path as an id used to load a file outside the dataset root."
    outside = tmp_path / "outside"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f"{outside}.jpg")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(f"{outside}.png")
    bad_id = str(outside) if bad_id == "ABSOLUTE" else bad_id
    _write(pets_copy / "annotations" / "trainval.txt", "\n".join(_lines(pets_copy) + [f"{bad_id} 1 1 1"]) + "\n")
    with pytest.raises(DatasetError, match=r"trainval.txt names files outside images/ \(line 21: .*\): each line must start"):
        OxfordPetDataset(pets_copy, "train")


@pytest.mark.parametrize("encoding,kind", [("utf-16", "UTF-16 text"), ("utf-16-le", "UTF-16 text"),
                                           ("latin-1", "not UTF-8 text")])
def test_split_file_in_another_encoding_is_one_line_and_no_run_folder(pets_copy, tmp_path, capsys, encoding, kind):
    lines = _lines(pets_copy)
    _write(pets_copy / "annotations" / "trainval.txt", ("\n".join(lines) + "\n# chats et chiens: Ragdoll, Sacré de Birmanie\n").encode(encoding))
    code = main(["train", "--data-root", pets_copy, "--checkpoint-dir", tmp_path / "ck", "--no-download", "-q"])
    err = one_line(capsys.readouterr().err)
    assert code == 1 and f"trainval.txt is {kind}" in err and "save it as UTF-8" in err, err
    assert not (tmp_path / "ck").exists()


def test_a_byte_order_mark_loses_no_image(pets_copy):
    lines = _lines(pets_copy)
    _write(pets_copy / "annotations" / "trainval.txt", ("\n".join(lines) + "\n").encode("utf-8-sig"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)
        valid = OxfordPetDataset(pets_copy, "valid")
    assert valid.names == [l.split()[0] for l in lines[::10]] and valid.names[0] == "Abyssinian_1"


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_or_one_line_trainval_names_the_file_and_the_rule(pets_copy, n):
    _write(pets_copy / "annotations" / "trainval.txt", "".join(l + "\n" for l in _lines(pets_copy)[:n]))
    with pytest.raises(DatasetError, match=rf"trainval.txt lists {n} image id\(s\), so the train split is empty: "
                                           r"validation takes the lines whose 0-based index i has i % 10 == 0"):
        OxfordPetDataset(pets_copy, "train")


# ------------------------------------------------------------------ a user's folder
@pytest.fixture
def folder(tmp_path) -> Path:
    "own/images (3 JPEGs) and own/masks (3 PNGs)."
    d = tmp_path / "own"
    (d / "images").mkdir(parents=True); (d / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(d / "images" / f"p{i}.jpg")
        Image.fromarray((np.arange(256).reshape(16, 16) % 2 * 255).astype(np.uint8)).save(d / "masks" / f"p{i}.png")
    return d


def test_looping_symlinks_are_skipped_with_the_warning(folder):
    os.symlink("loop.jpg", folder / "images" / "loop.jpg")                              # no mask
    os.symlink("b.jpg", folder / "images" / "a.jpg"); os.symlink("a.jpg", folder / "images" / "b.jpg")
    shutil.copy(folder / "masks" / "p0.png", folder / "masks" / "a.png")                 # a mask for one of them
    with pytest.warns(SkippedFilesWarning, match=r"Skipped 3 unreadable .*a \(.*a.jpg is a symlink that cannot be followed"):
        ds = ImageMaskFolder(folder / "images", folder / "masks")
    assert ds.names == ["p0", "p1", "p2"] and set(ds.skipped) == {"a", "b", "loop"}


def test_a_mask_whose_photo_is_heic_or_svg_says_so(folder):
    (folder / "images" / "p1.jpg").rename(folder / "images" / "p1.heic")
    (folder / "images" / "p2.jpg").unlink(); (folder / "images" / "p2.svg").write_text("<svg/>")
    with pytest.raises(DatasetError, match=r"masks without an image in .*: p1.png \(p1.heic is a file type petseg does not "
                                           r"read: convert it to PNG or JPEG\), p2.png \(p2.svg is a file type"):
        ImageMaskFolder(folder / "images", folder / "masks")


# ------------------------------------------------------------------ the command line
def test_features_and_model_kwargs_features_may_not_disagree():
    parse = lambda *a: train_config_from_args(build_parser().parse_args(["train", *a]))
    with pytest.raises(UsageError, match=r"--features 8,16,32 and --model-kwargs features \[4, 8, 16\] disagree"):
        parse("--features", "8,16,32", "--model-kwargs", '{"features": [4, 8, 16]}')
    agree = parse("--features", "8,16,32", "--model-kwargs", '{"features": [8, 16, 32], "bilinear": true}')
    assert agree.model_kwargs == {"features": [8, 16, 32], "bilinear": True}
