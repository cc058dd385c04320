// `sirocco tokenize`, `sirocco detokenize` and `sirocco make-tekken`: the
// tekken tokenizer and the instruct format from the command line, the
// contract the reference scripts (tests/reference/text/) check against
// mistral-common.
#pragma once

#include "absl/status/status.h"

namespace sirocco::tools {

// sirocco tokenize --tokenizer FILE (--text STRING | --chat REQUEST.json)
//   Prints {"ids": [...], "text": ...}: --text encodes plain text (no BOS/EOS,
//   special-token text stays text); --chat renders a ChatCompletionRequest as
//   the instruct tokenizer of the file's version does. "text" is the ids
//   decoded with special tokens kept.
absl::Status RunTokenize(int argc, char** argv);

// sirocco detokenize --tokenizer FILE --ids 1,2,3 [--special ignore|keep|raise]
//   Prints the decoded text and a newline (default: special tokens ignored,
//   as mistral-common's decode does).
absl::Status RunDetokenize(int argc, char** argv);

// sirocco make-tekken --base tekken_240911.json --version v7|v11|v13|v15 --out FILE
//   Writes the derived tekken file of a version mistral-common ships no file
//   for (engine/text/tekken_file.h).
absl::Status RunMakeTekken(int argc, char** argv);

}  // namespace sirocco::tools
