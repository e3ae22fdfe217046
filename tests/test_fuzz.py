"""A small, seeded fuzz test: random bytes, truncated and bit-flipped copies of real (synthetic) JPEG, PNG and
checkpoint files, fed as images, masks and checkpoints through the public functions. Each case must end in a petseg
error (a `PetsegError` subclass), in a reported skip, or in a normal result; never in any other exception.

Bounded: a fixed seed and a fixed number of variants per kind, all tiny, so the whole file runs in seconds."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petseg.data import ImageMaskFolder, OxfordPetDataset, PetsegError
from petseg.synthetic import make_synthetic_pets
from petseg.evaluate import evaluate
from petseg.inference import predict
from petseg.models import build_model
from petseg.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

SEED = 20240601
N_VARIANTS = 12          # per kind of corruption and per file type


def corruptions(data: bytes, rng: np.random.Generator, n: int = N_VARIANTS) -> list[tuple[str, bytes]]:
    "(label, bytes) variants of a real file: empty, random bytes, truncations, bit flips, a zeroed middle."
    out = [("empty", b""), ("one byte", data[:1])]
    for i in range(n):
        out.append((f"random bytes #{i}", rng.bytes(int(rng.integers(1, 4096)))))
        out.append((f"truncated #{i}", data[: int(rng.integers(1, max(2, len(data) - 1)))]))
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 16))): flipped[pos] ^= 1 << int(rng.integers(0, 8))
        out.append((f"bit flips #{i}", bytes(flipped)))
    mid = bytearray(data); a = len(data) // 3; mid[a: 2 * a] = bytes(len(mid[a: 2 * a]))
    out.append(("zeroed middle", bytes(mid)))
    out.append(("header only", data[:32]))
    return out


def outcome(fn) -> str:
    "Run `fn`: its own result ('ok', 'skipped'), or 'petseg:<Error>'; any other exception fails the test."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try: r = fn()
        except PetsegError as e: return f"petseg:{type(e).__name__}"
    return r if isinstance(r, str) else "ok"


def drain(ds) -> str:
    "Read every item of a dataset; 'skipped' if it left a file out (items of broken files may raise petseg errors)."
    for i in range(len(ds)): ds[i]
    return "skipped" if ds.skipped else "ok"


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    return make_synthetic_pets(tmp_path_factory.mktemp("fuzz") / "pets", n_trainval=2, n_test=3, size=40, seed=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", features=(4, 8, 16, 32))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model_name="unet", model_kwargs=dict(features=(4, 8, 16, 32)), model_state=model.state_dict(),
                    epoch=1, metrics={}, config={}, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return path


def _copy_root(pets: Path, dest: Path) -> Path:
    if dest.exists(): shutil.rmtree(dest)
    shutil.copytree(pets, dest)
    return dest


@pytest.mark.parametrize("what", ["image", "trimap"])
def test_fuzz_oxford_files(pets, tmp_path, what):
    "Corrupt one test image (JPEG) or trimap (PNG): the dataset skips it or raises a petseg error; evaluate too."
    rng = np.random.default_rng(SEED + (what == "trimap"))
    name = (pets / "annotations" / "test.txt").read_text().split()[0]
    rel = Path("images") / f"{name}.jpg" if what == "image" else Path("annotations") / "trimaps" / f"{name}.png"
    model = build_model("unet", features=(4, 8, 16, 32)).eval()
    seen = {}
    for label, data in corruptions((pets / rel).read_bytes(), rng):
        root = _copy_root(pets, tmp_path / "root")
        (root / rel).write_bytes(data)
        def run():
            got = drain(OxfordPetDataset(root, "test"))
            res = evaluate(model, root, "test", size=32, progress=False, device="cpu")
            assert res.n_images == (2 if got == "skipped" else 3)
            return got
        seen[label] = outcome(run)
    # files that cannot be decoded at all are skipped (with a warning) or rejected with a petseg error
    for label in ("empty", "one byte", "random bytes #0", "header only"):
        assert seen[label] in ("skipped", "petseg:ImageReadError", "petseg:DatasetError"), (label, seen[label])


@pytest.mark.parametrize("what", ["image", "mask"])
def test_fuzz_image_mask_folder(pets, tmp_path, what):
    "Corrupt one image (JPEG) or mask (PNG) of a user's folder: skipped or a petseg error."
    rng = np.random.default_rng(SEED + 10 + (what == "mask"))
    src = tmp_path / "src"; (src / "im").mkdir(parents=True); (src / "mk").mkdir()
    for n in (pets / "annotations" / "test.txt").read_text().split("\n"):
        if not n.strip(): continue
        n = n.split()[0]
        shutil.copy(pets / "images" / f"{n}.jpg", src / "im" / f"{n}.jpg")
        tri = np.asarray(Image.open(pets / "annotations" / "trimaps" / f"{n}.png"))
        Image.fromarray(((tri != 2) * 255).astype(np.uint8)).save(src / "mk" / f"{n}.png")
    victim = sorted((src / ("im" if what == "image" else "mk")).iterdir())[0]
    original = victim.read_bytes()
    results = {}
    for label, data in corruptions(original, rng):
        victim.write_bytes(data)
        results[label] = outcome(lambda: drain(ImageMaskFolder(src / "im", src / "mk")))
    victim.write_bytes(original)
    for label in ("empty", "one byte", "random bytes #0", "header only"):
        assert results[label] in ("skipped", "petseg:ImageReadError", "petseg:DatasetError"), (label, results[label])


def test_fuzz_predict_folder(pets, ckpt, tmp_path):
    "A folder of corrupted JPEG/PNG files plus one good photo: predict writes the good one and reports the rest."
    rng = np.random.default_rng(SEED + 20)
    folder = tmp_path / "photos"; folder.mkdir()
    name = (pets / "annotations" / "test.txt").read_text().split()[0]
    jpeg = (pets / "images" / f"{name}.jpg").read_bytes()
    png = (pets / "annotations" / "trimaps" / f"{name}.png").read_bytes()
    (folder / "good.jpg").write_bytes(jpeg)
    for kind, data in (("jpg", jpeg), ("png", png)):
        for i, (label, blob) in enumerate(corruptions(data, rng, n=4)):
            (folder / f"bad_{kind}_{i:02d}.{kind}").write_bytes(blob)
    n_files = len(list(folder.iterdir()))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        preds = predict(ckpt, folder, out_dir=tmp_path / "out", progress=False, device="cpu")
    assert "good" in [p.name for p in preds]
    assert len(preds) + len(preds.skipped) == n_files
    assert all(Path(src).name.startswith("bad_") for src, _ in preds.skipped)
    written = sorted(p.stem for p in (tmp_path / "out" / "masks").iterdir())
    assert written == sorted(p.name for p in preds)
    # each corrupted file is either decoded (a mask written) or named in the skip list
    for p in folder.iterdir():
        assert p.stem in written or any(Path(s).name == p.name for s, _ in preds.skipped)


def test_fuzz_checkpoints(ckpt, pets, tmp_path):
    "Random bytes, truncations and bit flips of a real checkpoint: load_checkpoint, predict and evaluate fail cleanly."
    rng = np.random.default_rng(SEED + 30)
    data = ckpt.read_bytes()
    image = pets / "images" / f"{(pets / 'annotations' / 'test.txt').read_text().split()[0]}.jpg"
    kinds = {}
    for i, (label, blob) in enumerate(corruptions(data, rng, n=6)):
        bad = tmp_path / f"bad_{i}.pt"; bad.write_bytes(blob)
        r = outcome(lambda: load_checkpoint(bad))
        kinds[label] = r
        if r == "ok":   # a flip inside tensor data loads: the model must still build or fail cleanly
            assert outcome(lambda: model_from_checkpoint(bad)) in ("ok", "petseg:CheckpointError")
            continue
        assert r == "petseg:CheckpointError", (label, r)
    for label in ("empty", "one byte", "random bytes #0", "truncated #0", "header only"):
        assert kinds[label] == "petseg:CheckpointError", (label, kinds[label])
    bad = tmp_path / "bad_0.pt"
    with pytest.raises(CheckpointError): predict(bad, [image], progress=False, device="cpu")
    with pytest.raises(CheckpointError): evaluate(bad, pets, "test", progress=False, device="cpu")
