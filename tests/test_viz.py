"""Headless checks of petseg.viz (Agg backend): every picture function returns its Figure with the expected panels and
titles, the TP/FP/FN overlay colours exact RGB on a hand-made case, and the browser's callbacks update the Dice.
The real-sample check skips when ../shared/oxford-pet-sample is absent."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from petseg.data import IMAGENET_MEAN, IMAGENET_STD, OxfordPetDataset, eval_transforms
from petseg.evaluate import evaluate, load_models
from petseg.models import ResNet34UNet, UNet
from petseg.checkpoint import save_checkpoint
from petseg.inference import overlay_mask
from petseg.learner import plot_history
from petseg.palette import ERROR_COLORS as PALETTE_ERRORS, PALETTE, mask_image, outline, rgb
from petseg.viz import (ERROR_COLORS, ERROR_LABELS, TRIMAP_COLORS, SegmentationBrowser, browse, compare_models,
                        dice_histogram, error_map, error_overlay, model_summary, plot_predictions, predict_items,
                        show_augmented, show_batch, show_results, to_image, to_mask, worst_k)

GT = np.array([[1, 1, 0], [0, 1, 0]], np.uint8)
PRED = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


@pytest.fixture(scope="module")
def tiny():
    "A random-init tiny UNet fed at 32 x 32 (an evaluate.LoadedModel)."
    torch.manual_seed(0)
    return load_models(UNet(features=(4, 8, 16, 32)), size=32)[0]


def _by_hand(r: dict, thr: float) -> float:
    p, g = r["prob"] > thr, r["gt"]
    return float(2 * (p & g).sum() / (p.sum() + g.sum())) if p.sum() + g.sum() else 1.0


@pytest.fixture(scope="module")
def test_ds(synthetic_root) -> OxfordPetDataset:
    return OxfordPetDataset(synthetic_root, "test")


# ---------------------------------------------------------------- colours and conversions

def test_error_map_exact_colours():
    em = error_map(GT, PRED)
    assert tuple(em[0, 0]) == ERROR_COLORS["TP"] and tuple(em[1, 1]) == ERROR_COLORS["TP"]
    assert tuple(em[0, 2]) == ERROR_COLORS["FP"]
    assert tuple(em[0, 1]) == ERROR_COLORS["FN"]
    assert tuple(em[1, 0]) == rgb("background") and tuple(em[1, 2]) == rgb("background")
    assert len({ERROR_COLORS[k] for k in ("TP", "FP", "FN")}) == 3


def test_error_overlay_blends_only_errors_and_hits():
    img = np.full((2, 3, 3), 100, np.uint8)
    ov = error_overlay(img, torch.from_numpy(GT)[None].float(), PRED.astype(bool), alpha=0.5)
    assert tuple(ov[0, 2]) == tuple(np.rint((np.array(ERROR_COLORS["FP"]) + 100) / 2).astype(int))
    assert tuple(ov[1, 0]) == (100, 100, 100)                           # true negative untouched
    solid = error_overlay(img, GT, PRED, alpha=1.0)
    assert tuple(solid[0, 1]) == ERROR_COLORS["FN"] and tuple(solid[0, 0]) == ERROR_COLORS["TP"]
    with pytest.raises(ValueError, match="differ in shape"):
        error_map(GT, PRED[:, :2])


def test_to_image_undoes_normalisation_and_to_mask_accepts_all_forms():
    img = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    t = (torch.from_numpy(img).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert (to_image(t, IMAGENET_MEAN, IMAGENET_STD) == img).all()
    assert to_mask(np.array([[0, 255]], np.uint8)).tolist() == [[False, True]]
    assert to_mask(torch.tensor([[[0.2, 0.9]]])).tolist() == [[False, True]]
    with pytest.raises(ValueError, match="single"):
        to_mask(np.zeros((2, 2, 2)))


def test_plot_predictions_panels_titles_legend():
    img = np.zeros((2, 3, 3), np.uint8)
    fig = plot_predictions([img] * 3, [GT] * 3, [PRED] * 3, names=["a", "b", "c"], dices=[0.5, 0.6, 0.7])
    assert isinstance(fig, Figure) and len(fig.axes) == 12
    assert _titles(fig)[:4] == ["a", "ground truth", "prediction", "errors · Dice 0.500"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [ERROR_LABELS[k] for k in ("TP", "FP", "FN")]


# ---------------------------------------------------------------- the palette, used by every picture

_CVD = {"protan": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
        "deutan": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
        "tritan": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]}


def _lab(c, cvd=None) -> np.ndarray:
    "CIELAB of an sRGB colour, as seen with a full colour-vision deficiency (Machado et al. 2009) when `cvd` is given."
    c = np.asarray(c) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    if cvd: lin = np.clip(np.asarray(_CVD[cvd]) @ lin, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin / [0.95047, 1, 1.08883]
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("group", [("TP", "FP", "FN"), ("pet", "background", "border")])
def test_palette_stays_distinct_for_colour_blind_readers(group):
    for cvd in (None, "protan", "deutan", "tritan"):
        for a in group:
            for b in group:
                if a < b: assert np.linalg.norm(_lab(rgb(a), cvd) - _lab(rgb(b), cvd)) > 20, (a, b, cvd)   # CIE76 distance


def test_viz_and_overlays_draw_in_the_palette():
    assert ERROR_COLORS is PALETTE_ERRORS and {TRIMAP_COLORS[v][1] for v in (1, 2, 3)} == {rgb("pet"), rgb("background"), rgb("border")}
    mask = np.zeros((8, 8), np.uint8); mask[2:6, 2:6] = 1
    ov = overlay_mask(np.full((8, 8, 3), 230, np.uint8), mask)      # a light photo
    assert ((ov == rgb("pet")).all(-1) == outline(mask)).all()        # the outline is exactly the mask's edge, in the pet's blue
    assert (ov == rgb("halo")).all(-1).sum() == 16                    # ringed outside in white
    fig = plot_predictions([np.zeros((8, 8, 3), np.uint8)], [mask], [mask])
    assert (fig.axes[1].images[0].get_array() == mask_image(mask)).all()
    lines = fig.axes[3].collections                                  # the prediction's outline on the error overlay
    assert lines and np.allclose(lines[0].get_edgecolor()[0][:3], np.array(rgb("pet")) / 255)


def test_plot_history_integer_epochs_in_palette():
    fig = plot_history([dict(epoch=e, train_loss=1 / e, valid_loss=1.2 / e, train_dice=0.5, valid_dice=0.6) for e in (1, 2, 3)])
    ax = fig.axes[0]
    assert [l.get_color().upper() for l in ax.lines] == [PALETTE["train"], PALETTE["valid"]]
    assert all(float(t).is_integer() for t in ax.get_xticks())


# ---------------------------------------------------------------- data pictures

def test_show_batch_dataset_and_batch(synthetic_root):
    ds = OxfordPetDataset(synthetic_root, "train")
    fig = show_batch(ds, n=3)
    assert len(fig.axes) == 9
    assert _titles(fig)[:3] == [f"{ds.names[0]} ({ds.species(0)})", "trimap", "mask (pet + border = 1)"]
    _, mask = ds.load(0)
    tri = fig.axes[1].images[0].get_array()
    assert ((tri == TRIMAP_COLORS[2][1]).all(-1) == (mask == 0)).all()
    tds = OxfordPetDataset(synthetic_root, "train", transform=eval_transforms(32))
    batch = {"image": torch.stack([tds[i]["image"] for i in range(3)]), "mask": torch.stack([tds[i]["mask"] for i in range(3)])}
    fig = show_batch(batch, n=2)
    assert len(fig.axes) == 4 and fig.axes[0].images[0].get_array().shape == (32, 32, 3)


def test_show_augmented_views_differ_and_are_seeded(synthetic_root):
    ds = OxfordPetDataset(synthetic_root, "train")
    fig = show_augmented(ds, idx=2, n=5, image_size=40, seed=3)
    assert len(fig.axes) == 8 and _titles(fig)[:6] == ["original"] + [f"view {k}" for k in range(1, 6)]
    views = [ax.images[0].get_array() for ax in fig.axes[1:6]]
    assert any((v != views[0]).any() for v in views[1:])
    again = show_augmented(ds, idx=2, n=5, image_size=40, seed=3)
    assert all((a.images[0].get_array() == v).all() for a, v in zip(again.axes[1:6], views))


def test_model_summary_unet_shapes_and_params(tiny):
    tiny = tiny.model
    s = model_summary(tiny, (2, 3, 32, 32))
    names = [r["name"] for r in s.rows]
    assert names[0] == "downs.0" and "bottleneck" in names and names[-1] == "head"
    shape = {r["name"]: r["shape"] for r in s.rows if r["call"] == 1}
    assert shape["downs.0"] == (2, 4, 32, 32) and shape["bottleneck"] == (2, 64, 2, 2) and shape["head"] == (2, 1, 32, 32)
    assert sum(r["params"] for r in s.rows if r["call"] <= 1) == s.total_params == sum(p.numel() for p in tiny.parameters())
    assert [r["call"] for r in s.rows if r["name"] == "pool"] == [1, 2, 3, 4]
    assert "pool (call 4)" in s.table() and len(s.plot().axes) == 2
    for mode in (True, False):             # the model's own mode survives the summary (it runs in eval mode)
        tiny.train(mode); model_summary(tiny, (1, 3, 32, 32))
        assert tiny.training is mode and all(m.training is mode for m in tiny.modules())


# ---------------------------------------------------------------- model pictures

def test_show_results_and_predict_items_match_evaluate(tiny, test_ds):
    rows = predict_items(tiny, test_ds, range(len(test_ds)))
    res = evaluate(tiny.model, dataset=test_ds, size=32, progress=False)
    assert [r["dice"] for r in rows] == pytest.approx([r["dice"] for r in res.rows], abs=1e-5)
    assert all(r["dice"] == pytest.approx(_by_hand(r, 0.5), abs=1e-6) for r in rows)
    assert rows[0]["image"].shape == (32, 32, 3) and rows[0]["gt"].shape == (32, 32)
    fig = show_results(tiny, test_ds, idxs=[0, 1])
    assert len(fig.axes) == 8
    assert _titles(fig)[:4] == [test_ds.names[0], "ground truth", "prediction", f"errors · Dice {rows[0]['dice']:.3f}"]
    assert (fig.axes[3].images[0].get_array() == error_overlay(rows[0]["image"], rows[0]["gt"], rows[0]["pred"])).all()


def test_worst_k_orders_by_dice(tiny, test_ds):
    rows = predict_items(tiny, test_ds, range(len(test_ds)))
    fig = worst_k(tiny, test_ds, k=3)
    shown = [float(t.split()[-1]) for t in _titles(fig)[3::4]]
    assert shown == [round(d, 3) for d in sorted(r["dice"] for r in rows)[:3]]
    table = evaluate(tiny.model, dataset=test_ds, size=32, progress=False)
    assert _titles(worst_k(tiny, test_ds, k=3, table=table)) == _titles(fig)
    with pytest.raises(ValueError, match="not in this dataset"):
        worst_k(tiny, test_ds, k=1, table=[dict(name="missing_1", dice=0.0)])


def test_dice_histogram_breakdown(tmp_path):
    rows = [dict(name=f"{b}_{i}", species=sp, breed=b, dice=d) for b, sp, d in
            [("Bengal", "cat", 0.6), ("pug", "dog", 0.9), ("Sphynx", "cat", 0.8)] for i in range(4)]
    path = tmp_path / "per_image.csv"
    path.write_text("name,species,breed,dice\n" + "".join(f"{r['name']},{r['species']},{r['breed']},{r['dice']}\n" for r in rows))
    for table in (rows, path, {"per_image": rows}):
        fig = dice_histogram(table)
        assert _titles(fig) == ["all images (n=12)", "per species", "mean Dice per breed"]
        assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["pug (4)", "Sphynx (4)", "Bengal (4)"]
        assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["cat: mean 0.700 (n=8)", "dog: mean 0.900 (n=4)"]
    with pytest.raises(ValueError, match="no 'dice' column"):
        dice_histogram([dict(name="a")])


def test_compare_models_columns(tiny, test_ds):
    torch.manual_seed(1)
    resnet = load_models(ResNet34UNet(), size=32)[0]
    fig = compare_models({"UNet": tiny, "ResNet34-UNet": resnet}, test_ds, idxs=[0, 2])
    assert len(fig.axes) == 10
    t = _titles(fig)
    assert t[:2] == [test_ds.names[0], "ground truth"]
    assert t[2].startswith("UNet · Dice") and t[3].startswith("ResNet34-UNet · Dice") and t[4].startswith("ensemble · Dice")
    ens = evaluate([tiny.model, resnet.model], dataset=test_ds, size=32, progress=False)
    assert t[4] == f"ensemble · Dice {ens.rows[0]['dice']:.3f}"
    assert len(compare_models({"UNet": tiny}, test_ds, n=1).axes) == 3


# ---------------------------------------------------------------- the browser

def _expected(model, ds, i, thr):
    return _by_hand(predict_items(model, ds, [i])[0], thr)


def test_browser_update_changes_dice(tiny, test_ds):
    b = SegmentationBrowser(test_ds, {"tiny": tiny})
    assert b.dice == pytest.approx(_expected(tiny, test_ds, 0, 0.5), abs=1e-6)
    assert b.update(index=3) == pytest.approx(_expected(tiny, test_ds, 3, 0.5), abs=1e-6) and b.index == 3
    values = {round(b.update(threshold=t), 6) for t in (0.05, 0.5, 0.95)}
    assert b.dice == pytest.approx(_expected(tiny, test_ds, 3, 0.95), abs=1e-6)
    assert len(values) > 1                                               # the threshold moves the Dice
    assert b.fig.axes[3].get_title().startswith("errors at 0.95") and len(b.fig.axes) == 4
    with pytest.raises(IndexError, match="out of range"):
        b.update(index=len(test_ds))
    with pytest.raises(ValueError, match="threshold"):
        b.update(threshold=1.5)


def test_browser_widget_and_checkpoint_selector(tiny, test_ds, tmp_path):
    ck = save_checkpoint(tmp_path / "tiny.pt", model_name="unet", model_kwargs=dict(features=(4, 8, 16, 32)),
                         model_state=tiny.model.state_dict(), image_size=40, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    torch.manual_seed(5)
    other = load_models(UNet(features=(4, 8, 16, 32)), size=32)[0]
    b = browse(test_ds, {"trained": ck, "other": other})
    assert b.model_names == ["trained", "other"]
    assert b.fig.axes[0].images[0].get_array().shape == (40, 40, 3)     # the checkpoint's input size is used
    assert b.dice == pytest.approx(_expected(load_models(ck)[0], test_ds, 0, 0.5), abs=1e-6)
    w = b.widget
    assert w is b.widget and b._img_w.value[:4] == b"\x89PNG"
    b._model_w.value = "other"
    assert b.model == "other" and b.dice == pytest.approx(_expected(other, test_ds, 0, 0.5), abs=1e-6)
    b._index_w.value = 4
    assert b.index == 4 and b.dice == pytest.approx(_expected(other, test_ds, 4, 0.5), abs=1e-6)
    b._thr_w.value = 0.8
    assert b.threshold == 0.8 and f"Dice {b.dice:.3f}" in b._dice_w.value
    b.update(index=1, model="trained")                                    # code moves the controls too
    assert (b._index_w.value, b._model_w.value) == (1, "trained")
    assert b.dice == pytest.approx(_expected(load_models(ck)[0], test_ds, 1, 0.8), abs=1e-6)
    assert list(browse(test_ds, [ck, other]).model_names) == ["tiny", "UNet"]   # a list is named after files/classes


# ---------------------------------------------------------------- the real sample (skipped when absent)

def test_show_batch_on_real_sample(sample_root):
    ds = OxfordPetDataset(sample_root, "valid", cache_size=None)
    fig = show_batch(ds, idxs=[0, 1])
    assert len(fig.axes) == 6
    for k in range(2):
        img, mask = ds.load(k)
        tri = fig.axes[3 * k + 1].images[0].get_array()
        assert tri.shape[:2] == img.shape[:2] == mask.shape
        assert ((tri == TRIMAP_COLORS[2][1]).all(-1) == (mask == 0)).all()
