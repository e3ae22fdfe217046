#!/usr/bin/env bash
# One command for every GPU figure of benchmarks/ (benchmarks/README.md, section 4).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--sample DIR] [other gpu_check.py options]
#       Installs what is missing (below), then runs benchmarks/gpu_check.py: model step, data pipeline and short
#       training runs, each under a time limit, about 8 minutes at most; writes DIR/gpu_check.{md,json,log}.
#   bash benchmarks/gpu_check.sh --smoke
#       The same on the CPU at tiny sizes on synthetic pets (CI runs this).
#   bash benchmarks/gpu_check.sh --prepare
#       On a machine WITH internet, before using the device tool (whose machine has none): downloads the wheels
#       the GPU image lacks into .whl/ and copies the sample's trainval part into data/oxford-pet-sample
#       (both git-ignored), then prints the device-tool call to make.
#
# What it installs, only where an import fails: albumentations (with albucore, pydantic, pydantic-core,
# annotated-types, typing-inspection, typing-extensions, stringzilla, simsimd) and segmentation-models-pytorch,
# plus any of opencv-python-headless, pillow, numpy, scipy, pyyaml, tqdm, matplotlib that is missing. From .whl/
# when it holds wheels (no index, no dependencies, into a folder under /tmp put first on PYTHONPATH), else from the
# package registry with pip, constrained to the installed torch and torchvision so that neither is reinstalled.
# torch itself is never installed: bring a CUDA build of it. petseg is not pip-installed either: it runs from
# this checkout through PYTHONPATH, so the figures are for exactly this code.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-$(command -v python3 || command -v python)}
WHEELS=.whl
SITE=${GPU_CHECK_SITE:-/tmp/petseg-gpu-check-site}
# the device image's Python (KINDS.md: 3.12 on nvidia-h200); the downloaded wheels must match it
DEVICE_PYTHON=${GPU_CHECK_DEVICE_PYTHON:-3.12}
WHEEL_PACKAGES="albumentations albucore pydantic pydantic-core annotated-types typing-inspection typing-extensions stringzilla simsimd segmentation-models-pytorch"
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

die() { echo "gpu_check.sh: $*" >&2; exit 2; }

prepare() {
  local sample=../shared/oxford-pet-sample dest=data/oxford-pet-sample specs=() name version path
  while [ $# -gt 0 ]; do
    case $1 in --sample) sample=$2; shift 2;; *) die "--prepare takes only --sample DIR (got $1)";; esac
  done
  # wheels: the versions installed here (tested with petseg), else the newest
  for name in $WHEEL_PACKAGES; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
    specs+=("$name${version:+==$version}")
  done
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  echo "+ pip download (Python $DEVICE_PYTHON, manylinux x86_64) ${specs[*]}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
  ls -1 "$WHEELS"
  # the sample: only what training and the data benchmark read (trainval split), to fit the 64 MiB transfer
  [ -f "$sample/annotations/trainval.txt" ] || die "no Oxford Pet sample at $sample (pass --prepare --sample DIR)"
  rm -rf "$dest"; mkdir -p "$dest/images" "$dest/annotations/trimaps"
  cp "$sample/annotations/trainval.txt" "$dest/annotations/"
  [ -f "$sample/README.md" ] && cp "$sample/README.md" "$dest/"
  while read -r stem _; do
    [ -n "$stem" ] && [ "${stem:0:1}" != "#" ] || continue
    cp "$sample/images/$stem.jpg" "$dest/images/"
    cp "$sample/annotations/trimaps/$stem.png" "$dest/annotations/trimaps/"
  done < "$sample/annotations/trainval.txt"
  echo "copied $(ls "$dest/images" | wc -l) trainval photos and trimaps into $dest"
  for path in "$WHEELS" "$dest"; do
    git check-ignore -q "$path" 2>/dev/null || echo "WARNING: $path is not git-ignored here: do not commit it (the sample must never be committed)"
  done
  echo "sizes: $(du -sh "$WHEELS" | cut -f1) wheels, $(du -sh "$dest" | cut -f1) sample, $(du -sh --exclude=.git --exclude="$WHEELS" --exclude=data . | cut -f1) the rest (the device tool sends at most 64 MiB)"
  echo
  echo "Now call the device tool (one call, about 8 minutes of the GPU plus its start):"
  echo "  run  command: bash benchmarks/gpu_check.sh --out \$OUT"
  echo "       carry:   [\"$WHEELS\", \"$dest\"]"
  echo "       timeout_s: 560"
}

# the pip names of the modules petseg and the benchmarks need that are not installed; with "import", imports each
# (seconds) to catch broken installs, else only looks them up (instant)
missing_modules() {
  "$PY" - "${1:-find}" <<'EOF'
import importlib.util, sys
need = {"albumentations": "albumentations", "segmentation_models_pytorch": "segmentation-models-pytorch",
        "cv2": "opencv-python-headless", "PIL": "pillow", "numpy": "numpy", "scipy": "scipy", "yaml": "pyyaml",
        "tqdm": "tqdm", "matplotlib": "matplotlib"}
def importable(module):
    if sys.argv[1] != "import": return importlib.util.find_spec(module) is not None
    try: __import__(module); return True
    except Exception as e: print(f"import {module}: {type(e).__name__}: {e}", file=sys.stderr); return False
print(" ".join(package for module, package in need.items() if not importable(module)))
EOF
}

install_missing() {
  "$PY" -c "import torch" 2>/dev/null || die "$PY has no torch: install a CUDA build of torch first (this script never installs torch)"
  local missing; missing=$(missing_modules)
  if [ -z "$missing" ]; then echo "gpu_check.sh: nothing to install (torch, albumentations, smp and the rest import)"; return; fi
  echo "gpu_check.sh: missing: $missing"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "+ pip install --no-index --no-deps --target $SITE $(cd "$WHEELS" && echo *.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  elif [ "$NO_INSTALL" = 1 ]; then
    die "missing $missing and --no-install given"
  else
    local constraints; constraints=$(mktemp)
    "$PY" -c "import importlib.metadata as m
for p in ('torch', 'torchvision'):
    try: print(f'{p}=={m.version(p)}')
    except m.PackageNotFoundError: pass" > "$constraints"
    echo "+ pip install --constraint <($(tr '\n' ' ' < "$constraints")) $missing"
    # short network time-outs: a machine without internet fails in seconds, not minutes
    "$PY" -m pip install -q --retries 1 --timeout 15 --constraint "$constraints" $missing \
      || die "pip could not install $missing; without internet run \`bash benchmarks/gpu_check.sh --prepare\` on a machine that has it and bring .whl/"
    rm -f "$constraints"
  fi
  missing=$(missing_modules import)
  case " $missing " in
    *" segmentation-models-pytorch "*) echo "gpu_check.sh: WARNING: segmentation_models_pytorch does not import: the model table will lack the smp reference";;
  esac
  missing=${missing//segmentation-models-pytorch/}
  [ -z "${missing// /}" ] || die "still missing or broken after the install: $missing"
}

if [ "${1:-}" = --prepare ]; then shift; prepare "$@"; exit 0; fi
NO_INSTALL=0
args=()
for a in "$@"; do
  case $a in
    --prepare) die "--prepare must come first: bash benchmarks/gpu_check.sh --prepare [--sample DIR]";;
    --no-install) NO_INSTALL=1;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; echo; export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"; exec "$PY" benchmarks/gpu_check.py --help;;
    *) args+=("$a");;
  esac
done
install_missing
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "${args[@]+"${args[@]}"}"
