// The subcommands of the `sirocco` CLI and the tiny flag parser they share.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::tools {

// --name value | --name=value | --boolean. Every flag must be consumed by
// the command (CheckAllUsed), so a typo is an error, not a silent default.
class Flags {
 public:
  static absl::StatusOr<Flags> Parse(int argc, char** argv, int first,
                                     const std::vector<std::string>& boolean_flags);
  std::optional<std::string> Get(const std::string& name);
  absl::Status CheckAllUsed() const;

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

// An image file as a client sends it: its bytes and the MIME type its magic
// bytes say (PNG, JPEG, WebP, GIF). NOT_FOUND / INVALID_ARGUMENT naming
// `flag` when it cannot be read or is none of those.
struct ImageFile {
  std::string data;
  std::string mime_type;
};
absl::StatusOr<ImageFile> ReadImageFile(const std::string& path, const std::string& flag);

absl::Status RunMakeModel(int argc, char** argv);
absl::Status RunLogits(int argc, char** argv);
absl::Status RunGenerate(int argc, char** argv);

}  // namespace sirocco::tools
