// The JSON-Schema check mistral-common applies to tool parameters and
// response-format schemas: `jsonschema.Draft7Validator.check_schema`, i.e.
// the schema must itself validate against the Draft 7 meta-schema (with the
// "regex" format checked). Only the meta-schema is checked; nothing is
// validated against the schema.
//
// Pure function: safe to use from any thread.
#pragma once

#include <optional>
#include <string>

#include "engine/text/instruct_json.h"

namespace sirocco::text {

// nullopt when `schema` is a valid Draft 7 schema, else the message
// jsonschema's best match would carry (e.g. "'strin' is not valid under any
// of the given schemas", "[] is not of type 'object'").
std::optional<std::string> Draft7SchemaError(const PyValue& schema);

}  // namespace sirocco::text
