// `sirocco bench` (the load generator, tools/bench/) and
// `sirocco bench compare A.json B.json`. Flags are parsed here into the bench
// library's typed options; docs/bench.md documents them.
#pragma once

#include "absl/status/status.h"

namespace sirocco::tools {

// sirocco bench --target HOST:PORT [load and workload options] [--out FILE.json] [--html FILE.html]
// sirocco bench compare A.json B.json
// sirocco bench --help
absl::Status RunBench(int argc, char** argv);

}  // namespace sirocco::tools
