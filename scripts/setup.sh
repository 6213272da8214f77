#!/usr/bin/env bash
# Set up a development environment in .venv: PyTorch 2.13.0 first, pinned (the
# build is the package index's: a CPU wheel on the project's machines, where any
# other torch requirement would pull several GB of CUDA packages), then p3m
# itself, editable, with the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, p3m; print(f'p3m {p3m.__version__} with torch {torch.__version__} ready in .venv')"
