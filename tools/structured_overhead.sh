#!/usr/bin/env bash
# What structured output costs per token: one colocated worker (role both)
# with a router in front of it, and the same `sirocco bench` Chat load sent
# as free text and with a strict JSON-schema response_format, in alternating
# paired rounds on the same processes.
#
#   tools/structured_overhead.sh [BUILD_DIR]        (default: build)
#
# The schema's fields are free strings and an integer, so the answer spends
# most tokens inside strings, where nearly every token is allowed and a token
# mask costs the most to compute (docs/structured-output.md). The difference
# of the ITL medians is the cost of the constraint per token (mask, masked
# sampling, advancing the matcher) at CONCURRENCY requests per step. Needs
# sirocco, sirocco-router and sirocco-decode built in BUILD_DIR and the
# embedded tiny model in models/tiny (`sirocco up` or `tools/dev.sh run` make
# it). Knobs: ROUNDS (default 3), NUM_REQUESTS per run (default 48),
# CONCURRENCY (default 8), OUTPUT_LEN (default 64), KERNELS (default avx2),
# SCHEMA (a schema file instead of the default), OUT_DIR (default
# BUILD_DIR/structured_overhead).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${1:-${BUILD_DIR:-build}}"
SIROCCO="$BUILD_DIR/tools/sirocco"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/structured_overhead}"
NUM_REQUESTS="${NUM_REQUESTS:-48}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-8}"
OUTPUT_LEN="${OUTPUT_LEN:-64}"
KERNELS="${KERNELS:-avx2}"
MODEL=models/tiny
TOKEN="structured-overhead-$$"

# shellcheck source=tools/colocated_pair.sh
source tools/colocated_pair.sh
check_pair_inputs structured_overhead
mkdir -p "$OUT_DIR"
if [[ -n "${SCHEMA:-}" ]]; then
  cp "$SCHEMA" "$OUT_DIR/schema.json"
else
  cat >"$OUT_DIR/schema.json" <<'EOF'
{"type": "object",
 "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                "notes": {"type": "array", "items": {"type": "string"}}},
 "required": ["name", "age", "notes"], "additionalProperties": false}
EOF
fi

start_colocated_pair structured_overhead

COMMON=(--target "127.0.0.1:$ROUTER_PORT" --api chat --num-requests "$NUM_REQUESTS" --concurrency "$CONCURRENCY"
        --warmup 4 --seed 1 --input-len 64 --output-len "$OUTPUT_LEN" --no-progress)
bench() {  # NAME [structured]
  local extra=(--ignore-eos true)
  [[ "${2:-}" == structured ]] && extra=(--json-schema "$OUT_DIR/schema.json")
  "$SIROCCO" bench "${COMMON[@]}" "${extra[@]}" --label "$1" --out "$OUT_DIR/$1.json" >"$OUT_DIR/$1.txt"
}

start=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  bench "text_r$round"
  bench "json_r$round" structured
done
echo "== round 1: A = free text, B = strict JSON schema"
"$SIROCCO" bench compare "$OUT_DIR/text_r1.json" "$OUT_DIR/json_r1.json" | tee "$OUT_DIR/compare.txt"
python3 - "$OUT_DIR" "$ROUNDS" <<'EOF'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def agg(name):
    return json.load(open(f"{d}/{name}.json"))["runs"][0]["aggregates"]
for metric in ("itl_ms", "tpot_ms", "ttft_ms"):
    text = [agg(f"text_r{r}")[metric]["median"] for r in range(1, rounds + 1)]
    js = [agg(f"json_r{r}")[metric]["median"] for r in range(1, rounds + 1)]
    diffs = [b - a for a, b in zip(text, js)]
    print(f"{metric} median: text {statistics.mean(text):.3f} ms, JSON schema {statistics.mean(js):.3f} ms, "
          f"ratio {statistics.mean(js) / statistics.mean(text):.3f} "
          f"(per-round differences {', '.join(f'{x:+.3f}' for x in diffs)})")
EOF
echo "structured_overhead: $(($(date +%s) - start)) s; results in $OUT_DIR"
