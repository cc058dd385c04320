#!/usr/bin/env bash
# The one prepared script for the lent GPU machine (one H200; CUDA, CMake and
# PyTorch installed, no Debian -dev packages). It configures Sirocco against a
# carried dependency prefix, builds only the CUDA test and benchmark targets
# (and what they link), runs every GPU test against the CPU reference and the
# CUDA kernel benchmarks, and writes everything under $OUT:
#   env.txt              nvidia-smi, nvcc, cmake, compiler versions
#   configure.log        build.log
#   cuda_ops_test.xml    JUnit XML (gtest)          cuda_ops_test.log     every CUDA op vs the CPU reference
#   cuda_engine_test.xml JUnit XML (gtest)          cuda_engine_test.log  the whole model on the GPU vs the CPU engine
#   bench_cuda.json      Google Benchmark JSON      bench_cuda.log
#   summary.txt          the summary printed at the end
#
# Before calling it, build the prefix on a Debian dev machine with
#   tests/gpu/pack_prefix.sh            # -> third_party_prefix/ (~47 MiB)
# and have the device tool carry it:
#   run(command="bash tests/gpu/run.sh", carry=["third_party_prefix"], timeout_s=540)
#
# Each step has its own time limit (configure 30 s, build 130 s, op tests 100 s,
# engine tests 160 s, benchmarks 60 s): 8 minutes at most, and a 16-core
# machine is expected to finish in about 5. A step cut off by its limit writes
# no XML/JSON, and the summary then says so. The configure builds only the
# kernels, the engine and the GPU tests (-DSIROCCO_BUILD_SERVICES=OFF).
# Exit status: 0 only if the build succeeded, every GPU test ran and passed
# (a skipped test means no usable device, which counts as a failure here) and
# no benchmark reported an error.
#
# Environment overrides (for dry runs elsewhere): OUT, SIROCCO_THIRD_PARTY_PREFIX,
# SIROCCO_GPU_BUILD_DIR, SIROCCO_CUDA_ARCHS (default 90a: H100/H200),
# SIROCCO_EXTRA_CMAKE_ARGS.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${SIROCCO_THIRD_PARTY_PREFIX:-$ROOT/third_party_prefix}
BUILD=${SIROCCO_GPU_BUILD_DIR:-$ROOT/build-gpu}
OUT=${OUT:-$BUILD/out}  # the device tool sets OUT; by hand, results stay in the (ignored) build folder
ARCHS=${SIROCCO_CUDA_ARCHS:-90a}
ARCH_LIB=$PREFIX/lib/x86_64-linux-gnu
JOBS=$(nproc 2>/dev/null || echo 8)
mkdir -p "$OUT"
START=$SECONDS

say() { echo "run.sh [$((SECONDS - START))s] $*"; }
fail() {
  say "FAILED: $*"
  echo "FAILED: $*" >>"$OUT/summary.txt"
  exit 1
}

# --- environment -------------------------------------------------------------
if [[ ! -d $ARCH_LIB/cmake/absl ]]; then
  fail "no dependency prefix at $PREFIX: run tests/gpu/pack_prefix.sh on a dev machine and carry third_party_prefix"
fi
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
{
  echo "== nvidia-smi"; nvidia-smi 2>&1 || true
  echo "== nvcc"; nvcc --version 2>&1 || true
  echo "== cmake"; cmake --version 2>&1 | head -1
  echo "== c++"; c++ --version 2>&1 | head -1
  echo "== cpus: $JOBS"
} >"$OUT/env.txt"
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"

# --- configure ---------------------------------------------------------------
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
# Package locations are given explicitly: the GPU machine's compiler may not
# be multiarch-aware, so CMake would not look under lib/x86_64-linux-gnu.
# Warnings are errors on the dev machines (CI); a different compiler here
# must not fail the build over a new warning.
# shellcheck disable=SC2206
EXTRA=(${SIROCCO_EXTRA_CMAKE_ARGS:-})
say "configure (archs $ARCHS)"
timeout 30 cmake -S "$ROOT" -B "$BUILD" "${GENERATOR[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DSIROCCO_BUILD_TESTS=ON -DSIROCCO_BUILD_BENCHMARKS=ON -DSIROCCO_BUILD_SERVICES=OFF -DSIROCCO_WERROR=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_LIBRARY_PATH="$ARCH_LIB" \
  -Dabsl_DIR="$ARCH_LIB/cmake/absl" -DGTest_DIR="$ARCH_LIB/cmake/GTest" \
  -Dbenchmark_DIR="$ARCH_LIB/cmake/benchmark" -Dnlohmann_json_DIR="$PREFIX/share/cmake/nlohmann_json" \
  -DBLA_VENDOR=Generic -DCBLAS_INCLUDE_DIR="$PREFIX/include" \
  "${EXTRA[@]}" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; fail "configure (see configure.log)"; }
grep -q "CUDA backend ON" "$OUT/configure.log" || { grep -i cuda "$OUT/configure.log"; fail "CUDA backend not enabled (nvcc not found?)"; }

# --- build -------------------------------------------------------------------
# The binaries' RUNPATH covers only their direct dependencies; the absl
# libraries those pull in are found through LD_LIBRARY_PATH. It is needed
# from the build on: gtest_discover_tests runs cuda_ops_test after linking.
export LD_LIBRARY_PATH=$ARCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "build cuda_ops_test cuda_engine_test bench_cuda (-j$JOBS)"
timeout 130 cmake --build "$BUILD" --target cuda_ops_test cuda_engine_test bench_cuda -j "$JOBS" >"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; fail "build (see build.log)"; }

# --- tests -------------------------------------------------------------------
say "cuda_ops_test"
timeout 100 "$BUILD/tests/gpu/cuda_ops_test" --gtest_output="xml:$OUT/cuda_ops_test.xml" >"$OUT/cuda_ops_test.log" 2>&1
TEST_RC=$?
tail -25 "$OUT/cuda_ops_test.log"
say "cuda_engine_test"
timeout 160 "$BUILD/tests/gpu/cuda_engine_test" --gtest_output="xml:$OUT/cuda_engine_test.xml" \
  >"$OUT/cuda_engine_test.log" 2>&1
ENGINE_RC=$?
tail -25 "$OUT/cuda_engine_test.log"
[[ $ENGINE_RC -ne 0 && $TEST_RC -eq 0 ]] && TEST_RC=$ENGINE_RC

# --- benchmarks --------------------------------------------------------------
say "bench_cuda"
timeout 60 "$BUILD/tests/gpu/bench_cuda" --benchmark_min_time=0.05 --benchmark_counters_tabular=true \
  --benchmark_out="$OUT/bench_cuda.json" --benchmark_out_format=json >"$OUT/bench_cuda.log" 2>&1
BENCH_RC=$?
cat "$OUT/bench_cuda.log"

# --- summary -----------------------------------------------------------------
python3 - "$OUT" "$TEST_RC" "$BENCH_RC" <<'PY' | tee "$OUT/summary.txt"
import json, sys, xml.etree.ElementTree as ET
out, test_rc, bench_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = test_rc == 0 and bench_rc == 0
print(f"gpu tests exit {test_rc}, bench_cuda exit {bench_rc}")
try:
    counts = {"run": 0, "passed": 0, "failed": 0, "skipped": 0}
    cases = [c for name in ("cuda_ops_test", "cuda_engine_test")
             for c in ET.parse(f"{out}/{name}.xml").getroot().iter("testcase")]
    for c in cases:
        counts["run"] += 1
        if c.find("failure") is not None or c.find("error") is not None:
            counts["failed"] += 1
            print(f"  FAILED {c.get('classname')}.{c.get('name')}")
        elif c.get("result") == "skipped" or c.find("skipped") is not None:
            counts["skipped"] += 1
            print(f"  SKIPPED {c.get('classname')}.{c.get('name')}")
        else:
            counts["passed"] += 1
    print("tests: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    ok = ok and counts["failed"] == 0 and counts["skipped"] == 0 and counts["run"] > 0
except Exception as e:  # no XML: the binary crashed or timed out
    print(f"tests: no readable JUnit XML ({e})")
    ok = False
try:
    bench = json.load(open(f"{out}/bench_cuda.json"))
    errors = 0
    for b in bench.get("benchmarks", []):
        if b.get("error_occurred"):
            errors += 1
            print(f"  {b['name']}: ERROR {b.get('error_message')}")
            continue
        keys = [k for k in ("TB/s", "TFLOP/s", "peak_frac") if k in b]
        vals = "  ".join(f"{k}={b[k]:.3g}" for k in keys)
        print(f"  {b['name']:<48} {b['real_time']:>10.1f} {b['time_unit']}  {vals}")
    print(f"benchmarks: {len(bench.get('benchmarks', []))}, errors {errors}")
    ok = ok and errors == 0
except Exception as e:
    print(f"benchmarks: no readable JSON ({e})")
    ok = False
print("RESULT: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
RC=${PIPESTATUS[0]}
say "done, exit $RC"
exit "$RC"
