#!/usr/bin/env bash
# The standard serving experiment: a colocated cluster (2 workers of role
# both) against a disaggregated one (1 prefill + 1 decode worker), on the same
# cores, one after the other, under the same long-prompt + short-prompt mix
# at the same Poisson offered load; then `sirocco bench compare`.
#
#   tools/bench_experiment.sh [BUILD_DIR]        (default: build)
#
# EXPERIMENT=prefix-cache runs the prefix-cache experiment instead: one
# disaggregated cluster (1 prefill + 1 decode, every request disaggregated:
# --local-prefill-max-tokens 0) with the workers' prefix cache off, then on, under requests that share one of 4 system prompts of 768
# tokens (then 64 tokens of their own, 32 output tokens); A = off, B = on.
# EXPERIMENT=prefix-routing: 2 prefill workers + 1 decode (every request
# disaggregated), the router's prefix-aware choice of prefill worker off,
# then on, under 16 shared
# prefixes of 1280 tokens: more than one prefill worker's pool (1024 blocks
# of 16 tokens) holds, but half of them fit; A = off, B = on.
# EXPERIMENT=multi-turn: 1 prefill + 1 decode worker under 8 synthetic
# conversations (each turn 64 new user tokens, answers of 32), the router
# always disaggregating (--local-prefill-max-tokens 0), then letting the
# decode worker prefill a turn whose earlier turns it holds (256); A = 0,
# B = 256.
#
# Needs `sirocco`, `sirocco-router`, `sirocco-decode` and `sirocco-prefill`
# built in BUILD_DIR. Uses the embedded tiny model in models/tiny (`sirocco up`
# makes it if absent). Writes OUT_DIR (default BUILD_DIR/bench_experiment):
# colocated.{json,html}, disaggregated.{json,html}, compare.txt. Knobs:
# PORT, NUM_REQUESTS, RATE, SLO_TTFT_MS, SLO_TPOT_MS.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${1:-${BUILD_DIR:-build}}"
SIROCCO="$BUILD_DIR/tools/sirocco"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/bench_experiment}"
PORT="${PORT:-50171}"
NUM_REQUESTS="${NUM_REQUESTS:-120}"
RATE="${RATE:-6}"
SLO_TTFT_MS="${SLO_TTFT_MS:-300}"
SLO_TPOT_MS="${SLO_TPOT_MS:-25}"

EXPERIMENT="${EXPERIMENT:-disagg}"

# Identical workload and load for both clusters. disagg: 3 short prompts (32
# tokens) for each long one (1024 tokens); prefix-cache: 4 shared 768-token
# prefixes, 64 tokens after them. 32 output tokens each (ignore_eos), seed 1.
case "$EXPERIMENT" in
  disagg) WORKLOAD=(--input-len "mix:32@0.75,1024@0.25") ;;
  prefix-cache) WORKLOAD=(--prefix-groups 4 --prefix-len 768 --input-len 64) ;;
  prefix-routing) WORKLOAD=(--prefix-groups 16 --prefix-len 1280 --input-len 64) ;;
  multi-turn) WORKLOAD=(--conversations 8 --input-len 64) ;;
  *) echo "bench_experiment: EXPERIMENT must be disagg, prefix-cache, prefix-routing or multi-turn" >&2; exit 1 ;;
esac
BENCH_ARGS=(--target "127.0.0.1:$PORT" --num-requests "$NUM_REQUESTS" --rate "$RATE" --arrival poisson --seed 1
  --warmup 2 "${WORKLOAD[@]}" --output-len 32
  --slo "ttft_ms=$SLO_TTFT_MS" --slo "tpot_ms=$SLO_TPOT_MS" --no-progress)

[[ -x "$SIROCCO" ]] || { echo "bench_experiment: no $SIROCCO; build first (ninja -C $BUILD_DIR sirocco sirocco-router sirocco-decode sirocco-prefill)" >&2; exit 1; }
mkdir -p "$OUT_DIR"

UP_PID=""
stop_cluster() {
  if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
    kill -INT "$UP_PID"
    wait "$UP_PID" || true
  fi
  UP_PID=""
}
trap stop_cluster EXIT

# run NAME [sirocco up flags...]: starts the cluster, waits until it serves,
# benchmarks it, stops it.
run() {
  local name="$1"
  shift
  local log="$OUT_DIR/$name.up.log"
  "$SIROCCO" up --port "$PORT" "$@" >"$log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 1 600); do
    grep -q "sirocco up: serving on" "$log" && break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$log" >&2; echo "bench_experiment: $name cluster exited" >&2; exit 1; }
    sleep 0.5
  done
  grep -q "sirocco up: serving on" "$log" || { echo "bench_experiment: $name cluster did not start" >&2; exit 1; }
  echo "== $name: sirocco up $*"
  "$SIROCCO" bench "${BENCH_ARGS[@]}" --label "$name" --out "$OUT_DIR/$name.json" --html "$OUT_DIR/$name.html"
  stop_cluster
}

start=$(date +%s)
if [[ "$EXPERIMENT" == disagg ]]; then
  run colocated --colocated 2
  run disaggregated --prefill 1 --decode 1
  echo "== compare (A = colocated, B = disaggregated)"
  "$SIROCCO" bench compare "$OUT_DIR/colocated.json" "$OUT_DIR/disaggregated.json" | tee "$OUT_DIR/compare.txt"
elif [[ "$EXPERIMENT" == multi-turn ]]; then
  run always_disaggregated --prefill 1 --decode 1 --local-prefill-max-tokens 0
  run local_follow_ups --prefill 1 --decode 1 --local-prefill-max-tokens 256
  echo "== compare (A = always disaggregated, B = follow-ups prefilled on decode)"
  "$SIROCCO" bench compare "$OUT_DIR/always_disaggregated.json" "$OUT_DIR/local_follow_ups.json" | tee "$OUT_DIR/compare.txt"
elif [[ "$EXPERIMENT" == prefix-routing ]]; then
  run prefix_routing_off --prefill 2 --decode 1 --local-prefill-max-tokens 0 --prefix-routing off
  run prefix_routing_on --prefill 2 --decode 1 --local-prefill-max-tokens 0 --prefix-routing on
  echo "== compare (A = prefix routing off, B = on)"
  "$SIROCCO" bench compare "$OUT_DIR/prefix_routing_off.json" "$OUT_DIR/prefix_routing_on.json" | tee "$OUT_DIR/compare.txt"
else
  run prefix_cache_off --prefill 1 --decode 1 --local-prefill-max-tokens 0 --prefix-caching off
  run prefix_cache_on --prefill 1 --decode 1 --local-prefill-max-tokens 0 --prefix-caching on
  echo "== compare (A = prefix cache off, B = on)"
  "$SIROCCO" bench compare "$OUT_DIR/prefix_cache_off.json" "$OUT_DIR/prefix_cache_on.json" | tee "$OUT_DIR/compare.txt"
fi
echo "bench_experiment: $(($(date +%s) - start)) s; results in $OUT_DIR"
