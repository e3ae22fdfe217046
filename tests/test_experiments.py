"""The experiments' runner (petseg.experiments, wrapped by experiments/run.py) at its smoke size, and the shipped CSV."""
from __future__ import annotations

import csv, subprocess, sys, tempfile
from pathlib import Path

from petseg.experiments import EXPERIMENTS, RESULTS_CSV, load_results, main, variant_rows

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_row_appends_to_the_csv(tmp_path):
    out = tmp_path / "results.csv"
    for row in ("batch:1-bn", "memory:keep-loss"):
        assert main([row, "--smoke", "--seed", "1", "--csv", str(out)])["variant"] == row.split(":")[1]
    rows = list(csv.DictReader(out.open()))
    assert [(r["experiment"], r["variant"], r["seed"]) for r in rows] == [("batch", "1-bn", "1"), ("memory", "keep-loss", "1")]
    assert rows[0]["command"] == f"python experiments/run.py batch:1-bn --smoke --seed 1 --csv {out}"
    assert 0 <= float(rows[0]["test_dice"]) <= 1 and 0 <= float(rows[0]["test_dice_batch_stats"]) <= 1
    assert float(rows[1]["loop_rss_growth_mb"]) >= 0 and rows[1]["epochs"] == "4 steps"


def test_smp_progressive_bf16_row_at_smoke_size(tmp_path, monkeypatch):
    "smp's Unet as a petseg model name, a first run whose weights the row starts from (init_from), bf16 channels_last."
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the row's own folder goes here
    row = main(["recipe:smp-prog-bf16", "--smoke", "--csv", str(tmp_path / "r.csv")])
    assert row["model"] == "smp_unet_resnet34" and row["epochs"] == "1 at 32 px + 1" and 0 <= row["test_dice"] <= 1
    assert [p.name for p in tmp_path.glob("petseg-exp-*")] == ["petseg-exp-cache"]   # its checkpoints are deleted


def test_the_script_lists_every_row():
    listed = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--list"], capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout.split()
    assert listed == [f"{e}:{v}" for e, vs in EXPERIMENTS.items() for v in vs]


def test_the_shipped_csv_names_known_rows_with_their_commands():
    rows = load_results()
    assert RESULTS_CSV.is_file() and len(rows) >= 16
    for r in rows:
        assert r["variant"] in EXPERIMENTS[r["experiment"]], r
        assert r["command"].startswith(f"python experiments/run.py {r['experiment']}:{r['variant']}"), r
    assert variant_rows(rows, "aug")["on"] == variant_rows(rows, "lr")["1e-3"]   # borrowed, not copied
