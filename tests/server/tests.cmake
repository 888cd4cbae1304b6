# The official OpenAI (openai@6) and Anthropic (@anthropic-ai/sdk) JS clients
# driving `dsv4 serve` over a `dsv4 synth --like tiny` checkpoint with the V4
# tokenizer (tests/server/js, node's built-in test runner). .ci/run installs
# the pinned packages with `npm ci` before configuring.
find_program(DSV4_NODE node)
set(DSV4_SERVER_JS ${CMAKE_CURRENT_LIST_DIR}/js)
if(DSV4_NODE AND EXISTS ${DSV4_SERVER_JS}/node_modules/openai
   AND EXISTS ${DSV4_SERVER_JS}/node_modules/@anthropic-ai/sdk)
  add_test(NAME server_js_clients COMMAND ${DSV4_NODE} --test
           WORKING_DIRECTORY ${DSV4_SERVER_JS})
  set_tests_properties(server_js_clients PROPERTIES
    TIMEOUT 1200 LABELS js
    ENVIRONMENT "DSV4_BINARY=$<TARGET_FILE:dsv4>;DSV4_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
else()
  add_test(NAME server_js_clients
           COMMAND ${CMAKE_COMMAND} -E echo
                   "SKIP: node or tests/server/js/node_modules missing (run npm ci in tests/server/js)")
  set_tests_properties(server_js_clients PROPERTIES SKIP_REGULAR_EXPRESSION "SKIP:" LABELS js)
endif()

# Real coding agents, unchanged (tests/server/agents): Claude Code and OpenCode
# each complete a turn against dsv4 serve. .ci/run installs them with `npm ci`
# in tests/server/agents. DSV4_AGENTS_MODEL=DIR runs them against another
# checkpoint (e.g. the demo model) instead of a tiny synth one.
set(DSV4_SERVER_AGENTS ${CMAKE_CURRENT_LIST_DIR}/agents)
if(DSV4_NODE AND EXISTS ${DSV4_SERVER_AGENTS}/node_modules/@anthropic-ai/claude-code
   AND EXISTS ${DSV4_SERVER_AGENTS}/node_modules/opencode-linux-x64)
  add_test(NAME server_coding_agents COMMAND ${DSV4_NODE} --test --test-concurrency=1
           WORKING_DIRECTORY ${DSV4_SERVER_AGENTS})
  set_tests_properties(server_coding_agents PROPERTIES
    TIMEOUT 1800 LABELS "js;agents"
    ENVIRONMENT "DSV4_BINARY=$<TARGET_FILE:dsv4>;DSV4_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  # The same agents against the bundled demo model (a trained model: it ends its turns itself,
  # after some reasoning, so the output limit leaves room for that; the server samples at the
  # platform's default temperature 1, so 16 tokens were sometimes too few).
  if(EXISTS ${PROJECT_SOURCE_DIR}/models/dsv4-demo/config.json)
    add_test(NAME server_coding_agents_demo COMMAND ${DSV4_NODE} --test --test-concurrency=1
             WORKING_DIRECTORY ${DSV4_SERVER_AGENTS})
    set_tests_properties(server_coding_agents_demo PROPERTIES
      TIMEOUT 1800 LABELS "js;agents"
      ENVIRONMENT "DSV4_BINARY=$<TARGET_FILE:dsv4>;DSV4_SOURCE_DIR=${PROJECT_SOURCE_DIR};DSV4_AGENTS_MODEL=${PROJECT_SOURCE_DIR}/models/dsv4-demo;DSV4_AGENTS_MAX_TOKENS=1024")
  endif()
else()
  add_test(NAME server_coding_agents
           COMMAND ${CMAKE_COMMAND} -E echo
                   "SKIP: node or tests/server/agents/node_modules missing (run npm ci in tests/server/agents)")
  set_tests_properties(server_coding_agents PROPERTIES SKIP_REGULAR_EXPRESSION "SKIP:"
                       LABELS "js;agents")
endif()

# The platform documentation's request examples replayed with curl (status and
# response shape), and dsv4 serve's startup output. Needs curl and node.
add_test(NAME server_curl_replay
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/curl_replay.sh $<TARGET_FILE:dsv4> ${PROJECT_SOURCE_DIR})
set_tests_properties(server_curl_replay PROPERTIES TIMEOUT 600 SKIP_REGULAR_EXPRESSION "SKIP:")
