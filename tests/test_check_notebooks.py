"""tools/check_notebooks.py --lessons on tiny synthetic notebooks: one that passes, and one failing each rule
(fewer than two pictures, fewer than 12 questions, a question without an answer, an empty answer, no section)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("check_notebooks", Path(__file__).parents[1] / "tools" / "check_notebooks.py")
check_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_notebooks)

PNG = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}


def qa(n: int, answered=lambda i: True, answer: str = "Because the mask follows the photo.") -> str:
    "A questions cell: `n` numbered questions, each followed by a collapsed answer where `answered(i)`."
    parts = ["## Questions", ""]
    for i in range(1, n + 1):
        parts += [f"{i}. Why does question {i} matter?", ""]
        if answered(i): parts += ["   <details><summary>Answer</summary>", "", f"   {answer}", "", "   </details>", ""]
    return "\n".join(parts)


def notebook(path: Path, questions: str | None, pictures: int = 2, after: str = "## Try this\n\n1. Change it.\n2. Run it.") -> Path:
    md = lambda s: {"cell_type": "markdown", "metadata": {}, "source": s}
    code = {"cell_type": "code", "metadata": {}, "execution_count": None, "source": "plot()", "outputs": [PNG] * pictures}
    cells = [md("# A lesson"), code] + ([md(questions + "\n\n" + after)] if questions is not None else [])
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def problems(path: Path) -> list[str]: return check_notebooks.lesson_problems(json.loads(path.read_text()))


def test_a_complete_lesson_passes(tmp_path, capsys):
    good = notebook(tmp_path / "good.ipynb", qa(12))
    assert problems(good) == []
    assert check_notebooks.main(["--lessons", str(good)]) == 0
    assert "2 picture(s), 12 question(s), 12 answered: ok" in capsys.readouterr().out


def test_questions_may_continue_in_the_next_markdown_cell(tmp_path):
    nb = json.loads(notebook(tmp_path / "a.ipynb", qa(6), after="").read_text())
    rest = qa(12).split("\n   </details>\n", 6)[-1]   # questions 7-12, after question 6's answer
    nb["cells"].insert(3, {"cell_type": "markdown", "metadata": {}, "source": rest + "\n## Try this\n\n1. One."})
    assert check_notebooks.lesson_problems(nb) == []
    nb["cells"].insert(3, {"cell_type": "code", "metadata": {}, "source": "", "outputs": [], "execution_count": None})
    assert "6 question(s)" in check_notebooks.lesson_problems(nb)[0]   # a code cell ends the section


@pytest.mark.parametrize("name, questions, pictures, expected", [pytest.param(*case, id=case[0]) for case in [
    ("one_picture", qa(12), 1, "1 stored picture(s), 2 needed"),
    ("eleven_questions", qa(11), 2, "11 question(s) under '## Questions', 12 needed"),
    ("unanswered", qa(12, answered=lambda i: i != 5), 2, "1 question(s) without an answer"),
    ("empty_answer", qa(12, answer=""), 2, "12 question(s) without an answer"),
    ("no_section", None, 2, "no '## Questions' section"),
]])
def test_each_rule_fails_on_its_own(tmp_path, capsys, name, questions, pictures, expected):
    bad = notebook(tmp_path / f"{name}.ipynb", questions, pictures)
    found = problems(bad)
    assert len(found) == 1 and expected in found[0], found
    assert check_notebooks.main(["--lessons", str(bad)]) == 1
    assert f"{name}.ipynb: {expected}" in capsys.readouterr().err


def test_try_this_items_are_not_questions(tmp_path):
    "Numbered items after the next level-2 heading (Try this) are not counted, nor are '### ' sub-headings an end."
    nb = notebook(tmp_path / "a.ipynb", qa(11), after="### More\n\n12. A twelfth question?\n\n   <details><summary>"
                  "Answer</summary>\n\n   Yes.\n\n   </details>\n\n## Try this\n\n1. One.\n2. Two.")
    assert problems(nb) == []
    assert "11 question(s)" in problems(notebook(tmp_path / "b.ipynb", qa(11), after="## Try this\n\n12. Not a question."))[0]
