"""Datasets on bad input (missing or half-extracted roots, corrupt files, bad mask values, unmatched user folders), the
resized cache, and checks on the real sample in ../shared/oxford-pet-sample (skipped when it is absent)."""
from __future__ import annotations

import json, os, pickle, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petseg.cache import cached_arrays, resize_pair
from petseg.data import (DatasetError, ImageMaskFolder, ImageReadError, LargeImageWarning, OxfordPetDataset, PetsegError,
                         SkippedFilesWarning, binary_mask, eval_transforms, load_mask_array, load_rgb, read_split,
                         split_records, train_transforms, trimap_to_mask)
from petseg.synthetic import make_synthetic_pets


def _skip_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SkippedFilesWarning)]


# ---------------------------------------------------------------- the root and the split files

def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        OxfordPetDataset(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(e.value) and "petseg download" in str(e.value)
    assert "download_oxford_pet" in str(e.value)


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="neither images/ nor annotations/"):
        OxfordPetDataset(tmp_path, "train")


def test_half_extracted_root(pets_copy):
    shutil.rmtree(pets_copy / "annotations")
    with pytest.raises(DatasetError, match="half-extracted") as e:
        OxfordPetDataset(pets_copy, "test")
    assert str(pets_copy / "annotations" / "trimaps") in str(e.value) and "petseg download" in str(e.value)


def test_missing_split_file(pets_copy):
    (pets_copy / "annotations" / "test.txt").unlink()
    with pytest.raises(DatasetError, match="Split file") as e:
        OxfordPetDataset(pets_copy, "test")
    assert str(pets_copy / "annotations" / "test.txt") in str(e.value) and "petseg download" in str(e.value)
    assert len(OxfordPetDataset(pets_copy, "train")) == 18       # the other split still works


@pytest.mark.parametrize("split", ["training", "val", "", "TEST"])
def test_bad_split_name(synthetic_root, split):
    with pytest.raises(DatasetError, match="'train', 'valid', 'test'"):
        OxfordPetDataset(synthetic_root, split)


def test_split_rule_and_records(synthetic_root):
    lines = (synthetic_root / "annotations" / "trainval.txt").read_text().splitlines()
    names = [l.split()[0] for l in lines]
    assert read_split(synthetic_root, "train") == [n for i, n in enumerate(names) if i % 10]
    assert read_split(synthetic_root, "valid") == names[::10]
    ds = OxfordPetDataset(synthetic_root, "test")
    for i in range(len(ds)):
        item = ds[i]
        assert item["species"] == ("cat" if item["name"][0].isupper() else "dog") == ds.species(i)
        assert item["breed"] == item["name"].rsplit("_", 1)[0] == ds.breed(i)
    assert {r.species for r in split_records(synthetic_root, "train")} == {"cat", "dog"}


def test_stray_files_are_ignored(pets_copy):
    (pets_copy / "images" / "Abyssinian_1.mat").write_bytes(b"MATLAB 5.0")
    (pets_copy / "annotations" / "trimaps" / "._Abyssinian_1.png").write_bytes(b"\x00\x05\x16\x07")
    (pets_copy / "images" / "stray_99.jpg").write_bytes(b"not listed in any split")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(OxfordPetDataset(pets_copy, "train")) == 18


# ---------------------------------------------------------------- corrupt files and mask values

def _damage(root: Path) -> list[str]:
    "Damage four training pairs in four ways; return their names."
    names = read_split(root, "train")[:4]
    jpg = root / "images" / f"{names[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])                            # truncated JPEG
    (root / "images" / f"{names[1]}.jpg").write_bytes(os.urandom(3000))                     # random bytes
    png = root / "annotations" / "trimaps" / f"{names[2]}.png"
    png.write_bytes(png.read_bytes()[:60])                                                  # truncated trimap
    (root / "images" / f"{names[3]}.jpg").write_bytes(b"")                                  # empty file
    return names


@pytest.mark.parametrize("validate", [True, "full"])
def test_corrupt_files_are_skipped_with_one_warning(pets_copy, validate):
    bad = _damage(pets_copy)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = OxfordPetDataset(pets_copy, "train", transform=eval_transforms(32), validate=validate)
    msgs = _skip_warnings(record)
    assert len(msgs) == 1 and "Skipped 4 " in msgs[0]
    assert all(n in msgs[0] for n in bad)
    assert len(ds) == 14 and not set(bad) & set(ds.names) and set(ds.skipped) == set(bad)
    # every remaining item loads, also in DataLoader worker processes
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    assert sum(len(b["name"]) for b in loader) == 14


def _scramble_middle_third(path: Path) -> None:
    "Overwrite the middle third of a file with random bytes (seeded): header and end marker stay intact."
    data = bytearray(path.read_bytes()); n = len(data)
    data[n // 3: 2 * n // 3] = np.random.default_rng(0).integers(0, 256, 2 * n // 3 - n // 3, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_jpeg_with_random_bytes_in_the_middle_is_found(pets_copy, num_workers):
    name = read_split(pets_copy, "train")[2]
    path = pets_copy / "images" / f"{name}.jpg"
    _scramble_middle_third(path)
    with pytest.warns(SkippedFilesWarning, match=name):                        # the cheap check finds it
        ds = OxfordPetDataset(pets_copy, "train", transform=eval_transforms(32))
    assert name not in ds.names and len(ds) == 17
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=num_workers)
    assert sum(len(b["name"]) for b in loader) == 17
    unchecked = OxfordPetDataset(pets_copy, "train", transform=eval_transforms(32), validate=False)
    loader = torch.utils.data.DataLoader(unchecked, batch_size=18, num_workers=num_workers)
    with pytest.raises(ImageReadError, match=str(path)):                      # unchecked: the read names the file
        next(iter(loader))


def test_corrupt_files_are_skipped_by_the_cache(pets_copy, tmp_path):
    bad = _damage(pets_copy)
    for attempt in ("build", "reuse"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            images, masks, names = cached_arrays(pets_copy, "train", 24, cache_dir=tmp_path / "cache", progress=False)
        msgs = _skip_warnings(record)
        assert len(msgs) == 1 and "Skipped 4 " in msgs[0] and all(n in msgs[0] for n in bad), attempt
        assert len(names) == len(images) == len(masks) == 14 and not set(bad) & set(names)


def test_validate_argument(pets_copy):
    with pytest.raises(ValueError, match="validate must be"):
        OxfordPetDataset(pets_copy, "train", validate="fast")
    bad = _damage(pets_copy)
    ds = OxfordPetDataset(pets_copy, "train", validate=False)       # no check: bad files stay and fail when read
    assert set(bad) <= set(ds.names)
    with pytest.raises(ImageReadError, match=bad[1]):
        ds[ds.names.index(bad[1])]


def test_missing_image_file_is_skipped(pets_copy):
    name = read_split(pets_copy, "valid")[1]
    (pets_copy / "images" / f"{name}.jpg").unlink()
    with pytest.warns(SkippedFilesWarning, match=f"Skipped 1 .*{name}"):
        ds = OxfordPetDataset(pets_copy, "valid")
    assert name not in ds.names


def test_image_trimap_size_mismatch_is_skipped(pets_copy):
    name = read_split(pets_copy, "test")[0]
    p = pets_copy / "annotations" / "trimaps" / f"{name}.png"
    Image.open(p).resize((10, 10)).save(p)
    with pytest.warns(SkippedFilesWarning, match=f"{name}.jpg is .* but its mask .*{name}.png is 10x10"):
        ds = OxfordPetDataset(pets_copy, "test")
    assert len(ds) == 9


def test_every_split_item_unreadable(pets_copy):
    for n in read_split(pets_copy, "valid"):
        (pets_copy / "images" / f"{n}.jpg").write_bytes(b"junk")
    with pytest.warns(SkippedFilesWarning), pytest.raises(DatasetError, match="No readable"):
        OxfordPetDataset(pets_copy, "valid")


@pytest.mark.parametrize("value", [0, 4, 255])
def test_trimap_with_unexpected_values(pets_copy, tmp_path, value):
    name = read_split(pets_copy, "train")[0]
    p = pets_copy / "annotations" / "trimaps" / f"{name}.png"
    t = np.array(Image.open(p)); t[:2, :2] = value
    Image.fromarray(t).save(p)
    ds = OxfordPetDataset(pets_copy, "train")
    with pytest.raises(DatasetError, match=rf"{name}.png has values \[{value}\]"):
        ds[ds.names.index(name)]
    with pytest.raises(DatasetError, match=rf"{name}.png has values \[{value}\]"):   # found while building a cache
        cached_arrays(pets_copy, "train", 16, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.npy")) and not list((tmp_path / "cache").glob(".tmp-*"))


def test_mask_value_rules():
    assert binary_mask(np.array([[0, 255, 255]], np.uint8)).tolist() == [[0, 1, 1]]
    assert binary_mask(np.array([[1, 1]], np.uint8)).tolist() == [[1, 1]]
    assert binary_mask(np.zeros((2, 2), bool)).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(DatasetError, match=r"mask.png has values \[0, 1, 255\]"):
        binary_mask(np.array([[0, 1, 255]], np.uint8), "mask.png")
    with pytest.raises(DatasetError, match="0/1 or 0/255"):
        binary_mask(np.array([[0, 2]], np.uint8))
    assert trimap_to_mask(np.array([[1, 2, 3, 2]], np.uint8)).tolist() == [[1, 0, 1, 0]]
    with pytest.raises(DatasetError):
        trimap_to_mask(np.array([[1, 2, 3, 4]], np.int64))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + bytes(20), os.urandom(512)])
def test_unreadable_files_raise_petseg_errors(tmp_path, content):
    p = tmp_path / "bad.jpg"; p.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        load_rgb(p)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        load_mask_array(p)
    with pytest.raises(ImageReadError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_fuzzed_files_never_escape_as_other_errors(synthetic_root, tmp_path):
    rng = np.random.default_rng(0)
    real = (synthetic_root / "images" / "pug_1.jpg").read_bytes()
    trimap = (synthetic_root / "annotations" / "trimaps" / "pug_1.png").read_bytes()
    for k in range(40):
        src = real if k % 2 else trimap
        data = bytearray(src[: rng.integers(0, len(src))] if k % 3 else src)
        for _ in range(int(rng.integers(0, 4))):
            if data: data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        p = tmp_path / f"fuzz{k}.png"; p.write_bytes(bytes(data))
        for fn in (load_rgb, lambda q: trimap_to_mask(load_mask_array(q), q), lambda q: binary_mask(load_mask_array(q), q)):
            try: fn(p)
            except PetsegError: pass


# ---------------------------------------------------------------- transforms

def test_transforms_keep_masks_binary_and_aligned(synthetic_root):
    ds = OxfordPetDataset(synthetic_root, "train", transform=train_transforms(48))
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 48, 48) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    # a horizontal flip moves image and mask together: check with a transform that always flips
    import albumentations as A
    from albumentations.pytorch import ToTensorV2
    flip = OxfordPetDataset(synthetic_root, "train", transform=A.Compose([A.HorizontalFlip(p=1.0), ToTensorV2()]))
    raw = OxfordPetDataset(synthetic_root, "train")
    assert torch.equal(flip[0]["mask"][0], torch.from_numpy(raw[0]["mask"][:, ::-1].copy()).float())
    assert torch.equal(flip[0]["image"], torch.from_numpy(raw[0]["image"][:, ::-1].copy()).permute(2, 0, 1))


# ---------------------------------------------------------------- the cache

def test_cache_equals_direct_decoding_and_is_reused(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    images, masks, names = cached_arrays(synthetic_root, "test", 40, cache_dir=cache, progress=False)
    assert isinstance(images, np.memmap) or isinstance(images.base, np.memmap)
    assert names == read_split(synthetic_root, "test")
    for i, n in enumerate(names):
        img, msk = resize_pair(load_rgb(synthetic_root / "images" / f"{n}.jpg"),
                               trimap_to_mask(load_mask_array(synthetic_root / "annotations" / "trimaps" / f"{n}.png")), 40)
        assert np.array_equal(images[i], img) and np.array_equal(masks[i], msk)
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    ds = OxfordPetDataset(synthetic_root, "test", cache_size=40, cache_dir=cache, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files          # reused, not rebuilt
    assert np.array_equal(ds[3]["image"], images[3]) and ds[3]["name"] == names[3]
    assert json.loads((cache / "oxford-test-40.json").read_text())["names"] == names


def test_cache_is_rebuilt_when_files_change(pets_copy, tmp_path):
    cache = tmp_path / "cache"
    _, masks, names = cached_arrays(pets_copy, "test", 24, cache_dir=cache, progress=False)
    # a changed file list (the split file lost a line)
    split = pets_copy / "annotations" / "test.txt"
    split.write_text("\n".join(split.read_text().splitlines()[:-1]) + "\n")
    _, _, names2 = cached_arrays(pets_copy, "test", 24, cache_dir=cache, progress=False)
    assert names2 == names[:-1]
    # a changed file (same name): its new content shows up
    p = pets_copy / "annotations" / "trimaps" / f"{names[0]}.png"
    Image.fromarray(np.full(np.array(Image.open(p)).shape, 2, np.uint8)).save(p)
    _, masks3, _ = cached_arrays(pets_copy, "test", 24, cache_dir=cache, progress=False)
    assert masks[0].any() and not masks3[0].any()
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".tmp-*"))   # old arrays replaced, not piled up


def test_damaged_cache_is_rebuilt(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    images, _, _ = cached_arrays(synthetic_root, "valid", 24, cache_dir=cache, progress=False)
    first = np.array(images)
    for p in cache.glob("*-images.npy"): p.write_bytes(b"damaged")
    images, _, _ = cached_arrays(synthetic_root, "valid", 24, cache_dir=cache, progress=False)
    assert np.array_equal(images, first)


def test_cached_dataset_pickles_without_its_arrays(synthetic_root, tmp_path):
    ds = OxfordPetDataset(synthetic_root, "train", cache_size=64, cache_dir=tmp_path / "cache", progress=False)
    ds[0]
    assert len(pickle.dumps(ds)) < 20_000          # workers reopen the memory maps instead of copying them
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[5]["image"], ds[5]["image"])


_SLOW_BUILD = """
import sys, time
from pathlib import Path
import petseg.cache as d
root, cache, started, go = map(Path, sys.argv[1:5])
write = d._write
def held_write(f, data):                  # the first build signals that it started, then waits for the test's go
    started.touch()
    deadline = time.time() + 60
    while not go.exists() and time.time() < deadline: time.sleep(0.05)
    write(f, data)
d._write = held_write
images, masks, names = d.cached_arrays(root, "train", 24, cache_dir=cache, progress=False)
print(len(names), int(images.sum()), int(masks.sum()))
"""


def test_two_processes_building_one_cache_take_turns(pets_copy, tmp_path):
    import subprocess, sys, time
    cache, started, go = tmp_path / "cache", tmp_path / "started", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _SLOW_BUILD, str(pets_copy), str(cache), str(started), str(go)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and first.poll() is None: time.sleep(0.05)
    assert started.exists(), first.communicate()
    with open(tmp_path / "second.err", "w") as err:
        second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        while "waiting" not in (tmp_path / "second.err").read_text() and time.time() < deadline and second.poll() is None:
            time.sleep(0.05)
        go.touch()
        out2, _ = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    err2 = (tmp_path / "second.err").read_text()
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert "Another process is building the cache" in err2 and str(cache) in err2
    assert out1 == out2 and out1.split()[0] == "18"
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".tmp-*"))


def test_cache_arrays_in_use_are_not_deleted_by_a_rebuild(pets_copy, tmp_path):
    cache = tmp_path / "cache"
    first = OxfordPetDataset(pets_copy, "valid", cache_size=16, cache_dir=cache, progress=False)
    worker_copy = pickle.dumps(first)                          # what a DataLoader worker receives
    trimap = pets_copy / "annotations" / "trimaps" / f"{first.names[0]}.png"
    Image.fromarray(np.full(np.array(Image.open(trimap)).shape, 2, np.uint8)).save(trimap)
    second = OxfordPetDataset(pets_copy, "valid", cache_size=16, cache_dir=cache, progress=False)   # stale: rebuilt
    assert not second.load(0)[1].any()
    assert pickle.loads(worker_copy).load(0)[1].any()          # the first one's arrays are still there to reopen
    assert len(list(cache.glob("*.npy"))) == 4
    del first
    os.utime(trimap, ns=(1, 1))                                # stale again: this rebuild may delete unused arrays
    third = OxfordPetDataset(pets_copy, "valid", cache_size=16, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 4 and np.array_equal(second.load(0)[1], third.load(0)[1])
    del second
    os.utime(trimap, ns=(2, 2))
    OxfordPetDataset(pets_copy, "valid", cache_size=16, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 4                 # the third and the fourth build's
    del third


def test_full_disk_while_building_the_cache(pets_copy, tmp_path, monkeypatch):
    import errno
    import petseg.cache as data
    cache = tmp_path / "cache"; cache.mkdir()
    (cache / ".tmp-oxford-train-24-deadbeef-images.npy").write_bytes(bytes(70))    # left by a killed build
    write, calls = data._write, []
    def full_disk(f, chunk):
        calls.append(1)
        if len(calls) > 6: raise OSError(errno.ENOSPC, "No space left on device")
        write(f, chunk)
    monkeypatch.setattr(data, "_write", full_disk)
    with pytest.raises(DatasetError, match="No space left on device") as e:
        cached_arrays(pets_copy, "train", 24, cache_dir=cache, progress=False)
    assert str(cache) in str(e.value) and "cache_dir" in str(e.value)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []    # no temporary files left
    monkeypatch.setattr(data, "_write", write)
    images, _, names = cached_arrays(pets_copy, "train", 24, cache_dir=cache, progress=False)
    assert len(names) == len(images) == 18


# ---------------------------------------------------------------- a user's own folders

def _folder(synthetic_root: Path, tmp_path: Path, scale: int = 255, n: int = 5) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(); masks.mkdir()
    for name in read_split(synthetic_root, "test")[:n]:
        shutil.copy(synthetic_root / "images" / f"{name}.jpg", images)
        m = trimap_to_mask(load_mask_array(synthetic_root / "annotations" / "trimaps" / f"{name}.png"))
        Image.fromarray(m * scale).save(masks / f"{name}.png")
    return images, masks


@pytest.mark.parametrize("scale", [1, 255])
def test_image_mask_folder(synthetic_root, tmp_path, scale):
    images, masks = _folder(synthetic_root, tmp_path, scale)
    (images / "._hidden.jpg").write_bytes(b"junk"); (masks / "notes.txt").write_text("ignored")
    ds = ImageMaskFolder(images, masks)
    ref = OxfordPetDataset(synthetic_root, "test")
    assert len(ds) == 5 and ds.names == sorted(ds.names)
    for i, name in enumerate(ds.names):
        j = ref.names.index(name)
        assert np.array_equal(ds[i]["mask"], ref[j]["mask"]) and np.array_equal(ds[i]["image"], ref[j]["image"])
        assert ds[i]["species"] == ds[i]["breed"] == ""
    cached = ImageMaskFolder(images, masks, transform=eval_transforms(32), cache_size=32, cache_dir=tmp_path / "c",
                             progress=False)
    assert cached[0]["mask"].shape == (1, 32, 32)


def test_image_mask_folder_unmatched_files(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path)
    (images / "extra_cat.png").write_bytes((images / os.listdir(images)[0]).read_bytes())
    (masks / "orphan_mask.png").write_bytes(b"x")
    with pytest.raises(DatasetError) as e:
        ImageMaskFolder(images, masks)
    msg = str(e.value)
    assert "images without a mask" in msg and "extra_cat.png" in msg
    assert "masks without an image" in msg and "orphan_mask.png" in msg


def test_image_mask_folder_size_mismatch_names_both_files(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path)
    name = sorted(p.stem for p in masks.iterdir())[2]
    Image.open(masks / f"{name}.png").resize((7, 9)).save(masks / f"{name}.png")
    with pytest.raises(DatasetError, match="sizes differ") as e:
        ImageMaskFolder(images, masks)
    assert str(images / f"{name}.jpg") in str(e.value) and str(masks / f"{name}.png") in str(e.value)


def test_image_mask_folder_bad_mask_values(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path)
    name = sorted(p.stem for p in masks.iterdir())[0]
    m = np.array(Image.open(masks / f"{name}.png")); m[0, :3] = [0, 128, 255]
    Image.fromarray(m).save(masks / f"{name}.png")
    ds = ImageMaskFolder(images, masks)
    with pytest.raises(DatasetError, match=rf"{name}.png has values \[0, 128, 255\]"):
        ds[0]


def test_image_mask_folder_bad_folders(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        ImageMaskFolder(images, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image files"):
        ImageMaskFolder(tmp_path / "empty", masks)
    shutil.copy(masks / os.listdir(masks)[0], masks / (Path(os.listdir(masks)[0]).stem + ".bmp"))
    with pytest.raises(DatasetError, match="share a name"):
        ImageMaskFolder(images, masks)


def test_image_mask_folder_skips_unreadable_images(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path)
    victim = sorted(images.iterdir())[1]
    victim.write_bytes(os.urandom(100))
    with pytest.warns(SkippedFilesWarning, match=f"Skipped 1 .*{victim.stem}"):
        ds = ImageMaskFolder(images, masks)
    assert len(ds) == 4 and victim.stem not in ds.names


# ---------------------------------------------------------------- synthetic data

def test_synthetic_data_is_deterministic_and_official(tmp_path):
    a = make_synthetic_pets(tmp_path / "a", n_trainval=6, n_test=3, size=40, seed=3)
    b = make_synthetic_pets(tmp_path / "b", n_trainval=6, n_test=3, size=40, seed=3)
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    lines = (a / "annotations" / "list.txt").read_text().splitlines()
    assert lines[0] == "#Image CLASS-ID SPECIES BREED ID" and sum(l.startswith("#") for l in lines) == 6
    assert len(lines) == 6 + 9
    for name in read_split(a, "train") + read_split(a, "test"):
        img, tri = Image.open(a / "images" / f"{name}.jpg"), np.array(Image.open(a / "annotations/trimaps" / f"{name}.png"))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size[::-1] == tri.shape and max(img.size) == 40
        assert set(np.unique(tri)) == {1, 2, 3}


# ---------------------------------------------------------------- images as displayed, masks in any encoding

def _exif(orientation: int) -> bytes:
    exif = Image.Exif(); exif[0x0112] = orientation
    return exif.tobytes()


def _stored_for_orientation_6(a: np.ndarray) -> np.ndarray:
    "The pixels a camera stores for an upright picture `a` when it tags the file with EXIF orientation 6."
    return np.rot90(a, k=1).copy()           # viewers turn orientation 6 by 90 degrees clockwise back to `a`


def test_exif_orientation_turns_images_upright_everywhere(pets_copy, tmp_path):
    name = read_split(pets_copy, "test")[0]
    path = pets_copy / "images" / f"{name}.jpg"
    upright = load_rgb(path)
    Image.fromarray(_stored_for_orientation_6(upright)).save(path, quality=95, exif=_exif(6))
    assert load_rgb(path).shape == upright.shape and np.abs(load_rgb(path).astype(int) - upright).mean() < 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)          # the size check sees the displayed size
        ds = OxfordPetDataset(pets_copy, "test")
        cached = OxfordPetDataset(pets_copy, "test", cache_size=32, cache_dir=tmp_path / "cache", progress=False)
    i = ds.names.index(name)
    assert ds.load(i)[0].shape[:2] == ds.load(i)[1].shape
    assert np.abs(cached.load(i)[0].astype(int) - resize_pair(upright, ds.load(i)[1], 32)[0]).mean() < 4


def test_exif_orientation_of_a_mask_file_is_applied_too(synthetic_root, tmp_path):
    images, masks = _folder(synthetic_root, tmp_path, n=2)
    name = sorted(p.stem for p in images.iterdir())[0]
    upright = np.array(Image.open(masks / f"{name}.png"))
    for path, a in ((images / f"{name}.jpg", load_rgb(images / f"{name}.jpg")), (masks / f"{name}.jpg", upright)):
        Image.fromarray(_stored_for_orientation_6(a)).save(path.with_suffix(".jpg"), quality=100, exif=_exif(6))
    (masks / f"{name}.png").unlink()
    with pytest.raises(DatasetError, match="0/1 or 0/255"):                 # JPEG blurs a mask, but it is upright:
        ImageMaskFolder(images, masks)[0]
    assert np.abs(load_mask_array(masks / f"{name}.jpg").astype(int) - upright).mean() < 8


def _mask_files(m: np.ndarray) -> dict[str, Image.Image]:
    "One binary mask `m` (0/1) in the encodings image editors produce."
    h, w = m.shape
    def palette(colours, index):
        im = Image.fromarray(index.astype(np.uint8), "L").convert("P")
        im.putpalette(colours + [0] * (768 - len(colours))); return im
    return {
        "RGBA, black, mask in alpha": Image.fromarray(np.dstack([np.zeros((h, w, 3), np.uint8), m * 255]), "RGBA"),
        "RGBA cut-out, mask in alpha": Image.fromarray(np.dstack([np.full((h, w, 3), 90, np.uint8), m * 255]), "RGBA"),
        "RGBA, opaque gray": Image.fromarray(np.dstack([np.repeat(m[..., None] * 255, 3, -1), np.full((h, w), 255, np.uint8)]), "RGBA"),
        "LA, mask in alpha": Image.fromarray(np.dstack([np.zeros((h, w), np.uint8), m * 255]), "LA"),
        "16-bit 0/65535": Image.fromarray(m.astype(np.uint16) * 65535),
        "palette, white first": palette([255, 255, 255, 0, 0, 0], 1 - m),
        "palette, colour labels": palette([0, 0, 0, 128, 0, 0], m),
        "1-bit": Image.fromarray(m.astype(bool)),
    }


@pytest.mark.parametrize("kind", list(_mask_files(np.zeros((2, 2), np.uint8))))
def test_unusual_mask_encodings_are_read_correctly(synthetic_root, tmp_path, kind):
    images, masks = _folder(synthetic_root, tmp_path, n=3)
    expected = {}
    for p in sorted(masks.iterdir()):
        expected[p.stem] = binary_mask(load_mask_array(p))
        _mask_files(expected[p.stem])[kind].save(p)
    ds = ImageMaskFolder(images, masks)
    for i, name in enumerate(ds.names):
        assert np.array_equal(ds[i]["mask"], expected[name]), (kind, name)
    cached = ImageMaskFolder(images, masks, cache_size=16, cache_dir=tmp_path / "c", progress=False)
    assert all(cached.load(i)[1].any() for i in range(len(cached)))


@pytest.mark.parametrize("kind", ["soft alpha", "CMYK"])
def test_masks_that_cannot_be_read_unambiguously_are_refused(tmp_path, kind):
    m = np.zeros((8, 8), np.uint8); m[2:6, 2:6] = 255; m[2, 2] = 128
    path = tmp_path / ("m.png" if kind == "soft alpha" else "m.jpg")
    if kind == "soft alpha": Image.fromarray(np.dstack([np.zeros((8, 8, 3), np.uint8), m]), "RGBA").save(path)
    else: Image.fromarray(m).convert("CMYK").save(path)
    with pytest.raises(DatasetError, match="m.(png|jpg)") as e:
        binary_mask(load_mask_array(path), path)
    assert ("values [0, 128, 255]" if kind == "soft alpha" else "CMYK") in str(e.value)


# ---------------------------------------------------------------- the real sample

def test_sample_split_sizes(sample_root):
    assert [len(read_split(sample_root, s)) for s in ("train", "valid", "test")] == [270, 30, 298]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)
        assert [len(OxfordPetDataset(sample_root, s)) for s in ("train", "valid", "test")] == [270, 30, 298]


def test_sample_masks_binary_and_sized_like_images(sample_root):
    for split in ("train", "valid", "test"):
        ds = OxfordPetDataset(sample_root, split)
        for i in range(len(ds)):
            image, mask = ds.load(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, ds.names[i]
            assert mask.shape == image.shape[:2] and mask.dtype == np.uint8, ds.names[i]
            assert mask.max() <= 1, ds.names[i]


def test_sample_odd_images_come_out_rgb(sample_root):
    modes = {}            # the palette one (a GIF named .jpg) is in no split file, so look at every .jpg
    for path in sorted((sample_root / "images").glob("*.jpg")):
        with Image.open(path) as im:
            if im.mode != "RGB": modes[im.mode] = path.stem
    assert {"RGBA", "P"} <= set(modes), modes
    for mode, name in modes.items():
        with Image.open(sample_root / "images" / f"{name}.jpg") as im: size = im.size
        assert load_rgb(sample_root / "images" / f"{name}.jpg").shape == (size[1], size[0], 3), mode
    for split in ("train", "valid", "test"):
        ds = OxfordPetDataset(sample_root, split, transform=eval_transforms(64))
        for name in set(modes.values()) & set(ds.names):
            assert ds[ds.names.index(name)]["image"].shape == (3, 64, 64)


def test_sample_mat_files_ignored(sample_root):
    mats = sorted(p.stem for p in (sample_root / "images").glob("*.mat"))
    assert mats, "the sample should hold stray .mat files"
    names = set(read_split(sample_root, "train") + read_split(sample_root, "valid") + read_split(sample_root, "test"))
    assert set(mats) & names                     # .mat files share stems with real images: globbing would be wrong
    ds = OxfordPetDataset(sample_root, "train")
    assert ds.names == read_split(sample_root, "train")      # exactly the split file's list, one entry per image
    assert all(ds[ds.names.index(n)]["image"].ndim == 3 for n in set(mats) & set(ds.names))


def test_sample_cache_equals_direct_decoding(sample_root, tmp_path):
    images, masks, names = cached_arrays(sample_root, "valid", 64, cache_dir=tmp_path / "cache", progress=False)
    assert names == read_split(sample_root, "valid") and images.shape == (30, 64, 64, 3)
    direct = OxfordPetDataset(sample_root, "valid")
    for i in range(len(names)):
        img, msk = resize_pair(*direct.load(i), 64)
        assert np.array_equal(images[i], img) and np.array_equal(masks[i], msk), names[i]
    cached = OxfordPetDataset(sample_root, "valid", cache_size=64, cache_dir=tmp_path / "cache", progress=False)
    assert all(np.array_equal(cached.load(i)[0], images[i]) for i in range(len(cached)))


# ---------------------------------------------------------------- course_data()

def test_course_data_falls_back_to_synthetic_pets_once(tmp_path, monkeypatch, capsys):
    from petseg.data import course_data                        # the old import, through petseg.data's re-export
    monkeypatch.delenv("PETSEG_DATA", raising=False)
    monkeypatch.setenv("PETSEG_DOWNLOAD", "0")                 # no download attempt (tests/test_download.py has those)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "repo" / ".git").mkdir(parents=True); (tmp_path / "repo" / "nbs").mkdir()
    monkeypatch.chdir(tmp_path / "repo" / "nbs")
    root = course_data()
    assert root == tmp_path / "cache" / "petseg" / "synthetic-pets"
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "PETSEG_DOWNLOAD=0" in out and "petseg download" in out
    assert len(OxfordPetDataset(root, "test")) > 0
    stamp = (root / "images").stat().st_mtime_ns
    assert course_data(verbose=False) == root and (root / "images").stat().st_mtime_ns == stamp   # written once
    assert capsys.readouterr().out == ""


def test_course_data_names_the_real_sample_and_its_licence(sample_root, monkeypatch, capsys):
    from petseg.data import course_data
    monkeypatch.delenv("PETSEG_DATA", raising=False)
    monkeypatch.chdir(sample_root.parents[1])                  # a folder whose shared/ holds the sample
    assert course_data().resolve() == sample_root.resolve()
    out = capsys.readouterr().out
    assert "sample" in out and "Parkhi et al. 2012" in out and "CC BY-SA 4.0" in out


def test_a_huge_image_gives_one_petseg_warning_naming_it(tmp_path, monkeypatch):
    "PIL's anonymous DecompressionBombWarning becomes one LargeImageWarning naming the file; twice the limit, an error naming it."
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(big)                  # 600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)                          # above the limit, below twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_rgb(big).shape == (20, 30, 3)
        assert load_mask_array(big).shape[:2] == (20, 30)
    assert [w.category for w in caught] == [LargeImageWarning, LargeImageWarning]
    assert str(big) in str(caught[0].message) and "30x20" in str(caught[0].message)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)                          # more than twice the limit
    with pytest.raises(ImageReadError, match=str(big)):
        load_rgb(big)
