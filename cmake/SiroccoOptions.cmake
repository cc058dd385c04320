# Compiler settings shared by every Sirocco target.
#
#   SIROCCO_WERROR    warnings are errors for project code (default ON)
#   SIROCCO_SANITIZE  "" | "address" (ASan+UBSan) | "thread" (TSan)

option(SIROCCO_WERROR "Treat warnings in project code as errors" ON)
set(SIROCCO_SANITIZE "" CACHE STRING "Sanitizer build: empty, address (ASan+UBSan) or thread (TSan)")
set_property(CACHE SIROCCO_SANITIZE PROPERTY STRINGS "" address thread)

add_library(sirocco_warnings INTERFACE)
target_compile_options(sirocco_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wcast-align -Wunused -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SIROCCO_WERROR}>>:-Werror>)

if(SIROCCO_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(SIROCCO_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT SIROCCO_SANITIZE STREQUAL "")
  message(FATAL_ERROR "SIROCCO_SANITIZE must be empty, 'address' or 'thread', not '${SIROCCO_SANITIZE}'")
endif()

# Helper: a project library/executable gets the warning set.
function(sirocco_target name)
  target_link_libraries(${name} PRIVATE sirocco_warnings)
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
endfunction()

# Registers a GoogleTest binary with ctest, one ctest entry per case. A case
# that calls GTEST_SKIP is reported by ctest as skipped, never as passed.
function(sirocco_add_gtest target)
  gtest_discover_tests(${target} DISCOVERY_TIMEOUT 60
    PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]" ${ARGN})
endfunction()
