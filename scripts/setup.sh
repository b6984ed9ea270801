#!/usr/bin/env bash
# Set up rlft in ./.venv: torch first (the CPU wheel on a machine without a GPU), then rlft and its
# dependencies, then the dev tools. Safe to run again: what is installed already is kept.
#   RLFT_TORCH_INDEX=<url>   take torch from this index instead (e.g. a CUDA wheel index)
#   RLFT_PYTHON=python3.11    the interpreter that creates the venv
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${RLFT_PYTHON:-python3}"
TORCH_VERSION="2.13.0"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${RLFT_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install "torch==${TORCH_VERSION}" --index-url "$RLFT_TORCH_INDEX"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install "torch==${TORCH_VERSION}"
  else
    # No GPU: the CPU build. Where pip's find-links carry the CPU wheel (as here) this takes it; a
    # requirement that the installed torch satisfies later installs nothing more.
    "${PIP[@]}" install "torch==${TORCH_VERSION}+cpu" 2>/dev/null || "${PIP[@]}" install "torch==${TORCH_VERSION}"
  fi
fi
"${PIP[@]}" install -e ".[dev]" 2>&1 | grep -v -E "^WARNING: Location|^$" || true
.venv/bin/python - <<'PY'
import torch, trl, transformers
cuda = torch.version.cuda or "cpu"
print(f"rlft set up: torch {torch.__version__} ({cuda}), trl {trl.__version__}, transformers {transformers.__version__}")
PY
