// `sirocco`: the command-line entry point. Each subcommand parses its flags
// into the engine's typed options here, in main, and nowhere else.
//
//   sirocco make-model --preset NAME|--config FILE --seed N --out DIR [--dtype bf16|f16|f32] [--config-only]
//   sirocco logits     --model DIR --tokens 1,22,333 --out FILE.npy [--incremental]
//   sirocco generate   --model DIR --tokens 1,22,333 --max-tokens N [sampling flags]
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tools/sirocco/bench_command.h"
#include "tools/sirocco/cluster_commands.h"
#include "tools/sirocco/commands.h"
#include "tools/sirocco/text_commands.h"

namespace sirocco::tools {
namespace {

constexpr const char* kUsage = R"(sirocco: disaggregated serving of Mistral Small 4-class models

Usage:
  sirocco up [--port P] [--colocated K | --prefill N --decode M] [--model DIR]
             [--kernels ref|avx2|cuda] [--weights f32|bf16|fp8] [--prefix-caching on|off]
             [--prefix-routing on|off] [--local-prefill-max-tokens N] [--image-threads N]
             [--vision-layers-per-step N]
      Starts a local cluster (router + workers as separate processes) on loopback with the
      embedded default model (made on first run if absent), prints the endpoint; Ctrl-C stops it.
  sirocco chat [--target HOST:PORT] [--reasoning-effort none|high] [--max-tokens N] [--image FILE]
               [--format json | --json-schema FILE [--strict on|off]] "prompt"
      Streams a chat answer from a running router, reasoning and answer printed apart.
      --format json constrains the answer to a JSON object or array; --json-schema to JSON
      for the schema in FILE, enforced token by token unless --strict off
      (docs/structured-output.md).
  sirocco bench [--target HOST:PORT] [load and workload options] [--out FILE.json] [--html FILE.html]
  sirocco bench compare A.json B.json
      Load generator: closed or open loop (Poisson, gamma, constant, rate sweeps) over Generate
      or Chat streams; TTFT, TPOT, ITL, E2E, throughput, goodput. `sirocco bench --help` lists
      every option; docs/bench.md defines the metrics.
  sirocco make-model (--preset NAME | --config FILE) --out DIR [--seed N] [--dtype bf16|f16|f32]
                     [--config-only]
      Writes a checkpoint with seeded random weights. Presets: tiny, tiny-noqlora, small,
      mistral-small-4 (119B: only with --config-only, which writes config.json alone).
  sirocco logits --model DIR --tokens 1,22,333 --out FILE.npy [--incremental]
                 [--attention expanded|absorbed] [--backend ref|avx2|cuda] [--weights f32|bf16|fp8]
      Writes float32 logits [n_tokens, vocab] of every position as a NumPy .npy file. Without
      --incremental the sequence is one prefill; with it the first token is prefilled and each
      next one decoded against the cache.
  sirocco generate --model DIR --tokens 1,22,333 --max-tokens N [--temperature T] [--top-p P]
                   [--top-k K] [--min-p P] [--repetition-penalty R] [--presence-penalty P]
                   [--frequency-penalty F] [--seed S] [--logprobs N] [--stop-token-ids 2,3]
                   [--ignore-eos] [--attention expanded|absorbed] [--backend ref|avx2|cuda] [--weights f32|bf16|fp8]
      Prints one JSON object: {"token_ids": [...], "finish_reason": "stop"|"length", ...}.
      Defaults: temperature 0 (greedy), top-p 1, top-k 0 (off), min-p 0, penalties off.
  sirocco tokenize --tokenizer FILE (--text STRING | --chat REQUEST.json)
      Prints {"ids": [...], "text": ...}: --text encodes plain text without BOS/EOS; --chat
      renders a mistral-common ChatCompletionRequest JSON as the file's instruct version does.
  sirocco detokenize --tokenizer FILE --ids 1,2,3 [--special ignore|keep|raise]
      Prints the decoded text.
  sirocco make-tekken --base tekken_240911.json --version v7|v11|v13|v15 --out FILE
      Writes the tekken file of a version mistral-common ships no file for.
)";

}  // namespace

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, int first, const std::vector<std::string>& boolean_flags) {
  Flags f;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::string value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (std::find(boolean_flags.begin(), boolean_flags.end(), name) != boolean_flags.end()) {
      value = "true";
    } else {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    f.values_[name] = value;
  }
  return f;
}

std::optional<std::string> Flags::Get(const std::string& name) {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  used_.insert(name);
  return it->second;
}

absl::Status Flags::CheckAllUsed() const {
  for (const auto& [name, value] : values_) {
    if (!used_.contains(name)) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
  }
  return absl::OkStatus();
}

}  // namespace sirocco::tools

int main(int argc, char** argv) {
  using namespace sirocco::tools;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  absl::Status status;
  if (command == "make-model") {
    status = RunMakeModel(argc, argv);
  } else if (command == "logits") {
    status = RunLogits(argc, argv);
  } else if (command == "generate") {
    status = RunGenerate(argc, argv);
  } else if (command == "tokenize") {
    status = RunTokenize(argc, argv);
  } else if (command == "detokenize") {
    status = RunDetokenize(argc, argv);
  } else if (command == "make-tekken") {
    status = RunMakeTekken(argc, argv);
  } else if (command == "up") {
    status = RunUp(argc, argv);
  } else if (command == "chat") {
    status = RunChat(argc, argv);
  } else if (command == "bench") {
    status = RunBench(argc, argv);
  } else {
    std::fprintf(stderr, "sirocco: unknown command '%s'\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "sirocco %s: %s\n", command.c_str(), std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
