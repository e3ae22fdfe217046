"""experiments/run.py at its smoke size: one row appended to the CSV, with the command that produced it."""
from __future__ import annotations

import csv, importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "run.py"


def load_script():
    spec = importlib.util.spec_from_file_location("experiments_run", SCRIPT)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


def test_smoke_row_appends_to_the_csv(tmp_path, capsys):
    run = load_script()
    out = tmp_path / "results.csv"
    for row in ("batch:1-bn", "memory:keep-loss"):
        assert run.main([row, "--smoke", "--seed", "1", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["experiment"], r["variant"], r["seed"]) for r in rows] == [("batch", "1-bn", "1"), ("memory", "keep-loss", "1")]
    assert rows[0]["command"] == f"python experiments/run.py batch:1-bn --smoke --seed 1 --csv {out}"
    assert 0 <= float(rows[0]["test_dice"]) <= 1 and 0 <= float(rows[0]["test_dice_batch_stats"]) <= 1
    assert float(rows[1]["loop_rss_growth_mb"]) >= 0 and rows[1]["epochs"] == "4 steps"
