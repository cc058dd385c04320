#!/usr/bin/env bash
# Packs what a Sirocco configure + build needs from this machine's Debian 12
# -dev packages into one folder, third_party_prefix/ at the repository root,
# for the lent GPU machine (CUDA, CMake, PyTorch, but no Debian -dev packages).
# tests/gpu/run.sh expects it there; pass it to the device tool as
#   carry: ["third_party_prefix"]
#
# Usage: tests/gpu/pack_prefix.sh [DEST]   (default: <repo>/third_party_prefix)
#
# Layout (Debian's, so the packages' CMake config files, which locate
# everything relative to themselves, work unchanged):
#   include/{absl,gtest,gmock,benchmark,nlohmann}/, include/cblas.h
#   lib/x86_64-linux-gnu/{libabsl_*.so*, libgtest*.a, libgmock*.a,
#                         libbenchmark*.{so*,a}, libopenblas.so.0 + libblas.so,
#                         libgfortran.so.5, libquadmath.so.0}
#   lib/x86_64-linux-gnu/cmake/{absl,GTest,benchmark}/
#   share/cmake/nlohmann_json/
# BLAS is OpenBLAS (pthreads build, with its Fortran runtime): the engine test
# runs the CPU engine as the reference for whole-model logits on the `small`
# preset, which the netlib reference BLAS would take minutes for. The header
# is netlib's cblas.h (the same C ABI). The result is about 51 MB, under the
# device tool's 64 MiB carry limit. Its shared libraries need glibc >= 2.34 and a
# libstdc++ from GCC >= 12 (GLIBCXX_3.4.30) on the GPU machine (Debian 12,
# Ubuntu 22.04 and newer have both).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/third_party_prefix}
ARCH=x86_64-linux-gnu
SYS_LIB=/usr/lib/$ARCH
DEST_LIB=$DEST/lib/$ARCH

need() {
  for f in "$@"; do
    [[ -e $f ]] || { echo "pack_prefix: missing $f (install the Debian -dev package that has it)" >&2; exit 1; }
  done
}
need /usr/include/absl /usr/include/gtest /usr/include/gmock /usr/include/benchmark /usr/include/nlohmann \
  "$SYS_LIB/cmake/absl" "$SYS_LIB/cmake/GTest" "$SYS_LIB/cmake/benchmark" /usr/share/cmake/nlohmann_json \
  "/usr/include/$ARCH/cblas-netlib.h" "/usr/include/$ARCH/cblas_mangling.h" \
  "$SYS_LIB/openblas-pthread/libopenblas.so.0" "/lib/$ARCH/libgfortran.so.5" "/lib/$ARCH/libquadmath.so.0"

rm -rf "$DEST"
mkdir -p "$DEST/include" "$DEST_LIB/cmake" "$DEST/share/cmake"

# Headers.
cp -a /usr/include/absl /usr/include/gtest /usr/include/gmock /usr/include/benchmark /usr/include/nlohmann \
  "$DEST/include/"
cp "/usr/include/$ARCH/cblas-netlib.h" "$DEST/include/cblas.h"
cp "/usr/include/$ARCH/cblas_mangling.h" "$DEST/include/"

# CMake package configs.
cp -a "$SYS_LIB/cmake/absl" "$SYS_LIB/cmake/GTest" "$SYS_LIB/cmake/benchmark" "$DEST_LIB/cmake/"
cp -a /usr/share/cmake/nlohmann_json "$DEST/share/cmake/"

# Libraries: the shared absl and benchmark builds (with their SONAME links),
# the static gtest/gmock builds, netlib BLAS.
cp -a "$SYS_LIB"/libabsl_*.so* "$DEST_LIB/"
cp -a "$SYS_LIB"/libgtest.a "$SYS_LIB"/libgtest_main.a "$SYS_LIB"/libgmock.a "$SYS_LIB"/libgmock_main.a "$DEST_LIB/"
cp -a "$SYS_LIB"/libbenchmark.so* "$SYS_LIB"/libbenchmark_main.a "$DEST_LIB/"
cp -L "$SYS_LIB/openblas-pthread/libopenblas.so.0" "/lib/$ARCH/libgfortran.so.5" "/lib/$ARCH/libquadmath.so.0" \
  "$DEST_LIB/"
ln -s libopenblas.so.0 "$DEST_LIB/libblas.so"

# Every file the imported targets name must exist under the prefix: expand
# ${_IMPORT_PREFIX} as the config files compute it and check.
missing=0
check_targets() {  # $1: config dir, $2: how many levels up the prefix is
  local dir=$1 up=$2 prefix f
  # shellcheck disable=SC2016  # the literal text ${_IMPORT_PREFIX} is what is searched for
  local pattern='"${_IMPORT_PREFIX}/[^"]*"'
  prefix=$dir
  for ((i = 0; i < up; ++i)); do prefix=$(dirname "$prefix"); done
  while read -r f; do
    f=${f//\$\{_IMPORT_PREFIX\}/$prefix}
    if [[ ! -e $f ]]; then
      echo "pack_prefix: $dir names $f, which is missing" >&2
      missing=1
    elif [[ $(realpath "$f") != "$(realpath "$DEST")"/* ]]; then
      echo "pack_prefix: $dir names $f, outside the prefix" >&2
      missing=1
    fi
  done < <(grep -ho "$pattern" "$dir"/*.cmake | tr -d '"' | tr ';' '\n' | sort -u)
}
check_targets "$DEST_LIB/cmake/absl" 4
check_targets "$DEST_LIB/cmake/GTest" 4
check_targets "$DEST_LIB/cmake/benchmark" 4
check_targets "$DEST/share/cmake/nlohmann_json" 3
if ((missing)); then exit 1; fi

echo "pack_prefix: wrote $DEST ($(du -sh "$DEST" | cut -f1))"
