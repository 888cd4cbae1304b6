# tests/perf/test_roofline.cpp tests the measurement code of `dsv4 bench`,
# which lives in the dsv4_cli library (src/cli/roofline.cpp); the generic test
# rule links only the core, so add the CLI library here.
if(TARGET perf_test_roofline)
  target_link_libraries(perf_test_roofline PRIVATE dsv4_cli)
endif()
