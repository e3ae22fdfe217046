"""The Colab path, simulated end to end as far as this machine allows (issue 21).

A Colab student opens a lesson from its badge: a kernel whose Python has torch, Jupyter and the common scientific
packages but not petseg, a working folder with no dataset and no sample anywhere above it, and a network. This test
builds that:

- the student's Python is `$PETSEG_STUDENT_PYTHON`: a fresh virtualenv made by `.ci/lessons-job` (torch, nbclient,
  ipykernel and petseg's runtime requirements, no dev extras). petseg itself is uninstalled from it first, so each
  lesson's install cell runs as written: `pip install git+https://github.com/petseg/petseg`, which git is told (with
  `url.insteadOf`, in a private git config) to clone from this checkout instead of GitHub;
- the official archives are built from the real sample with `make_archives` and served from 127.0.0.1, and the data
  URL and checksums point there (`PETSEG_DATA_URL`, `PETSEG_DATA_MD5S`: what a mirror's user sets);
- `00_data` and one training lesson run top to bottom in a temporary folder outside the checkout. `course_data()` must
  download, verify and use the real photos (its printed line names Oxford-IIIT Pet, never synthetic pets), the second
  lesson must download nothing, and both must draw their pictures;
- then the server is cut, and `course_data()` in a fresh folder must print the synthetic fallback's banner.

It needs that virtualenv, so it runs from `.ci/lessons-job` and is skipped elsewhere:

    PETSEG_STUDENT_PYTHON=/path/to/venv/bin/python pytest tests/test_colab_path.py
"""
from __future__ import annotations

import json, os, shutil, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from conftest import SAMPLE, LoopbackServer
from petseg.data import make_archives

ROOT = Path(__file__).resolve().parents[1]
STUDENT_PYTHON = os.environ.get("PETSEG_STUDENT_PYTHON")
LESSONS = os.environ.get("PETSEG_COLAB_LESSONS", "00_data.ipynb 03_learner.ipynb").split()

pytestmark = [
    pytest.mark.skipif(not STUDENT_PYTHON, reason="needs a student's virtualenv: set PETSEG_STUDENT_PYTHON (.ci/lessons-job does)"),
    pytest.mark.skipif(not (SAMPLE / "annotations" / "trainval.txt").is_file(), reason=f"real sample not found at {SAMPLE}"),
]


def _committed_checkout() -> str:
    "This checkout, which git clones in place of GitHub: it must have no uncommitted change to petseg's sources."
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "petseg", "setup.py", "settings.ini"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    if dirty: pytest.fail(f"commit first: the install cell clones the committed checkout, and these differ:\n{dirty}")
    return str(ROOT)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    "The student's environment: variables for their kernel, a working folder outside the checkout, the mirror."
    home = tmp_path_factory.mktemp("colab")
    assert not any((p / "shared" / "oxford-pet-sample").exists() for p in [home, *home.parents]), home
    gitconfig = home / "gitconfig"
    gitconfig.write_text(f'[url "{_committed_checkout()}"]\n\tinsteadOf = https://github.com/petseg/petseg\n')
    subprocess.run([STUDENT_PYTHON, "-m", "pip", "uninstall", "-y", "-q", "petseg"], check=True)
    mirror = home / "mirror"
    md5s = make_archives(SAMPLE, mirror)
    server = LoopbackServer(mirror)
    kernel_dir = home / "jupyter"
    subprocess.run([STUDENT_PYTHON, "-m", "ipykernel", "install", "--prefix", str(kernel_dir), "--name", "student"],
                   check=True, capture_output=True)
    # nothing of this machine's set-up leaks in (CI exports MPLBACKEND=Agg, which would stop inline figures)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETSEG_", "PYTHON", "JUPYTER", "VIRTUAL_ENV", "MPLBACKEND"))}
    env.update(HOME=str(home / "home"), XDG_CACHE_HOME=str(home / "cache"), GIT_CONFIG_GLOBAL=str(gitconfig),
               GIT_CONFIG_NOSYSTEM="1", JUPYTER_PATH=str(kernel_dir / "share" / "jupyter"), IN_TEST="1",
               PETSEG_DATA_URL=server.url, PIP_PROGRESS_BAR="off", NO_ALBUMENTATIONS_UPDATE="1",
               PETSEG_DATA_MD5S=",".join(f"{name}={md5}" for name, md5 in md5s.items()))
    (home / "home").mkdir()
    yield dict(home=home, env=env, server=server)
    server.close()


def _run_lesson(name: str, folder: Path, env: dict) -> nbformat.NotebookNode:
    "Run lesson `name` top to bottom in `folder` with the student's kernel (as Colab would, `#| eval: false` skipped)."
    nb = nbformat.read(ROOT / "nbs" / name, as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "#| eval: false" in c.source)]
    path = folder / name
    nbformat.write(nb, path)
    code = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
            "p = sys.argv[1]; nb = nbformat.read(p, as_version=4)\n"
            "NotebookClient(nb, timeout=900, kernel_name='student', resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
            "nbformat.write(nb, p)\n")
    t = time.time()
    run = subprocess.run([sys.executable, "-c", code, str(path), str(folder)], env=env, capture_output=True, text=True,
                         timeout=1500)
    assert run.returncode == 0, f"{name} failed in the student's kernel:\n{run.stderr[-4000:]}"
    print(f"{name}: ran top to bottom in the student's kernel in {time.time() - t:.0f}s")
    return nbformat.read(path, as_version=4)


def _text(nb) -> str:
    return "\n".join(o.get("text", "") if o.get("output_type") == "stream" else json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _pictures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_lessons_download_and_use_real_photos_then_fall_back_with_a_banner(student):
    home, env, server = student["home"], student["env"], student["server"]
    lessons = home / "content"
    lessons.mkdir()
    for i, name in enumerate(LESSONS):
        nb = _run_lesson(name, lessons, env)
        out = _text(nb)
        assert "Oxford-IIIT Pet" in out and "data/oxford-pet" in out and "SYNTHETIC" not in out, \
            f"{name}: course_data() did not use the downloaded photos:\n{out[:3000]}"
        assert _pictures(nb) >= 1, f"{name}: drew no picture"
        archives = sorted(n for n, status, start in server.served)
        assert archives == ["annotations.tar.gz", "images.tar.gz"], \
            f"after {name}: the archives were served {archives} (each once, by the first lesson only)"
    installed = subprocess.run([STUDENT_PYTHON, "-c", "import petseg; print(petseg.__file__)"], cwd=home, env=env,
                               capture_output=True, text=True)
    assert installed.returncode == 0 and "site-packages" in installed.stdout, f"the install cell did not install petseg: {installed}"
    data = lessons / "data" / "oxford-pet"
    assert len(list((data / "images").glob("*.jpg"))) == len(list((SAMPLE / "images").glob("*.jpg"))), data
    assert (data / "annotations" / "trimaps").is_dir() and not list(data.glob("*.part"))

    server.close()                                     # the network is gone: a fresh folder gets synthetic pets
    offline = home / "offline"
    offline.mkdir()
    run = subprocess.run([STUDENT_PYTHON, "-c", "from petseg.data import course_data; print('ROOT', course_data())"],
                         cwd=offline, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    banner = run.stdout + run.stderr
    assert "SYNTHETIC" in banner and "petseg download" in banner, banner
    assert "synthetic-pets" in banner.split("ROOT", 1)[1], banner
