#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv, or $CHANGEDET_VENV) and install changedet into it.
# Idempotent: a stamp keyed on pyproject.toml + constraints.txt skips the install when nothing changed.
# torch/torchvision come from constraints.txt (the exact builds that work on the project's machines); use pip, not uv
# or poetry, which would download other torch builds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHANGEDET_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${CHANGEDET_EXTRAS:-all}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.changedet-stamp"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$EXTRAS
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing changedet[$EXTRAS] into $VENV (torch from constraints.txt)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q -c constraints.txt torch torchvision 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$EXTRAS]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import changedet, torch, rasterio, segmentation_models_pytorch" 
  echo "$want" > "$stamp"
fi
