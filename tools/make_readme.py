"""Generate README.md from nbs/index.ipynb with nbconvert (Quarto, which `nbdev_readme` needs, is not available
on every machine). Cells marked `#| hide` are dropped, `#| output: false` drops a cell's outputs, `#| echo: false` its code (its
outputs stay), `#|` directive lines are removed, outputs are kept and images are written to `README_files/`.

    python tools/make_readme.py          # write README.md (and README_files/)
    python tools/make_readme.py --check  # exit 1 if README.md is not what index.ipynb generates
"""
from __future__ import annotations

import argparse, sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, README, FILES_DIR = ROOT/"nbs"/"index.ipynb", ROOT/"README.md", "README_files"
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"


def _directives(source: str) -> tuple[set[str], str]:
    "Split nbdev `#|` directive lines from a cell's source."
    lines = source.splitlines()
    found = {l.lstrip("#|").strip().split(":")[0].split()[0] for l in lines if l.startswith("#|") and l.lstrip("#|").strip()}
    return found, "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")


def _filter(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "Drop hidden cells and strip nbdev directives."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            flags = {l.replace(" ", "") for l in cell.source.splitlines() if l.startswith("#|")}
            found, cell.source = _directives(cell.source)
            if "#|output:false" in flags: cell.outputs = []
            if "#|echo:false" in flags: cell.metadata.setdefault("transient", {})["remove_source"] = True
            if found & {"hide", "exporti", "export"} or (not cell.source and not cell.get("outputs")): continue
        cells.append(cell)
    nb.cells = cells
    return nb


def render() -> tuple[str, dict[str, bytes]]:
    "The README text and its image files, as generated from the index notebook."
    nb = _filter(nbformat.read(NOTEBOOK, as_version=4))
    body, resources = MarkdownExporter().from_notebook_node(nb, resources={"output_files_dir": FILES_DIR})
    return HEADER + body.strip() + "\n", dict(resources.get("outputs", {}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is current")
    args = ap.parse_args(argv)
    text, files = render()
    if args.check:
        stale = [] if README.exists() and README.read_text() == text else ["README.md"]
        stale += [n for n, data in files.items() if not (ROOT/n).exists() or (ROOT/n).read_bytes() != data]
        extra = sorted({str(p.relative_to(ROOT)) for p in (ROOT/FILES_DIR).glob("*")} - set(files)) if (ROOT/FILES_DIR).exists() else []
        if stale or extra:
            print(f"README is not current ({', '.join(stale + extra)}): run `python tools/make_readme.py` and commit.")
            return 1
        print("README.md is current.")
        return 0
    README.write_text(text)
    if (ROOT/FILES_DIR).exists():
        for old in (ROOT/FILES_DIR).glob("*"): old.unlink()
    for name, data in files.items():
        (ROOT/name).parent.mkdir(parents=True, exist_ok=True)
        (ROOT/name).write_bytes(data)
    print(f"wrote README.md and {len(files)} image file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
