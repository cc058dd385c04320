// `sirocco up` (a local cluster: router + workers as child processes on
// loopback) and `sirocco chat` (a streaming client of the public API).
#pragma once

#include "absl/status/status.h"

namespace sirocco::tools {

// sirocco up [--port P] [--colocated K] [--prefill N --decode M] [--model DIR] [--host H]
absl::Status RunUp(int argc, char** argv);
// sirocco chat [--target HOST:PORT] [--reasoning-effort none|high] [--max-tokens N]
//              [--temperature T] [--seed S] "prompt"
absl::Status RunChat(int argc, char** argv);

}  // namespace sirocco::tools
