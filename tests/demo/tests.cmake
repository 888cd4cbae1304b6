# Demo-model data tooling (tools/demo): quick Python checks, run with Debian's
# python3. render_cpp / tokenize_cpp / eval run the dsv4 binary and report
# "skipped" until `dsv4 render` / `dsv4 tokenize` / `dsv4 parse` exist.
foreach(check determinism split render_golden tokenizer_golden tokenizer_train render_cpp
              tokenize_cpp eval)
  add_test(NAME demo_${check}
           COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/check_demo.py ${check}
                   --dsv4 $<TARGET_FILE:dsv4>)
  set_tests_properties(demo_${check} PROPERTIES LABELS demo TIMEOUT 120 SKIP_RETURN_CODE 77)
endforeach()

# Training driver + export + engine load on a tiny config (tools/demo/train.py, export_demo.py,
# compare_engine.py): a few dozen steps, well under a minute on two idle cores.
add_test(NAME demo_train_pipeline
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/test_train_pipeline.py
                 --dsv4 $<TARGET_FILE:dsv4>)
set_tests_properties(demo_train_pipeline PROPERTIES LABELS "demo;python" TIMEOUT 600
                     SKIP_RETURN_CODE 77)

# The bundled model itself (models/dsv4-demo): engine vs PyTorch teacher-forced, and the gates of
# docs/demo-model.md on held-out conversations of a seed neither training nor the release
# evaluation used (skipped while the folder is missing).
add_test(NAME demo_bundled_model
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/test_bundled_model.py
                 --dsv4 $<TARGET_FILE:dsv4>)
set_tests_properties(demo_bundled_model PROPERTIES LABELS "demo;python" TIMEOUT 900
                     SKIP_RETURN_CODE 77)
