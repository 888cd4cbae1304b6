# Python reference model (tools/v4ref) checked against the golden data of the official reference.
# Runs with Debian's /usr/bin/python3 (python3-torch + python3-numpy); exit code 77 = skipped.
set(DSV4_PYTHON /usr/bin/python3)
if(EXISTS ${DSV4_PYTHON})
  add_test(NAME tools_v4ref_units
           COMMAND ${DSV4_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_v4ref_units.py
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/tools)
  set_tests_properties(tools_v4ref_units PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       LABELS python ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/tools")
  add_test(NAME tools_v4ref_golden
           COMMAND ${DSV4_PYTHON} -m v4ref.check_golden ${PROJECT_SOURCE_DIR}/tests/data/golden/tiny-a
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/tools)
  set_tests_properties(tools_v4ref_golden PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 900
                       LABELS python ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/tools")
else()
  add_test(NAME tools_v4ref_golden
           COMMAND ${CMAKE_COMMAND} -E echo "SKIP: ${DSV4_PYTHON} not found (install python3-torch)")
  set_tests_properties(tools_v4ref_golden PROPERTIES SKIP_REGULAR_EXPRESSION "SKIP:")
endif()
