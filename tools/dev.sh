#!/usr/bin/env bash
# The two entry points of a fresh checkout (see README.md):
#   tools/dev.sh run    build, make the embedded default model if absent, generate
#   tools/dev.sh test   build and run every test (ctest), failing on any failure
# Environment: BUILD_DIR (default build), SIROCCO_SANITIZE (address|thread),
# JOBS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"

tools/setup.sh

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSIROCCO_SANITIZE="${SIROCCO_SANITIZE:-}" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"

case "${1:-}" in
  run)
    MODEL_DIR="${MODEL_DIR:-models/tiny}"
    if [[ ! -f "$MODEL_DIR/config.json" ]]; then
      "$BUILD_DIR/tools/sirocco" make-model --preset tiny --seed 0 --out "$MODEL_DIR"
    fi
    "$BUILD_DIR/tools/sirocco" generate --model "$MODEL_DIR" --tokens 1,1010,1784,1278,9005 \
      --max-tokens 32 --temperature 0.7 --top-p 0.95 --seed 1
    ;;
  test)
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900
    ;;
  *)
    echo "usage: tools/dev.sh run|test" >&2
    exit 2
    ;;
esac
