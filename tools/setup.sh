#!/usr/bin/env bash
# Installs everything Sirocco's build and tests need on Debian 12. Idempotent:
# packages already present are left alone, so reruns take a second.
#
#   tools/setup.sh          Debian packages for the build and the tests
#   tools/setup.sh --venv   also the Python environment (.venv) for the live
#                           reference checks: torch, transformers, safetensors, numpy
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev            # Status/StatusOr, strings
  nlohmann-json3-dev     # config.json, safetensors headers
  libopenblas-dev        # dense products on CPU (cblas_sgemm)
  libgtest-dev libgmock-dev libbenchmark-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${1:-}" == "--venv" ]]; then
  PY="${PYTHON:-python3}"
  if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
  fi
  # Versions the reference goldens were produced with; newer ones are checked
  # live by tests/reference/mistral4_reference.py check.
  .venv/bin/pip install -q --disable-pip-version-check \
    "torch>=2.6" "transformers==5.24.0" "safetensors>=0.4" "numpy>=1.26"
  .venv/bin/python -c "import torch, transformers; print('venv: torch', torch.__version__, 'transformers', transformers.__version__)"
fi
