"""Named training presets: `TrainConfig.preset("full")` holds the course's full recipe, `petseg train --preset full`
starts from it with the flags given winning over it, and an unknown name is one line listing the presets."""
from __future__ import annotations

import json

import pytest

from petseg.cli import build_parser, main, train_config_from_args
from petseg.training import PRESETS, ConfigError, TrainConfig, check_config


def test_full_preset_is_the_reports_recipe():
    cfg = TrainConfig.preset("full", data_root="data/oxford-pet")
    assert (cfg.model, cfg.image_size, cfg.epochs, cfg.batch_size, cfg.lr) == ("resnet34_unet", 256, 400, 32, 1e-3)
    assert (cfg.bce_weight, cfg.dice_weight) == (1.0, 1.0)   # BCE + Dice
    assert check_config(cfg) is cfg
    assert set(PRESETS["full"]) <= {f for f in TrainConfig.__dataclass_fields__}


def test_preset_changes_win():
    cfg = TrainConfig.preset("full", epochs=40, model="unet", data_root="d")
    assert (cfg.epochs, cfg.model, cfg.batch_size) == (40, "unet", 32)
    assert TrainConfig.preset("full").epochs == 400   # the preset itself is not changed by a call


def test_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError, match=r"unknown preset 'fast': choose one of 'full'"):
        TrainConfig.preset("fast")


def test_cli_flags_override_the_preset():
    args = build_parser().parse_args(["train", "--preset", "full", "--epochs", "3", "--bs", "4", "--no-augment",
                                      "--data-root", "d"])
    cfg = train_config_from_args(args)
    assert (cfg.epochs, cfg.batch_size, cfg.augment, cfg.data_root) == (3, 4, False, "d")    # the flags given
    assert (cfg.model, cfg.image_size, cfg.lr, cfg.channels_last) == ("resnet34_unet", 256, 1e-3, True)   # the preset's
    plain = train_config_from_args(build_parser().parse_args(["train", "--data-root", "d"]))
    assert (plain.epochs, plain.model) == (TrainConfig().epochs, TrainConfig().model)   # no preset: the defaults


def test_cli_unknown_preset_is_one_line(capsys):
    assert main(["train", "--preset", "fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--preset" in err and "full" in err and "Traceback" not in err


def test_cli_preset_run_records_the_merged_config(synthetic_root, tmp_path, capsys):
    "A real (tiny) run from the preset: config.json holds the preset's values where no flag was given."
    code = main(["train", "--preset", "full", "--data-root", str(synthetic_root), "--no-download", "--model", "unet",
                 "--features", "4,8,16,32", "--size", "32", "--epochs", "1", "--batch-size", "4",
                 "--max-train-batches", "2", "--num-workers", "0", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--checkpoint-dir", str(tmp_path / "runs"), "-q"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "runs" / "unet" / "config.json").read_text())
    assert (saved["epochs"], saved["image_size"], saved["batch_size"], saved["model"]) == (1, 32, 4, "unet")
    assert (saved["lr"], saved["cache"], saved["channels_last"]) == (1e-3, True, True)
