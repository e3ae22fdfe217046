"""Checks on the lesson notebooks for CI (.ci/run).

    python tools/check_notebooks.py --outputs                      # every lesson keeps at least one stored picture
    python tools/check_notebooks.py --outputs nbs/01_models.ipynb  # ... only the notebooks named
    python tools/check_notebooks.py --lessons                      # every lesson: 2+ pictures, 12+ answered questions
    python tools/check_notebooks.py --docs                         # nbdev's docs processing runs on every notebook
    python tools/check_notebooks.py --docs nbs/00a_augment.ipynb   # ... only the notebooks named

`--outputs`: lessons are committed with their outputs so they read on GitHub, nbviewer and Colab before anything
runs; a lesson (by default nbs/0*.ipynb and nbs/tutorials/*.ipynb) fails when none of its cells stores an
`image/png` output.

`--lessons`: what a lesson (by default nbs/0*.ipynb) must hold, beyond `--outputs`:
- at least 2 stored pictures (`image/png` outputs);
- a questions section: a markdown line `## Questions` (a level-2 heading, nothing else on the line). The section
  runs over that cell and the markdown cells right after it, up to the next level-1 or level-2 heading
  (`# ...`, `## ...`; a `### ...` stays inside) or the first code cell;
- at least 12 questions in it. A question is a line that starts, unindented, with a number, a dot and a space
  (`7. Why ...?`: a markdown numbered-list item);
- an answer to every question: an HTML `<details>` element whose first tag inside is `<summary>Answer</summary>`,
  with some text before its `</details>`, lying after the question's line and before the next question (or the
  section's end). Written so, it renders collapsed on GitHub, Jupyter, Colab and Quarto:

      7. Why ...?

         <details><summary>Answer</summary>

         Because ...

         </details>

`--docs`: runs, without Quarto, what `nbdev_docs` / `nbdev_preview` run before Quarto: nbdev's notebook processors
(`nbdev.processors.FilterDefaults`, through `nbdev.serve_drv.main` as `nbdev.serve.proc_nbs` calls it, with
IN_TEST=1). In that "docs mode" only some cells run (exported cells, cells with imports, `show_doc` cells), so a
later cell that uses a name defined in a skipped cell stops the docs build with a NameError. Each notebook is
processed in its own Python process (as `proc_nbs` does, with `spawn`), its result written to a temporary folder.
Default: every notebook under nbs/ (by default nbs/**/*.ipynb).

Exit status 1 when any notebook fails; each failure is printed with its notebook.
"""
from __future__ import annotations

import argparse, json, os, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def lesson_notebooks() -> list[Path]:
    "The course's lessons: nbs/0*.ipynb and nbs/tutorials/*.ipynb (globbed: lesson names change)."
    return sorted(NBS.glob("0*.ipynb")) + sorted((NBS / "tutorials").glob("*.ipynb"))


def all_notebooks() -> list[Path]:
    "Every notebook under nbs/ that nbdev would process (not in hidden folders or checkpoints)."
    return sorted(p for p in NBS.rglob("*.ipynb")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(NBS).parts))


def count_pictures(path: Path) -> int:
    "Number of stored `image/png` outputs in the notebook at `path`."
    return _count_png(json.loads(path.read_text(encoding="utf-8")))


def _count_png(nb: dict) -> int:
    return sum("image/png" in out.get("data", {})
               for cell in nb.get("cells", []) if cell.get("cell_type") == "code"
               for out in cell.get("outputs", []))


def check_outputs(paths: list[Path]) -> list[str]:
    "Failure messages for the notebooks in `paths` that store no picture."
    failures = []
    for p in paths:
        try: n = count_pictures(p)
        except (OSError, ValueError) as e:
            failures.append(f"{_rel(p)}: cannot read the notebook ({e})"); continue
        print(f"{_rel(p)}: {n} stored picture(s)")
        if n == 0: failures.append(f"{_rel(p)}: no stored picture (image/png) output; execute it with its outputs "
                                   "(jupyter nbconvert --to notebook --execute --inplace) and commit them")
    return failures


MIN_PICTURES, MIN_QUESTIONS = 2, 12
_QUESTIONS_HEADING = re.compile(r"^##\s+Questions\s*$", re.I)
_SECTION_END = re.compile(r"^#{1,2}\s")          # the next level-1 or level-2 heading
_QUESTION = re.compile(r"^\d+\.\s+\S")             # an unindented numbered-list item
_ANSWER = re.compile(r"<details>\s*<summary>\s*Answer\s*</summary>(.*?)</details>", re.I | re.S)


def questions_section(nb: dict) -> str | None:
    "The markdown of the notebook's questions section (see the module docstring), or None when it has none."
    cells, lines = nb.get("cells", []), None
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            if lines is not None: break
            continue
        src = "".join(cell.get("source", "")).splitlines()
        if lines is None:
            start = next((i for i, l in enumerate(src) if _QUESTIONS_HEADING.match(l)), None)
            if start is None: continue
            lines, src = [], src[start + 1:]
        end = next((i for i, l in enumerate(src) if _SECTION_END.match(l)), None)
        lines += src if end is None else src[:end]
        if end is not None: break
    return None if lines is None else "\n".join(lines)


def questions_and_answers(section: str) -> list[tuple[str, str | None]]:
    "Each question of a questions section with its answer's text (None when it has no answer)."
    lines = section.splitlines()
    starts = [i for i, l in enumerate(lines) if _QUESTION.match(l)]
    qa = []
    for n, i in enumerate(starts):
        body = "\n".join(lines[i + 1:starts[n + 1] if n + 1 < len(starts) else len(lines)])
        m = _ANSWER.search(body)
        answer = re.sub(r"\s+", " ", m.group(1)).strip() if m else None
        qa.append((lines[i].strip(), answer or None))
    return qa


def lesson_problems(nb: dict) -> list[str]:
    "What the lesson notebook `nb` lacks: pictures, a questions section, questions, answers (empty when nothing)."
    problems = []
    n = _count_png(nb)
    if n < MIN_PICTURES: problems.append(f"{n} stored picture(s), {MIN_PICTURES} needed")
    section = questions_section(nb)
    if section is None: return problems + ["no '## Questions' section"]
    qa = questions_and_answers(section)
    if len(qa) < MIN_QUESTIONS: problems.append(f"{len(qa)} question(s) under '## Questions', {MIN_QUESTIONS} needed")
    unanswered = [q for q, a in qa if a is None]
    if unanswered:
        problems.append(f"{len(unanswered)} question(s) without an answer (a <details><summary>Answer</summary> ... "
                        f"</details> after the question), first: {unanswered[0][:70]!r}")
    return problems


def check_lessons(paths: list[Path]) -> list[str]:
    "Failure messages for the lessons in `paths` that lack pictures, questions or answers."
    failures = []
    for p in paths:
        try: nb = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            failures.append(f"{_rel(p)}: cannot read the notebook ({e})"); continue
        section = questions_section(nb)
        qa = questions_and_answers(section) if section is not None else []
        problems = lesson_problems(nb)
        print(f"{_rel(p)}: {_count_png(nb)} picture(s), {len(qa)} question(s), "
              f"{sum(a is not None for _, a in qa)} answered{'' if problems else ': ok'}")
        failures += [f"{_rel(p)}: {problem}" for problem in problems]
    return failures


_DOCS_DRIVER = r"""
import sys
from pathlib import Path
import nbdev.serve_drv
from nbdev.processors import FilterDefaults
nbdev.serve_drv.main((Path(sys.argv[1]), Path(sys.argv[2]), FilterDefaults))
"""


def process_for_docs(path: Path, dest: Path, timeout: float = 900) -> str | None:
    "Run nbdev's docs processors on the notebook at `path` in a fresh process, writing to `dest`; the error or None."
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               MPLBACKEND=os.environ.get("MPLBACKEND", "Agg"))
    try:
        r = subprocess.run([sys.executable, "-c", _DOCS_DRIVER, str(path), str(dest)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired: return f"docs processing took over {timeout:.0f} s"
    if r.returncode == 0 and dest.exists(): return None
    return _last_error(r.stderr) or f"exit status {r.returncode}"


def _last_error(stderr: str, max_lines: int = 12) -> str:
    "What failed: nbdev's 'Error in notebook ... in cell N' with the cell's first lines, and the exception that caused it."
    lines = stderr.rstrip().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("Exception: Error")), None)
    if start is None: return "\n".join(lines[-max_lines:])
    cell = lines[start:]
    shown = cell[:max_lines] + (["    ..."] if len(cell) > max_lines else [])
    causes = [l for l in lines[:start] if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", l)]
    return "\n".join(shown + ([f"caused by: {causes[-1]}"] if causes else []))


def check_docs(paths: list[Path]) -> list[str]:
    "Failure messages for the notebooks in `paths` whose docs processing fails."
    failures = []
    with tempfile.TemporaryDirectory(prefix="petseg-docs-") as tmp:
        for p in paths:
            err = process_for_docs(p, Path(tmp) / p.relative_to(NBS) if p.is_relative_to(NBS) else Path(tmp) / p.name)
            print(f"{_rel(p)}: {'ok' if err is None else 'FAILED'}", flush=True)
            if err: failures.append(f"{_rel(p)}: nbdev's docs processing failed:\n{_indent(err)}")
    return failures


def _rel(p: Path) -> str:
    try: return str(p.resolve().relative_to(ROOT))
    except ValueError: return str(p)


def _indent(s: str) -> str: return "\n".join("    " + l for l in s.splitlines())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outputs", action="store_true", help="every lesson stores at least one picture (image/png)")
    ap.add_argument("--lessons", action="store_true",
                    help=f"every lesson stores {MIN_PICTURES}+ pictures and {MIN_QUESTIONS}+ questions, each with an answer")
    ap.add_argument("--docs", action="store_true", help="nbdev's docs processing (exec in docs mode) succeeds")
    ap.add_argument("notebooks", nargs="*", type=Path,
                    help="notebooks to check (default: nbs/0*.ipynb + nbs/tutorials/*.ipynb for --outputs, nbs/0*.ipynb for --lessons, "
                         "every notebook under nbs/ for --docs)")
    args = ap.parse_args(argv)
    if not (args.outputs or args.lessons or args.docs): ap.error("choose --outputs, --lessons and/or --docs")
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing: ap.error(f"notebook(s) not found: {', '.join(missing)}")
    named = [p.resolve() for p in args.notebooks]
    failures = []
    if args.outputs: failures += check_outputs(named or lesson_notebooks())
    if args.lessons: failures += check_lessons(named or sorted(NBS.glob("0*.ipynb")))
    if args.docs: failures += check_docs(named or all_notebooks())
    if failures:
        print(f"\n{len(failures)} notebook check(s) failed:", file=sys.stderr)
        for f in failures: print(f"- {f}", file=sys.stderr)
        return 1
    print("notebook checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
