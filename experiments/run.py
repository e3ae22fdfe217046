"""Run one named experiment row of issue 23 on the real sample and append its result to petseg/experiments.csv.

    python experiments/run.py --list                       # the rows
    python experiments/run.py lr:finder --seed 0           # one row: train, pick the best epoch on valid, test once
    python experiments/run.py memory:keep-loss --seed 0    # peak RSS of a loop that keeps every loss tensor
    python experiments/run.py lr:1e-3 --smoke              # seconds, on synthetic pets (what CI runs)

The runner lives in `petseg.experiments` (lesson nbs/04a_experiments.ipynb), so that the lesson can rerun a row on
Colab too; the CSV ships with petseg for the same reason. Run rows with OMP_NUM_THREADS=1: CPU-seconds are the budget.
"""
import sys

from petseg.experiments import main

if __name__ == "__main__":
    main()
    sys.exit(0)
