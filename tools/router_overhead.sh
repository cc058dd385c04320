#!/usr/bin/env bash
# What the router adds, per request and per token: one colocated worker
# (role both) with a router in front of it, and the same `sirocco bench` load
# sent once to the worker directly (--direct-worker: one Decode call with
# local_prefill, what the router sends a colocated worker) and once through the router, alternating,
# in one run on the same processes. Then `sirocco bench compare` of each pair.
#
#   tools/router_overhead.sh [BUILD_DIR]        (default: build)
#
# Per-request cost: TTFT through the router minus TTFT direct (1 output
# token: tokenisation-free Generate, admission, worker pick, two worker calls,
# the final message). Per-token cost: ITL through the router minus ITL direct
# (64 output tokens: one more hop, detokenisation and the delta message).
# Needs sirocco, sirocco-router and sirocco-decode built in BUILD_DIR and the
# embedded tiny model in models/tiny (`sirocco up` or `tools/dev.sh run` make
# it). Knobs: NUM_REQUESTS (default 200), INPUT_LEN (default 128), KERNELS
# (default avx2), OUT_DIR (default BUILD_DIR/router_overhead).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${1:-${BUILD_DIR:-build}}"
SIROCCO="$BUILD_DIR/tools/sirocco"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/router_overhead}"
NUM_REQUESTS="${NUM_REQUESTS:-200}"
INPUT_LEN="${INPUT_LEN:-128}"
KERNELS="${KERNELS:-avx2}"
MODEL=models/tiny
TOKEN="router-overhead-$$"

for bin in "$SIROCCO" "$BUILD_DIR/router/sirocco-router" "$BUILD_DIR/decode/sirocco-decode"; do
  [[ -x "$bin" ]] || { echo "router_overhead: no $bin; build first" >&2; exit 1; }
done
[[ -f "$MODEL/config.json" && -f "$MODEL/tekken.json" ]] ||
  { echo "router_overhead: no model in $MODEL; run 'tools/dev.sh run' (or sirocco up) once" >&2; exit 1; }
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.port

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {  # FILE PID NAME
  for _ in $(seq 1 600); do
    [[ -s "$1" ]] && { cat "$1"; return; }
    kill -0 "$2" 2>/dev/null || { echo "router_overhead: $3 exited (see $OUT_DIR/$3.log)" >&2; exit 1; }
    sleep 0.2
  done
  echo "router_overhead: $3 did not start" >&2
  exit 1
}

"$BUILD_DIR/decode/sirocco-decode" --role both --model "$MODEL" --kernels "$KERNELS" --listen 127.0.0.1:0 \
  --port-file "$OUT_DIR/worker.port" --metrics-port -1 --auth-token "$TOKEN" >"$OUT_DIR/worker.log" 2>&1 &
PIDS+=($!)
WORKER_PORT=$(wait_port "$OUT_DIR/worker.port" "${PIDS[-1]}" worker)
"$BUILD_DIR/router/sirocco-router" --tokenizer "$MODEL/tekken.json" --listen 127.0.0.1:0 \
  --port-file "$OUT_DIR/router.port" --worker-token "$TOKEN" --colocated "127.0.0.1:$WORKER_PORT" \
  >"$OUT_DIR/router.log" 2>&1 &
PIDS+=($!)
ROUTER_PORT=$(wait_port "$OUT_DIR/router.port" "${PIDS[-1]}" router)

COMMON=(--num-requests "$NUM_REQUESTS" --concurrency 1 --warmup 5 --seed 1 --input-len "$INPUT_LEN" --no-progress)
bench() {  # NAME OUTPUT_LEN [direct]
  local target=(--target "127.0.0.1:$ROUTER_PORT")
  [[ "${3:-}" == direct ]] && target=(--target "127.0.0.1:$WORKER_PORT" --direct-worker=true --worker-token "$TOKEN")
  "$SIROCCO" bench "${target[@]}" "${COMMON[@]}" --output-len "$2" --label "$1" --out "$OUT_DIR/$1.json" \
    >"$OUT_DIR/$1.txt"
}

start=$(date +%s)
bench direct_1 1 direct
bench router_1 1
bench direct_64 64 direct
bench router_64 64
for n in 1 64; do
  echo "== $n output token(s): A = direct to the worker, B = through the router"
  "$SIROCCO" bench compare "$OUT_DIR/direct_$n.json" "$OUT_DIR/router_$n.json" | tee "$OUT_DIR/compare_$n.txt"
done
python3 - "$OUT_DIR" <<'EOF'
import json, sys
d = sys.argv[1]
def agg(name):
    runs = json.load(open(f"{d}/{name}.json"))["runs"]
    return runs[0]["aggregates"]
for n, metric in (("1", "ttft_ms"), ("64", "itl_ms")):
    a, b = agg(f"direct_{n}")[metric], agg(f"router_{n}")[metric]
    print(f"router adds ({metric}, {n} output): median {b['median'] - a['median']:+.3f} ms "
          f"(direct {a['median']:.3f}, router {b['median']:.3f}); "
          f"mean {b['mean'] - a['mean']:+.3f} ms; p99 {b['p99'] - a['p99']:+.3f} ms")
EOF
echo "router_overhead: $(($(date +%s) - start)) s; results in $OUT_DIR"
