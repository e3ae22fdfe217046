"""Run lessons top to bottom as a student's kernel does, time them, and state the time at each lesson's top.

    python tools/run_lesson.py nbs/03_learner.ipynb              # run, print the time (outputs not kept)
    python tools/run_lesson.py --inplace nbs/03_learner.ipynb    # run, keep the outputs, write the run-time line
    python tools/run_lesson.py --times-json t.json nbs/0*.ipynb  # ... and save the times (CI's lessons job does)
    python tools/run_lesson.py --apply-times t.json              # write saved times into the lessons' run-time lines

Each notebook runs in a fresh kernel (`--kernel`, default python3) with nbs/ as its working folder, as Jupyter runs
it. Cells marked `#| eval: false` (the full 810 MB download, Google Drive) are skipped, as nbdev skips them; nothing
else is, so with IN_TEST unset a lesson does exactly what a student's "Run all" does. The time is wall-clock from
the kernel's start to its last cell; CPU-seconds are the kernel's and its subprocesses' (user + system).

`--inplace` writes the outputs back into the notebook and the lesson's run-time line, a markdown cell that starts
with `> **Run time.**` (created after the title and the Colab badge when missing). Run `nbdev_clean` afterwards.
Exit status 1 when a notebook fails; a lesson over five minutes is flagged in the summary, not failed (wall-clock
time on a shared machine is noisy).
"""
from __future__ import annotations

import argparse, datetime, json, os, resource, sys, time
from pathlib import Path

import nbformat

RUN_TIME_MARK = "> **Run time.**"
TARGET_S = 300


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _skipped(cell) -> bool:
    return cell.cell_type == "code" and "#| eval: false" in cell.source


def run_notebook(path: Path, kernel: str = "python3", inplace: bool = False, timeout: int = 1800) -> dict:
    "Execute `path` top to bottom (skipping `#| eval: false` cells); return its wall time, CPU time and load."
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    run = nbformat.from_dict({**nb, "cells": [c for c in nb.cells if not _skipped(c)]})
    load, cpu0, t0 = os.getloadavg()[0], _cpu_children(), time.time()
    NotebookClient(run, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}}).execute()
    result = dict(notebook=str(path), name=path.name, wall_s=round(time.time() - t0, 1), cpu_s=round(_cpu_children() - cpu0, 1),
                  load_start=round(load, 2), load_end=round(os.getloadavg()[0], 2),
                  date=datetime.date.today().isoformat())
    if inplace:
        ran = iter(run.cells)
        nb.cells = [c if _skipped(c) else next(ran) for c in nb.cells]
        set_run_time(nb, result)
        nbformat.write(nb, path)
    return result


def _minutes(s: float) -> str:
    m, s = divmod(round(s), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def run_time_text(r: dict) -> str:
    "The lesson's run-time line for the measurement `r`."
    return (f"{RUN_TIME_MARK} {_minutes(r['wall_s'])} top to bottom on this project's 2-core CPU with the real 600-photo\n"
            f"> sample ({r['cpu_s']:.0f} CPU-seconds; load average {r['load_start']:.1f} at the start, "
            f"{r['load_end']:.1f} at the end), measured\n"
            f"> by `tools/run_lesson.py` on {r['date']}. Not yet measured on a GPU.")


def set_run_time(nb, r: dict) -> None:
    "Write the run-time line into `nb`: replace the cell that holds one, or add one after the title and badge."
    text = run_time_text(r)
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.lstrip().startswith(RUN_TIME_MARK):
            c.source = text
            return
    at = 1
    while at < len(nb.cells) and "colab-badge" in nb.cells[at].source: at += 1
    nb.cells.insert(at, nbformat.v4.new_markdown_cell(text))


def summary(results: list[dict]) -> str:
    lines = [f"{'lesson':<28}{'wall':>10}{'CPU-s':>8}{'load':>12}"]
    for r in results:
        flag = "  OVER 5 MIN" if r["wall_s"] > TARGET_S else ""
        lines.append(f"{r['name']:<28}{_minutes(r['wall_s']):>10}{r['cpu_s']:>8.0f}"
                     f"{r['load_start']:>6.1f}-{r['load_end']:<5.1f}{flag}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--inplace", action="store_true", help="keep the outputs and write the run-time line")
    p.add_argument("--kernel", default="python3")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    p.add_argument("--times-json", type=Path, help="save the measured times here")
    p.add_argument("--apply-times", type=Path, help="write the times saved in this JSON into the lessons' run-time lines")
    a = p.parse_args(argv)
    if a.apply_times:
        for r in json.loads(a.apply_times.read_text()):
            path = Path(__file__).resolve().parents[1] / r["notebook"]
            nb = nbformat.read(path, as_version=4); set_run_time(nb, r); nbformat.write(nb, path)
            print(f"{path.name}: {_minutes(r['wall_s'])}")
        return 0
    results, failed = [], []
    for path in a.notebooks:
        try:
            r = run_notebook(path, a.kernel, a.inplace, a.timeout)
            results.append(r)
            print(f"{path}: ran top to bottom in {r['wall_s']:.0f}s ({r['cpu_s']:.0f} CPU-s, load {r['load_start']:.1f})", flush=True)
        except Exception as e:
            failed.append(path)
            print(f"{path}: FAILED\n{str(e)[-3000:]}", flush=True)
    if results: print("\n" + summary(results))
    if a.times_json: a.times_json.write_text(json.dumps(results, indent=1) + "\n")
    if failed: print(f"notebooks that failed: {', '.join(map(str, failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
