// Replays tests/reference/text/chats/ (written by chat_reference.py from
// mistral-common's encode_chat_completion) through TokenizeChat for every
// tokenizer file: the same ids and text, or the same rejection (exception
// class, and for pydantic errors the location and type of the first error;
// for the others the reference's message). No Python needed.
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/text/instruct.h"
#include "engine/text/tekken_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string kChats = std::string(SIROCCO_TEXT_REFERENCE_DIR) + "/chats";

const nlohmann::json& Golden() {
  static const nlohmann::json* golden = new nlohmann::json(nlohmann::json::parse(ReadFile(kChats + "/golden.json")));
  return *golden;
}

// name -> the exact request text both sides read.
const std::map<std::string, std::string>& Requests() {
  static const auto* requests = [] {
    auto* out = new std::map<std::string, std::string>();
    std::istringstream lines(ReadFile(kChats + "/requests.jsonl"));
    for (std::string line; std::getline(lines, line);) {
      if (line.empty()) continue;
      const nlohmann::json row = nlohmann::json::parse(line);
      (*out)[row["name"].get<std::string>()] = row["json"].get<std::string>();
    }
    return out;
  }();
  return *requests;
}

absl::StatusOr<std::unique_ptr<Tekkenizer>> LoadTokenizer(const nlohmann::json& source) {
  if (source.contains("file")) {
    return Tekkenizer::Load(std::string(SIROCCO_TEKKEN_DIR) + "/" + source["file"].get<std::string>());
  }
  absl::StatusOr<TokenizerVersion> version = ParseTokenizerVersion(source["derived"].get<std::string>());
  if (!version.ok()) return version.status();
  return LoadDerivedTekken(std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json", *version);
}

std::vector<std::string> TokenizerNames() {
  std::vector<std::string> names;
  for (const auto& [name, source] : Golden()["tokenizers"].items()) names.push_back(name);
  return names;
}

void ExpectSameRejection(const absl::Status& status, const nlohmann::json& expected) {
  ASSERT_FALSE(status.ok()) << "expected " << expected.dump();
  const std::string cls = expected["class"].get<std::string>();
  EXPECT_EQ(ChatErrorClass(status), cls) << status;
  const std::string message(status.message());
  if (cls == "ValidationError") {
    const std::string loc_text = expected["loc"].get<std::string>();
    const std::string loc = loc_text.empty() ? "ChatCompletionRequest\n  " : "\n" + loc_text + "\n";
    const std::string type = "[type=" + expected["type"].get<std::string>() + "]";
    EXPECT_NE(message.find(loc), std::string::npos) << message << "\nexpected location " << loc;
    EXPECT_NE(message.find(type), std::string::npos) << message << "\nexpected " << type;
  } else {
    // The message after "Class: " holds the reference's (or its fixed phrase
    // where the reference quotes a Python repr).
    EXPECT_NE(message.find(cls + ": " + expected["key"].get<std::string>()), std::string::npos)
        << message << "\nexpected " << expected["message"].get<std::string>();
  }
}

class InstructGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(InstructGoldenTest, MatchesMistralCommon) {
  const std::string& name = GetParam();
  absl::StatusOr<std::unique_ptr<Tekkenizer>> tok = LoadTokenizer(Golden()["tokenizers"][name]);
  ASSERT_TRUE(tok.ok()) << tok.status();
  absl::StatusOr<std::unique_ptr<InstructFormat>> format = InstructFormat::Create(**tok);
  ASSERT_TRUE(format.ok()) << format.status();
  int rendered = 0, rejected = 0;
  for (const nlohmann::json& row : Golden()["results"]) {
    if (row["tokenizer"] != name) continue;
    const std::string request = row["request"].get<std::string>();
    SCOPED_TRACE(request + " / " + name);
    const auto it = Requests().find(request);
    ASSERT_NE(it, Requests().end());
    absl::StatusOr<ChatRequest> parsed = ParseChatRequest(it->second);
    absl::StatusOr<RenderedChat> got = parsed.ok() ? (*format)->Render(*parsed) : parsed.status();
    if (row.contains("error")) {
      ExpectSameRejection(got.status(), row["error"]);
      ++rejected;
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->ids, row["ids"].get<std::vector<std::int32_t>>());
    EXPECT_EQ(got->text, row["text"].get<std::string>());
    ++rendered;
  }
  EXPECT_GT(rendered + rejected, 0);
  std::cout << "[ " << name << " ] " << rendered << " rendered, " << rejected << " rejected\n";
}

INSTANTIATE_TEST_SUITE_P(AllTokenizers, InstructGoldenTest, ::testing::ValuesIn(TokenizerNames()),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

}  // namespace
}  // namespace sirocco::text
