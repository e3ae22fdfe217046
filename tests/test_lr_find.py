"""The learning-rate finder end to end: `Learner.lr_find` on a real run's learner (every training callback attached)
leaves no trace, so that training afterwards is bit for bit the training without it; `petseg lr-find` prints a
suggestion within the rates tried, saves the curve, stops early on divergence, and refuses bad flags in one line."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from petseg.cli import main
from petseg.training import TrainConfig, build_learner

TINY = ["--features", "8,16,32,64", "--size", "32", "--device", "cpu", "--num-workers", "0", "--seed", "0",
        "--batch-size", "4", "-q"]


def run(capsys, *argv) -> tuple[int, str, str]:
    "`petseg *argv` in-process: (exit code, stdout, stderr)."
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def same_state(a, b) -> bool:
    "Two (nested) state dicts equal bit for bit."
    if isinstance(a, dict): return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor): return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_lr_find_leaves_a_real_run_untouched(synthetic_root, tmp_path):
    cfg = dict(data_root=str(synthetic_root), model_kwargs={"features": [8, 16, 32, 64]}, image_size=32, batch_size=4,
               epochs=2, num_workers=0, seed=0, checkpoint_dir=str(tmp_path), progress=False, verbose=False,
               live_plot=False, grad_clip=1.0, scheduler="onecycle")
    found = build_learner(TrainConfig(**cfg, run_name="found"))
    states = lambda l: copy.deepcopy((l.model.state_dict(), l.opt.state_dict(), {cb.name: cb.state_dict() for cb in l.cbs}))
    before, rng = states(found), torch.get_rng_state()
    result = found.lr_find(num_it=12)
    assert len(result.lrs) == 12 and result.stopped == "finished"
    assert same_state(states(found), before) and torch.equal(torch.get_rng_state(), rng)
    assert not any(tmp_path.iterdir())                       # no checkpoint, log or run folder
    plain = build_learner(TrainConfig(**cfg, run_name="plain"))
    found.fit(2); plain.fit(2)
    assert same_state(found.model.state_dict(), plain.model.state_dict())
    assert found.recorder.history[-1]["valid_dice"] == plain.recorder.history[-1]["valid_dice"]


def test_cli_lr_find_prints_a_suggestion_and_saves_the_plot(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "lr-find", "--data-root", synthetic_root, *TINY, "--num-it", "30",
                         "--start-lr", "1e-5", "--end-lr", "1", "--plot", "curve.png")
    assert code == 0, err
    suggestion = float(re.search(r"suggested learning rate: (\S+)", out).group(1))
    assert 1e-5 <= suggestion <= 1
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]     # no checkpoints/ folder


def test_cli_lr_find_stops_when_the_loss_diverges(synthetic_root, tmp_path, capsys):
    code, out, err = run(capsys, "lr-find", "--data-root", synthetic_root, *TINY, "--optimizer", "sgd", "--num-it", "200",
                         "--start-lr", "1e-2", "--end-lr", "1000", "--plot", tmp_path / "curve.svg")
    assert code == 0, err
    batches = int(re.search(r"^(\d+) batches \(diverged\)", out, re.M).group(1))
    assert batches < 200
    assert (tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("flags, message", [
    (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr 1.0 must be below --end-lr 0.1"),
    (["--plot", "curve.txt"], "--plot curve.txt: give a .png, .pdf, .svg file"),
    (["--num-it", "1"], "--num-it: expected an integer from 2 to 1000"),
    (["--lr", "-1"], "--lr -1.0 must be a number > 0"),
])
def test_cli_lr_find_bad_flags_are_one_line_usage_errors(synthetic_root, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "lr-find", "--data-root", synthetic_root, *TINY, *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_lr_find_without_data_says_how_to_get_it(tmp_path, capsys):
    code, out, err = run(capsys, "lr-find", "--data-root", tmp_path / "nothing", *TINY)
    assert code == 2 and "petseg download --data-root" in err, err
