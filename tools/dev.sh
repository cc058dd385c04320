#!/usr/bin/env bash
# The two entry points of a fresh checkout (see README.md):
#   tools/dev.sh run    build, then run the local cluster (sirocco up) on the embedded
#                       default model, made on first run; Ctrl-C stops it
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
    # The local disaggregated cluster on the embedded default model (made on
    # first run): a router, one prefill and one decode worker on loopback.
    # Talk to it from another terminal: build/tools/sirocco chat "Hello"
    exec "$BUILD_DIR/tools/sirocco" up --port "${PORT:-50051}" --prefill 1 --decode 1 \
      --model "${MODEL_DIR:-models/tiny}"
    ;;
  test)
    if [[ "${SIROCCO_SANITIZE:-}" == "thread" ]]; then
      # Debian's gRPC, abseil, protobuf and UCX are not built with TSan; see
      # tools/tsan.supp for what that hides and what it cannot.
      export TSAN_OPTIONS="suppressions=$PWD/tools/tsan.supp ${TSAN_OPTIONS:-}"
    fi
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900
    ;;
  *)
    echo "usage: tools/dev.sh run|test" >&2
    exit 2
    ;;
esac
