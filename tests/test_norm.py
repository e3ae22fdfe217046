"""GroupNorm from the command line: `--model-kwargs '{"norm": "group"}'` trains at batch size 1 and the checkpoint
rebuilds the GroupNorm model; a bad `norm` is a one-line usage error."""
from __future__ import annotations

from torch import nn

from petseg.checkpoint import model_from_checkpoint
from petseg.cli import main

TINY = ["--features", "8,16,32,64", "--size", "32", "--device", "cpu", "--num-workers", "0", "--seed", "0", "-q"]


def test_group_norm_trains_at_batch_size_1(synthetic_root, tmp_path, capsys):
    code = main(["train", "--data-root", str(synthetic_root), *TINY, "--epochs", "1", "--batch-size", "1",
                 "--max-train-batches", "6", "--model-kwargs", '{"norm": "group"}', "--out-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    model, ckpt = model_from_checkpoint(tmp_path / "unet" / "best.pt")
    assert ckpt["model_kwargs"] == {"norm": "group", "features": [8, 16, 32, 64]}
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unknown_norm_is_a_usage_error(synthetic_root, tmp_path, capsys):
    code = main(["train", "--data-root", str(synthetic_root), *TINY, "--epochs", "1", "--model-kwargs", '{"norm": "layer"}',
                 "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "norm must be one of 'batch', 'group'" in err and len(err.strip().splitlines()) == 1, err
