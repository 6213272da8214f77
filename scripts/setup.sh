#!/usr/bin/env bash
# Set up a development environment in .venv: PyTorch 2.13.0 first, pinned (the
# build is the package index's: a CPU wheel on the project's machines, where any
# other torch requirement would pull several GB of CUDA packages), then p3m
# itself, editable, with the test extras and every optional extra (so the tests
# of each integration run), and Debian's chromium for the browser test of the
# server's page (Playwright drives it; it cannot download its own browser here).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "setup: chromium not found; install it (apt-get install chromium) to run the browser test" >&2
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[torch,onnx,test,serve,ikomia,video,ray]"
# pymatting compiles its numba kernels on first use (about a minute, cached on disk): do it here,
# as a user's first `p3m dataset prepare` would, so the test run does not pay it.
.venv/bin/python -c "import numpy as np; from p3m.data.prepare import estimate_fg_bg; estimate_fg_bg(np.zeros((16, 16, 3), np.uint8), np.full((16, 16), 128, np.uint8))"
.venv/bin/python -c "import torch, p3m; print(f'p3m {p3m.__version__} with torch {torch.__version__} ready in .venv')"
