#!/usr/bin/env bash
# KV transfer next to ucx_perftest on the same transports, in one run.
#
#   tests/bench/transfer_vs_perftest.sh [BUILD_DIR] [--quick]
#
# Runs BUILD_DIR/tests/bench/transfer_bench (default BUILD_DIR: build), then
# ucx_perftest on 127.0.0.1 with one KV layer's bytes per message (8k tokens:
# 5,242,880 B; 64k tokens: 41,943,040 B): ucp_put_bw over shared memory,
# tag_bw over tcp (and over cma+tcp, the messages path with cma rendezvous),
# and prints one markdown table. --quick runs the 8k prompt only (the 64k
# runs need ~3.3 GB of RAM). Takes about a minute; numbers on a shared VM
# vary by +-30% between runs, so compare columns of the same run.
set -euo pipefail

build=build
quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) build=$arg ;;
  esac
done
bench="$build/tests/bench/transfer_bench"
[[ -x "$bench" ]] || { echo "no $bench; build the transfer_bench target first" >&2; exit 1; }
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (apt install ucx-utils)" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

filter='.'
sizes=(8k 64k)
if (( quick )); then filter='/8k'; sizes=(8k); fi

echo "== transfer_bench (filter '$filter')" >&2
"$bench" --benchmark_filter="$filter" --benchmark_out="$tmp/bench.json" \
  --benchmark_out_format=json >&2

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# perftest LABEL TLS TEST SIZE ITERS: appends "label tls test size MiB/s" to results.
perftest() {
  local label=$1 tls=$2 test=$3 size=$4 iters=$5 port
  port=$(free_port)
  UCX_TLS=$tls ucx_perftest -p "$port" >"$tmp/server.log" 2>&1 &
  server_pid=$!
  sleep 0.5
  local line
  line=$(UCX_TLS=$tls timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t "$test" -s "$size" \
           -n "$iters" -w 5 -f 2>&1 | tail -1) || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  # -f prints: iterations, latency 50%/avg/overall (us), bandwidth avg/overall (MiB/s), msg rates.
  local mibs
  mibs=$(awk '{print $6}' <<<"$line")
  [[ "$mibs" =~ ^[0-9.]+$ ]] || mibs=nan
  echo "$label $tls $test $size $mibs" >>"$tmp/perftest.txt"
  echo "   $label $test UCX_TLS=$tls size=$size: $mibs MiB/s" >&2
}

echo "== ucx_perftest on 127.0.0.1" >&2
: >"$tmp/perftest.txt"
for size_name in "${sizes[@]}"; do
  if [[ $size_name == 8k ]]; then size=5242880; n=200; n_slow=10; else size=41943040; n=30; n_slow=2; fi
  perftest "shm/$size_name" posix,sysv,cma,self ucp_put_bw "$size" "$n"
  perftest "shm/$size_name" posix,sysv,cma,self tag_bw "$size" "$n"
  perftest "cma+tcp/$size_name" cma,tcp,self tag_bw "$size" "$n"
  perftest "tcp/$size_name" tcp,self tag_bw "$size" "$n"
  perftest "tcp/$size_name" tcp,self ucp_put_bw "$size" "$n_slow"
done

python3 - "$tmp/bench.json" "$tmp/perftest.txt" <<'PY'
import json, sys
bench = {}
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    name = b["name"].split("/iterations")[0]          # KvTransfer/<backend>/<size>[/variant]
    bench[name] = (b.get("GB/s", float("nan")), b.get("label", ""))
perf = {}
for line in open(sys.argv[2]):
    label, tls, test, size, mibs = line.split()
    perf[(label, test)] = (float(mibs) * 1.048576 / 1000 if mibs != "nan" else float("nan"), tls)

def gb(x):
    return "n/a" if x != x else f"{x:.2f}"
rows = [
    # (transport, our benchmark row, perftest test)
    ("shm", "shm/{s}/allocated", "ucp_put_bw"),
    ("shm", "shm/{s}", "tag_bw"),
    ("cma+tcp", "cma+tcp/{s}", "tag_bw"),
    ("tcp", "tcp/{s}", "tag_bw"),
    ("tcp", "tcp-rma/{s}", "ucp_put_bw"),
]
print("| transport | prompt | transfer_bench row | path (kAuto) | GB/s | ucx_perftest (UCX_TLS) | GB/s | bench / perftest | memcpy GB/s | bench / memcpy |")
print("|---|---|---|---|---:|---|---:|---:|---:|---:|")
for size in ("8k", "64k"):
    memcpy = bench.get(f"KvTransfer/memcpy/{size}", (float("nan"), ""))[0]
    if memcpy != memcpy and not any(k[0].endswith(size) for k in perf):
        continue
    for transport, row, test in rows:
        key = "KvTransfer/" + row.format(s=size)
        ours, label = bench.get(key, (float("nan"), ""))
        theirs, tls = perf.get((f"{transport}/{size}", test), (float("nan"), "-"))
        if ours != ours and theirs != theirs:
            continue
        ratio = ours / theirs if theirs == theirs and theirs > 0 and ours == ours else float("nan")
        vs_memcpy = ours / memcpy if memcpy == memcpy and ours == ours else float("nan")
        print(f"| {transport} | {size} | {row.format(s=size)} | {label or '-'} | {gb(ours)} | "
              f"{test} ({tls}) | {gb(theirs)} | {gb(ratio)} | {gb(memcpy)} | {gb(vs_memcpy)} |")
PY
