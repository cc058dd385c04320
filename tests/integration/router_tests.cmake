# The router's integration tests (included once, from router/CMakeLists.txt or
# tests/integration/CMakeLists.txt; the guard makes a second include a no-op).
if(NOT TARGET router_service_test)
  # The router's service against in-process fake workers (real gRPC servers).
  add_executable(router_service_test ${CMAKE_CURRENT_LIST_DIR}/router_service_test.cc)
  sirocco_target(router_service_test)
  target_link_libraries(router_service_test PRIVATE sirocco::router_service GTest::gtest_main)
  target_compile_definitions(router_service_test PRIVATE SIROCCO_TEKKEN_DIR="${PROJECT_SOURCE_DIR}/third_party/tekken")
  sirocco_add_gtest(router_service_test TIMEOUT 120)
endif()

# The cluster as real processes: sirocco-router in front of sirocco-decode /
# sirocco-prefill workers (only where the worker binaries exist).
if(NOT TARGET router_cluster_test AND TARGET sirocco-decode AND TARGET sirocco-prefill)
  add_executable(router_cluster_test ${CMAKE_CURRENT_LIST_DIR}/router_test.cc)
  sirocco_target(router_cluster_test)
  target_link_libraries(router_cluster_test
    PRIVATE sirocco::worker sirocco::engine sirocco::text sirocco::image sirocco::protos nlohmann_json::nlohmann_json
    GTest::gtest_main)
  target_compile_definitions(router_cluster_test PRIVATE
    SIROCCO_ROUTER_BINARY="$<TARGET_FILE:sirocco-router>"
    SIROCCO_DECODE_BINARY="$<TARGET_FILE:sirocco-decode>"
    SIROCCO_PREFILL_BINARY="$<TARGET_FILE:sirocco-prefill>"
    SIROCCO_TEKKEN_DIR="${PROJECT_SOURCE_DIR}/third_party/tekken"
    SIROCCO_GOLDEN_IMAGES_DIR="${PROJECT_SOURCE_DIR}/tests/reference/golden_images")
  add_dependencies(router_cluster_test sirocco-router sirocco-decode sirocco-prefill)
  sirocco_add_gtest(router_cluster_test TIMEOUT 600)
endif()
