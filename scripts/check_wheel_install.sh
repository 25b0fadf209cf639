#!/usr/bin/env bash
# `pip install .` (a wheel, not editable) into a new virtual environment, then `lrfer-train` from an unrelated
# folder must write metrics.json: the configs travel inside the package. The environment reuses the heavy
# dependencies already installed (--system-site-packages), so only lrfer itself is installed into it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$repo"
rm -rf "$repo/build"
cd "$work"
env -u PYTHONPATH "$work/venv/bin/python" -c "import lrfer, sys; sys.exit(lrfer.__file__.startswith('$work') is False)" \
    || { echo "error: lrfer was not imported from the new environment" >&2; exit 1; }
env -u PYTHONPATH "$work/venv/bin/lrfer-train" trainer.max_epochs=1 dataset.num_train=200 dataset.num_val=50 \
    dataset.num_test=50 logger=none hydra.run.dir=run > train.log 2>&1 || { tail -20 train.log >&2; exit 1; }
test -s run/metrics.json || { echo "error: lrfer-train wrote no metrics.json" >&2; exit 1; }
echo "wheel install: lrfer-train from $work wrote run/metrics.json"
