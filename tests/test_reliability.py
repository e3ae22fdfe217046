"""Reliability, second pass (issue 15, the evaluation and prediction side): predict and demo never write over the
user's files, failed writes are one clear message with no temporary files left, evaluate keeps its figures when the
CSV cannot be written, command-line values are bounded, NaN weights are refused, and inference reads images with
petseg.data's readers. Read-only folders are simulated (the tests run as root, who may write anywhere): a small
wrapper patches the file functions of a real `petseg` process so that writes under one folder fail."""
from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import petseg.data
from petseg import cli
from petseg.checkpoint import OutputError
from petseg.evaluate import evaluate, write_rows_csv
from petseg.inference import OutputExistsError, predict

from petseg.training import TrainConfig, train

# the folder this test imported petseg from: this checkout, or site-packages when petseg is installed non-editable
PETSEG_HOME = Path(petseg.data.__file__).resolve().parents[1]
# one PyTorch thread; PYTHONPATH so that the `petseg` processes run the same petseg code as these tests
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(PETSEG_HOME), *filter(None, [os.environ.get("PYTHONPATH")])])}

# Runs `petseg.cli.main` with writes under $RO_DIR failing with errno $RO_ERRNO (default: permission denied); with
# $RO_MATCH, only files whose name matches that pattern fail (e.g. '*.png*': the PNGs and their temporary files).
READ_ONLY_WRAPPER = textwrap.dedent('''
    import builtins, errno, fnmatch, io, os, sys
    RO = os.path.realpath(os.environ["RO_DIR"])
    ERR = int(os.environ.get("RO_ERRNO", errno.EACCES))
    MATCH = os.environ.get("RO_MATCH")
    def blocked(path):
        try: p = os.path.realpath(os.fsdecode(os.fspath(path)))
        except TypeError: return False
        inside = p == RO or p.startswith(RO + os.sep)
        return inside and (MATCH is None or fnmatch.fnmatch(os.path.basename(p), MATCH))
    def fail(path): raise OSError(ERR, os.strerror(ERR), os.fsdecode(os.fspath(path)))
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and blocked(file): fail(file)
        return real_open(file, mode, *a, **k)
    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path): fail(path)
        return real_os_open(path, flags, *a, **k)
    def fake_mkdir(path, *a, **k):
        if blocked(path): fail(path)
        return real_mkdir(path, *a, **k)
    builtins.open = io.open = fake_open
    os.open, os.mkdir = fake_os_open, fake_mkdir
    import pathlib
    if hasattr(pathlib, "_NormalAccessor"):  # Python 3.10: Path methods call the io.open/os.mkdir bound at import
        pathlib._NormalAccessor.open = staticmethod(fake_open)
        pathlib._NormalAccessor.mkdir = staticmethod(fake_mkdir)
    from petseg.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def petseg_exe() -> list[str]:
    """The `petseg` command of the Python running these tests: the console script beside `sys.executable`, else
    `python -m petseg` (never another environment's `petseg` found on PATH, e.g. in a supported-versions virtualenv)."""
    exe = Path(sys.executable).with_name("petseg")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "petseg"]


def run_petseg(*argv, cwd=None) -> subprocess.CompletedProcess:
    "Run the real `petseg *argv` command."
    return subprocess.run([*petseg_exe(), *map(str, argv)], capture_output=True, text=True, timeout=300, env=ENV, cwd=cwd)


def petseg_read_only(tmp_path: Path, ro_dir: Path, *argv, errno_: int = errno.EACCES, match: str | None = None,
                     cwd=None) -> subprocess.CompletedProcess:
    "Run `petseg *argv` in a process where writing under `ro_dir` fails with `errno_`."
    wrapper = tmp_path / "petseg_read_only.py"
    wrapper.write_text(READ_ONLY_WRAPPER)
    env = {**ENV, "RO_DIR": str(ro_dir), "RO_ERRNO": str(errno_), **({"RO_MATCH": match} if match else {})}
    return subprocess.run([sys.executable, str(wrapper), *map(str, argv)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def one_clean_line(r: subprocess.CompletedProcess) -> str:
    "The stderr of a failed command: one line, no traceback."
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    "Relative path -> SHA-1 of every file under `folder` (hidden ones too)."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(synthetic_root, tmp_path_factory) -> Path:
    "A tiny UNet trained for one epoch through the Python API: its best checkpoint."
    tmp = tmp_path_factory.mktemp("reliability")
    history = train(TrainConfig(data_root=str(synthetic_root), model="unet", model_kwargs={"features": (4, 8, 16, 32)},
                                image_size=32, epochs=1, batch_size=4, device="cpu", num_workers=0, seed=0,
                                checkpoint_dir=str(tmp / "ck"), progress=False, verbose=False, live_plot=False))
    return Path(history.checkpoints["best"])


@pytest.fixture
def my_data(synthetic_root, tmp_path) -> Path:
    "The README's own layout: my_data/images (JPEG photos) and my_data/masks (0/255 PNG ground truth), 4 pairs."
    root = tmp_path / "my_data"
    (root / "images").mkdir(parents=True); (root / "masks").mkdir()
    ds = petseg.data.OxfordPetDataset(synthetic_root, "test")
    for i in range(4):
        item = ds[i]
        shutil.copy(synthetic_root / "images" / f"{item['name']}.jpg", root / "images")
        Image.fromarray(item["mask"].astype(np.uint8) * 255).save(root / "masks" / f"{item['name']}.png")
    return root


# 1. predict never writes over the user's files

def test_predict_into_the_readme_layout_keeps_the_ground_truth(ckpt, my_data):
    before = snapshot(my_data)
    r = run_petseg("predict", ckpt, my_data / "images", "--out", my_data, "-q")
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_clean_line(r)
    assert str(my_data / "masks") in line and "did not write" in line and "--overwrite" in line
    assert snapshot(my_data) == before                                  # nothing written, nothing replaced


def test_predict_never_overwrites_its_input_images(ckpt, my_data, tmp_path):
    out = tmp_path / "pred"
    assert run_petseg("predict", ckpt, my_data / "images", "--out", out, "-q").returncode == 0
    before = snapshot(out)
    # predicting on the overlays would write each overlay over the very file being read, even with --overwrite
    r = run_petseg("predict", ckpt, out / "overlays", "--out", out, "--overwrite", "-q")
    assert r.returncode == 2 and "holds the images" in one_clean_line(r)
    assert snapshot(out) == before


def test_predict_again_replaces_only_its_own_files(ckpt, my_data, tmp_path):
    out = tmp_path / "pred"
    first = predict(ckpt, my_data / "images", out_dir=out, device="cpu", progress=False)
    stamp = {p.mask_path: p.mask_path.stat().st_mtime_ns for p in first}
    second = predict(ckpt, my_data / "images", out_dir=out, device="cpu", progress=False)  # its own files: replaced
    assert [p.mask_path for p in second] == list(stamp)
    Image.new("L", (8, 8), 7).save(out / "masks" / "notes.png")                                 # a file of the user's
    with pytest.raises(OutputExistsError, match="notes.png"):
        predict(ckpt, my_data / "images", out_dir=out, device="cpu", progress=False)
    name = first[0].name
    Image.new("L", (8, 8), 7).save(out / "masks" / f"{name}.png")                                # the user's, same name
    with pytest.raises(OutputExistsError):
        predict(ckpt, my_data / "images", out_dir=out, device="cpu", progress=False)
    assert np.asarray(Image.open(out / "masks" / f"{name}.png")).max() == 7
    predict(ckpt, my_data / "images", out_dir=out, device="cpu", progress=False, overwrite=True)  # asked for: written
    assert set(np.unique(np.asarray(Image.open(out / "masks" / f"{name}.png")))) <= {0, 255}
    assert np.asarray(Image.open(out / "masks" / "notes.png")).max() == 7                         # other names kept


# 2. demo never writes into a folder it did not make

def test_demo_refuses_an_existing_dataset(synthetic_root, tmp_path):
    out = tmp_path / "work"
    shutil.copytree(synthetic_root, out / "data")                    # stands for a real Oxford-IIIT Pet copy
    before = snapshot(out)
    r = run_petseg("demo", "--out", out, "--epochs", "1", "-q")
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_clean_line(r)
    assert str(out) in line and "--out" in line
    assert snapshot(out) == before


def test_demo_folder_new_empty_or_its_own(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_demo", lambda out, *a: calls.append(out) or {})   # the folder rule only, not the work
    cli.run_demo(tmp_path / "new")                                    # a new folder
    (tmp_path / "empty").mkdir(); cli.run_demo(tmp_path / "empty")     # an empty one
    (tmp_path / "new" / "data").mkdir(); cli.run_demo(tmp_path / "new")   # an earlier demo's, with its files
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(OutputExistsError, match="thesis.tex"): cli.run_demo(tmp_path / "mine")
    assert len(calls) == 3 and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


# 3. failing writes: one message naming the file, nothing half-written, and evaluate keeps its figures

def test_evaluate_prints_figures_when_the_checkpoint_folder_is_read_only(ckpt, synthetic_root, tmp_path):
    ro = tmp_path / "ro"; ro.mkdir()
    ck = Path(shutil.copy(ckpt, ro / "best.pt"))
    before = snapshot(ro)
    r = petseg_read_only(tmp_path, ro, "evaluate", ck, "--data-root", synthetic_root, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert "mean Dice" in r.stdout
    line = one_clean_line(r)
    assert "warning" in line and str(ro / "best_test_per_image.csv") in line and "--csv" in line
    assert snapshot(ro) == before                                       # no temporary file left


def test_evaluate_csv_on_a_full_disk(ckpt, synthetic_root, tmp_path):
    out = tmp_path / "full"; out.mkdir()
    r = petseg_read_only(tmp_path, out, "evaluate", ckpt, "--data-root", synthetic_root, "--device", "cpu",
                         "--csv", out / "rows.csv", "-q", errno_=errno.ENOSPC)
    assert r.returncode == 1 and "mean Dice" in r.stdout
    line = one_clean_line(r)
    assert str(out / "rows.csv") in line and "No space left" in line
    assert list(out.iterdir()) == []


def test_predict_in_a_read_only_current_folder(ckpt, my_data, tmp_path):
    ro = tmp_path / "ro"; ro.mkdir()
    r = petseg_read_only(tmp_path, ro, "predict", ckpt, my_data / "images", "--device", "cpu", "-q", cwd=ro)
    assert r.returncode == 1
    line = one_clean_line(r)
    assert "predictions" in line and "Permission denied" in line
    assert list(ro.iterdir()) == []


def test_predict_on_a_full_disk_leaves_no_partial_files(ckpt, my_data, tmp_path):
    out = tmp_path / "pred"
    r = petseg_read_only(tmp_path, out, "predict", ckpt, my_data / "images", "--out", out, "--device", "cpu", "-q",
                         errno_=errno.ENOSPC, match="*.png*")
    assert r.returncode == 1
    line = one_clean_line(r)
    assert str(out / "masks") in line and ".png" in line and "No space left" in line
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert not list(out.rglob("*.png"))


def test_failed_csv_write_keeps_the_old_file_and_warns(ckpt, synthetic_root, tmp_path, monkeypatch):
    old = tmp_path / "rows.csv"; old.write_text("name,dice\nold,1.0\n")

    class DiskFull(csv.DictWriter):
        def writerows(self, rows): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(csv, "DictWriter", DiskFull)
    with pytest.warns(UserWarning, match="rows.csv.*out_csv"):
        res = evaluate(ckpt, synthetic_root, "test", device="cpu", out_csv=old, progress=False)
    assert res.n_images == 10 and 0 <= res.mean_dice <= 1 and res.csv_path is None
    assert old.read_text() == "name,dice\nold,1.0\n" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]
    with pytest.raises(OutputError, match="not_a_folder"):                           # a real OSError, no patching
        (tmp_path / "not_a_folder").write_text("x")
        write_rows_csv(res.rows, tmp_path / "not_a_folder" / "rows.csv")


# 4. command-line values are bounded in the parser, with the limits in --help

BAD_VALUES = [("--threshold", "0"), ("--threshold", "1"), ("--threshold", "1.5"), ("--threshold", "-0.2"),
              ("--threshold", "nan"), ("--size", "1"), ("--size", "8"), ("--size", "100000"), ("--batch-size", "100000")]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("flag,value", BAD_VALUES)
def test_out_of_range_values_are_usage_errors(ckpt, my_data, synthetic_root, tmp_path, capsys, command, flag, value):
    target = ["--data-root", synthetic_root] if command == "evaluate" else [my_data / "images", "--out", tmp_path / "p"]
    code = cli.main([str(a) for a in [command, ckpt, *target, flag, value, "--device", "cpu", "-q"]])
    out, err = capsys.readouterr()
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_evaluate_num_workers_is_bounded(ckpt, synthetic_root, capsys):
    assert cli.main(["evaluate", str(ckpt), "--data-root", str(synthetic_root), "--num-workers", "1000"]) == 2
    assert "from 0 to 64" in capsys.readouterr().err


def test_help_states_the_limits():
    for command in ("evaluate", "predict"):
        text = " ".join(run_petseg(command, "--help").stdout.split())
        assert "16 to 2048 pixels" in text and "strictly between 0 and 1" in text and "1 to 1024" in text


def test_library_refuses_out_of_range_values(ckpt, my_data):
    with pytest.raises(ValueError, match="between 0 and 1"):
        predict(ckpt, my_data / "images", threshold=1.5, device="cpu", progress=False)
    with pytest.raises(ValueError, match="16 to 2048"):
        predict(ckpt, my_data / "images", size=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        evaluate(ckpt, images_dir=my_data / "images", masks_dir=my_data / "masks", threshold=0, device="cpu", progress=False)


# 5. NaN weights are refused, naming the checkpoint

@pytest.fixture
def nan_ckpt(ckpt, tmp_path) -> Path:
    "The tiny checkpoint with every floating-point weight set to NaN."
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    n = 0
    for value in state.values():
        if isinstance(value, dict):
            for t in value.values():
                if torch.is_tensor(t) and t.is_floating_point(): t.fill_(float("nan")); n += 1
    assert n, "no weights found in the checkpoint"
    torch.save(state, tmp_path / "diverged.pt")
    return tmp_path / "diverged.pt"


def _says_nan(line: str, path: Path) -> bool:
    return path.name in line and ("nan" in line.lower() or "finite" in line.lower())


def test_predict_with_nan_weights_fails_naming_the_checkpoint(nan_ckpt, my_data, tmp_path):
    r = run_petseg("predict", nan_ckpt, my_data / "images", "--out", tmp_path / "pred", "--device", "cpu", "-q")
    assert r.returncode == 1 and _says_nan(one_clean_line(r), nan_ckpt), r.stderr
    assert not (tmp_path / "pred" / "masks").exists()


def test_evaluate_with_nan_weights_fails_naming_the_checkpoint(nan_ckpt, synthetic_root, tmp_path):
    r = run_petseg("evaluate", nan_ckpt, "--data-root", synthetic_root, "--csv", tmp_path / "rows.csv", "--device", "cpu", "-q")
    assert r.returncode == 1 and _says_nan(one_clean_line(r), nan_ckpt), r.stderr
    assert "mean Dice" not in r.stdout and not (tmp_path / "rows.csv").exists()


# 6. inference reads images with petseg.data's readers (EXIF orientation is theirs to honour)

def test_predict_reads_images_like_petseg_data(ckpt, tmp_path):
    photo = tmp_path / "rotated.jpg"
    exif = Image.Exif(); exif[0x0112] = 6                              # "rotate 90° clockwise to display"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(photo, exif=exif.tobytes())
    (pred,) = predict(ckpt, photo, out_dir=tmp_path / "out", device="cpu", progress=False)
    assert pred.size == petseg.data.load_rgb(photo).shape[:2] == pred.mask.shape
    assert Image.open(pred.mask_path).size[::-1] == pred.size
