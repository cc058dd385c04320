// The shared main() of sirocco-prefill and sirocco-decode: flags → options →
// model, engine, gRPC server (Worker + health + reflection), metrics endpoint;
// runs until SIGTERM/SIGINT, then drains (health NOT_SERVING, new calls
// UNAVAILABLE, in-flight Prefill/Decode calls finish) and exits 0.
//
// Flags (--name=value or --name value):
//   --role prefill|decode|both   default: the binary's own role
//   --model DIR                  checkpoint folder (config.json + safetensors); default models/tiny
//   --listen HOST:PORT           gRPC address; default 0.0.0.0:50061 (port 0: any free port)
//   --port-file PATH             write the bound gRPC port there once serving
//   --metrics-port N             Prometheus /metrics, /healthz, /readyz; default 9464; -1: off; 0: any
//   --metrics-port-file PATH     write the bound metrics port there
//   --worker-id ID               default: role@host:port
//   --auth-token TOKEN           worker API token; default $SIROCCO_WORKER_TOKEN; empty: no check
//   --num-blocks N               KV pool blocks; default 1024
//   --block-size N               tokens per block; default 16
//   --max-tokens-per-step N      default 512
//   --max-seqs-per-step N        default 64
//   --max-waiting N              queued requests before refusing; default 0 (no limit)
//   --image-threads N            threads that decode and resize prompts' images off
//                                the engine thread; default 2; 0: on the engine thread
//   --vision-layers-per-step N   vision encoder layers a step runs (an image's encoder
//                                spread over steps); default 4; 0: all at once
//   --kernels ref|avx2|cuda      default avx2
//   --weights f32|bf16|fp8       how weight matrices are held; default f32
//   --prefix-caching on|off      reuse the KV of full blocks across requests
//                                with the same leading tokens; default on
//   --drain-grace-s N            longest wait for in-flight calls after SIGTERM; default 25
//   --ucx-host IP                where the KV transfer agent listens; default 127.0.0.1
//   --ucx-transports cma-tcp|tcp|shm|default   UCX_TLS profile; default cma-tcp
//   --reservation-ttl-ms N       Reserve's ttl_ms 0 means this; default 30000
//   --kv-transfer-timeout-ms N   a KV transfer not complete by then fails (the
//                                router then falls back); default 60000
//   --kv-quarantine-ms N         a reservation dropped before its Decode (cancel,
//                                expiry, fallback) keeps its blocks this long, so
//                                writes already in flight cannot land in another
//                                request's KV; default 1000 (prefill: 0)
//   --test-kv-fault none|fail-first|delay-ms:N   tests only: fail the first
//                                outgoing KV write, or delay every write by N ms
//
// Thread-safety: call once, from main.
#pragma once

#include "decode/worker_service.h"

namespace sirocco::decode {

int WorkerMain(int argc, char** argv, WorkerRole default_role);

}  // namespace sirocco::decode
