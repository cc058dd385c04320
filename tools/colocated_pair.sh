# Sourced by the serving benchmarks (router_overhead.sh,
# structured_overhead.sh): starts one colocated worker (role both) and a
# router in front of it on loopback, and stops both when the script exits.
#
#   check_pair_inputs NAME      (uses SIROCCO, BUILD_DIR, MODEL): exits with a
#                               message unless the binaries and the model exist
#   start_colocated_pair NAME   (uses BUILD_DIR, MODEL, KERNELS, OUT_DIR, TOKEN)
#
# start_colocated_pair sets WORKER_PORT and ROUTER_PORT; logs go to
# $OUT_DIR/worker.log and $OUT_DIR/router.log. NAME prefixes the error
# messages.

check_pair_inputs() {  # NAME
  for bin in "$SIROCCO" "$BUILD_DIR/router/sirocco-router" "$BUILD_DIR/decode/sirocco-decode"; do
    [[ -x "$bin" ]] || { echo "$1: no $bin; build first" >&2; exit 1; }
  done
  [[ -f "$MODEL/config.json" && -f "$MODEL/tekken.json" ]] ||
    { echo "$1: no model in $MODEL; run 'tools/dev.sh run' (or sirocco up) once" >&2; exit 1; }
}

PIDS=()
cleanup_pair() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

wait_port() {  # NAME FILE PID WHAT
  for _ in $(seq 1 600); do
    [[ -s "$2" ]] && { cat "$2"; return; }
    kill -0 "$3" 2>/dev/null || { echo "$1: $4 exited (see $OUT_DIR/$4.log)" >&2; exit 1; }
    sleep 0.2
  done
  echo "$1: $4 did not start" >&2
  exit 1
}

start_colocated_pair() {  # NAME
  trap cleanup_pair EXIT
  rm -f "$OUT_DIR"/*.port
  "$BUILD_DIR/decode/sirocco-decode" --role both --model "$MODEL" --kernels "$KERNELS" --listen 127.0.0.1:0 \
    --port-file "$OUT_DIR/worker.port" --metrics-port -1 --auth-token "$TOKEN" >"$OUT_DIR/worker.log" 2>&1 &
  PIDS+=($!)
  WORKER_PORT=$(wait_port "$1" "$OUT_DIR/worker.port" "${PIDS[-1]}" worker)
  "$BUILD_DIR/router/sirocco-router" --tokenizer "$MODEL/tekken.json" --listen 127.0.0.1:0 \
    --port-file "$OUT_DIR/router.port" --worker-token "$TOKEN" --colocated "127.0.0.1:$WORKER_PORT" \
    >"$OUT_DIR/router.log" 2>&1 &
  PIDS+=($!)
  ROUTER_PORT=$(wait_port "$1" "$OUT_DIR/router.port" "${PIDS[-1]}" router)
}
