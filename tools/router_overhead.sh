#!/usr/bin/env bash
# What the router adds, per request and per token: one colocated worker
# (role both) with a router in front of it, and the same `sirocco bench` load
# sent straight to the worker (--direct-worker: one Decode call with
# local_prefill, what the router sends a colocated worker) and through the
# router, in alternating paired rounds on the same processes.
#
#   tools/router_overhead.sh [BUILD_DIR]        (default: build)
#
# Per-request cost: TTFT through the router minus TTFT direct (1 output
# token: tokenisation-free Generate, admission, worker pick, two worker calls,
# the final message). Per-token cost: ITL through the router minus ITL direct
# (64 output tokens: one more hop, detokenisation and the delta message).
# Needs sirocco, sirocco-router and sirocco-decode built in BUILD_DIR and the
# embedded tiny model in models/tiny (`sirocco up` or `tools/dev.sh run` make
# it). Knobs: ROUNDS (default 3), NUM_REQUESTS per run (default 100),
# INPUT_LEN (default 128), KERNELS (default avx2), OUT_DIR (default
# BUILD_DIR/router_overhead).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${1:-${BUILD_DIR:-build}}"
SIROCCO="$BUILD_DIR/tools/sirocco"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/router_overhead}"
NUM_REQUESTS="${NUM_REQUESTS:-100}"
ROUNDS="${ROUNDS:-3}"
INPUT_LEN="${INPUT_LEN:-128}"
KERNELS="${KERNELS:-avx2}"
MODEL=models/tiny
TOKEN="router-overhead-$$"

# shellcheck source=tools/colocated_pair.sh
source tools/colocated_pair.sh
check_pair_inputs router_overhead
mkdir -p "$OUT_DIR"

start_colocated_pair router_overhead

COMMON=(--num-requests "$NUM_REQUESTS" --concurrency 1 --warmup 5 --seed 1 --input-len "$INPUT_LEN" --no-progress)
bench() {  # NAME OUTPUT_LEN [direct]
  local target=(--target "127.0.0.1:$ROUTER_PORT")
  [[ "${3:-}" == direct ]] && target=(--target "127.0.0.1:$WORKER_PORT" --direct-worker=true --worker-token "$TOKEN")
  "$SIROCCO" bench "${target[@]}" "${COMMON[@]}" --output-len "$2" --label "$1" --out "$OUT_DIR/$1.json" \
    >"$OUT_DIR/$1.txt"
}

start=$(date +%s)
# Paired rounds, alternating direct and routed runs, so that drift of the
# shared machine hits both sides alike; the summary gives each round's
# difference of the medians and their mean.
for round in $(seq 1 "$ROUNDS"); do
  bench "direct_1_r$round" 1 direct
  bench "router_1_r$round" 1
  bench "direct_64_r$round" 64 direct
  bench "router_64_r$round" 64
done
for n in 1 64; do
  echo "== $n output token(s), round 1: A = direct to the worker, B = through the router"
  "$SIROCCO" bench compare "$OUT_DIR/direct_${n}_r1.json" "$OUT_DIR/router_${n}_r1.json" | tee "$OUT_DIR/compare_$n.txt"
done
python3 - "$OUT_DIR" "$ROUNDS" <<'EOF'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def agg(name):
    return json.load(open(f"{d}/{name}.json"))["runs"][0]["aggregates"]
for n, metric, what in (("1", "ttft_ms", "per request (TTFT, 1 output token)"),
                        ("64", "itl_ms", "per token (ITL, 64 output tokens)")):
    diffs, direct, routed = [], [], []
    for r in range(1, rounds + 1):
        a, b = agg(f"direct_{n}_r{r}")[metric]["median"], agg(f"router_{n}_r{r}")[metric]["median"]
        diffs.append(b - a)
        direct.append(a)
        routed.append(b)
    print(f"router adds {what}: {statistics.mean(diffs):+.3f} ms, mean of {rounds} paired rounds "
          f"(median differences {', '.join(f'{x:+.3f}' for x in diffs)}); "
          f"medians direct {statistics.mean(direct):.3f} ms, routed {statistics.mean(routed):.3f} ms")
EOF
echo "router_overhead: $(($(date +%s) - start)) s; results in $OUT_DIR"
