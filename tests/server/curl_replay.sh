#!/usr/bin/env bash
# The DeepSeek platform documentation's request examples (as collected in
# api-surface.md §3-§9), replayed with curl against `dsv4 serve` on a
# random-weight `dsv4 synth --like tiny` checkpoint with the V4 tokenizer: the
# base URL is the only change, plus max_tokens lowered to a few tokens where
# the example asks for thousands (random weights never stop early). Checks the
# status, the content type and the response shape; also the startup output
# (weight-loading progress, URL, model, context limit).
#
# usage: curl_replay.sh DSV4_BINARY SOURCE_DIR
set -euo pipefail
BIN=$1
SRC=$2
for tool in curl node; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: $tool is not installed"
    exit 0
  fi
done

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

"$BIN" synth --like tiny --tokenizer "$SRC/models/deepseek-v4-tokenizer" --out "$WORK/model" >/dev/null

KEY=sk-curl-replay-0001
BROKE=sk-curl-replay-broke
"$BIN" serve --model "$WORK/model" --port 0 --api-key "$KEY" --api-key "$BROKE" \
  --budget "$BROKE=0" >"$WORK/out.txt" 2>"$WORK/err.txt" &
SERVER_PID=$!
for _ in $(seq 1 600); do
  grep -q 'ready in' "$WORK/out.txt" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "dsv4 serve exited: $(cat "$WORK/out.txt" "$WORK/err.txt")"
  sleep 0.2
done
PORT=$(sed -n 's|.*http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$WORK/out.txt" | head -1)
[ -n "$PORT" ] || fail "no URL in the startup output: $(cat "$WORK/out.txt")"
BASE=http://127.0.0.1:$PORT

# Startup: plain progress lines on a non-TTY stderr, then the model and the
# context limit (read from the checkpoint's config, not assumed).
grep -q 'loading weights: 0%' "$WORK/err.txt" || fail "no progress start: $(cat "$WORK/err.txt")"
grep -q 'loading weights: 100%' "$WORK/err.txt" || fail "no progress end: $(cat "$WORK/err.txt")"
CTX=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).max_position_embeddings)' \
  "$WORK/model/config.json")
grep -q "model $WORK/model, context $CTX tokens" "$WORK/out.txt" ||
  fail "no model/context line: $(cat "$WORK/out.txt")"

# request NAME METHOD PATH [BODY] [curl options...]: writes $WORK/NAME.{body,status,type}.
request() {
  local name=$1 method=$2 path=$3 body=${4:-}
  shift 4 || shift $#
  local args=(-sS -N -X "$method" "$BASE$path" -o "$WORK/$name.body"
    -w '%{http_code} %{content_type}\n' -H "Authorization: Bearer ${REQ_KEY:-$KEY}")
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
  read -r status type < <(curl "${args[@]}" "$@")
  echo "$status" >"$WORK/$name.status"
  echo "$type" >"$WORK/$name.type"
  echo "  $method $path -> $status ($type)"
}

# expect NAME STATUS 'JS condition on r (the parsed body) or s (the raw body)'
expect() {
  local name=$1 status=$2 cond=$3
  [ "$(cat "$WORK/$name.status")" = "$status" ] ||
    fail "$name: status $(cat "$WORK/$name.status"), expected $status: $(head -c 2000 "$WORK/$name.body")"
  node -e '
    const fs = require("fs");
    const s = fs.readFileSync(process.argv[1], "utf8");
    let r = null;
    try { r = JSON.parse(s); } catch (e) {}
    // SSE: the data payloads, and the event names.
    const data = s.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
    const events = s.split("\n").filter((l) => l.startsWith("event: ")).map((l) => l.slice(7));
    const chunks = data.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d));
    if (!(eval(process.argv[2]))) {
      console.error(`condition failed: ${process.argv[2]}\n${s.slice(0, 3000)}`);
      process.exit(1);
    }' "$WORK/$name.body" "$cond" || fail "$name"
}

echo "GET /models, /user/balance"
request models GET /models
expect models 200 'r.object === "list" && ["deepseek-v4-flash", "deepseek-v4-pro"].every((id) => r.data.some((m) => m.id === id && m.object === "model"))'
request balance GET /user/balance
expect balance 200 'typeof r.is_available === "boolean" && r.balance_infos.every((b) => typeof b.currency === "string" && typeof b.total_balance === "string")'

echo "POST /chat/completions: the typical V4 request (max_tokens 4096 -> 6)"
TYPICAL='{
  "model": "deepseek-v4-pro",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"}
  ],
  "thinking": {"type": "enabled"},
  "reasoning_effort": "high",
  "max_tokens": 6,
  "response_format": {"type": "text"},
  "stop": null,
  "stream": false,
  "stream_options": null,
  "temperature": 1,
  "top_p": 1,
  "tools": null,
  "tool_choice": "none",
  "logprobs": false,
  "top_logprobs": null
}'
request typical POST /chat/completions "$TYPICAL"
expect typical 200 'r.object === "chat.completion" && r.model === "deepseek-v4-pro" && typeof r.id === "string" && typeof r.created === "number" && typeof r.system_fingerprint === "string" && r.choices[0].index === 0 && r.choices[0].message.role === "assistant" && typeof r.choices[0].message.content === "string" && typeof r.choices[0].message.reasoning_content === "string" && ["stop", "length"].includes(r.choices[0].finish_reason) && r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens && r.usage.prompt_cache_hit_tokens + r.usage.prompt_cache_miss_tokens === r.usage.prompt_tokens && typeof r.usage.completion_tokens_details.reasoning_tokens === "number" && typeof r.usage.prompt_tokens_details.cached_tokens === "number"'
[ "$(cat "$WORK/typical.type")" = "application/json" ] || fail "typical: content type"

echo "POST /chat/completions: the same, streamed with usage"
request stream POST /chat/completions "$(node -e 'const b = JSON.parse(process.argv[1]); b.stream = true; b.stream_options = {include_usage: true}; console.log(JSON.stringify(b))' "$TYPICAL")"
expect stream 200 'data[data.length - 1] === "[DONE]" && events.length === 0 && chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0].id && c.created === chunks[0].created) && chunks[0].choices[0].delta.role === "assistant" && chunks.some((c) => c.choices.length && c.choices[0].finish_reason) && chunks[chunks.length - 1].usage.completion_tokens >= 1'
case "$(cat "$WORK/stream.type")" in text/event-stream*) ;; *) fail "stream: content type $(cat "$WORK/stream.type")" ;; esac

echo "POST /beta/chat/completions: chat prefix completion (max_tokens added: 6)"
request prefix POST /beta/chat/completions '{"model":"deepseek-v4-pro",
 "messages":[{"role":"user","content":"Please write quick sort code"},
             {"role":"assistant","content":"```python\n","prefix":true}],
 "stop":["```"], "max_tokens": 6}'
expect prefix 200 'r.object === "chat.completion" && typeof r.choices[0].message.content === "string" && !r.choices[0].message.content.includes("```")'

echo "POST /beta/completions: FIM (max_tokens 128 -> 6)"
request fim POST /beta/completions '{"model":"deepseek-v4-pro","prompt":"def fib(a):","suffix":"    return fib(a-1) + fib(a-2)","max_tokens":6}'
expect fim 200 'r.object === "text_completion" && r.model === "deepseek-v4-pro" && typeof r.choices[0].text === "string" && ["stop", "length"].includes(r.choices[0].finish_reason) && r.usage.completion_tokens >= 1'

echo "POST /anthropic/v1/messages?beta=true: the Claude Code example (max_tokens 32000 -> 6)"
CLAUDE='{
  "model": "deepseek-v4-pro",
  "max_tokens": 6,
  "system": [{"type":"text","text":"You are a helpful assistant.","cache_control":{"type":"ephemeral"}}],
  "messages": [
    {"role":"user","content":[{"type":"text","text":"Read README.md"}]},
    {"role":"assistant","content":[
      {"type":"thinking","thinking":"I should read the file.","signature":"91cfbb94-554b-4136-8e21-fa02280d56ed"},
      {"type":"tool_use","id":"toolu_01","name":"read_file","input":{"path":"README.md"}}]},
    {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"hello"}]}
  ],
  "tools": [{"name":"read_file","description":"Read a file","input_schema":{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}}],
  "tool_choice": {"type":"auto"},
  "thinking": {"type":"enabled","budget_tokens":31999},
  "output_config": {"effort":"max"},
  "metadata": {"user_id":"user_abc"},
  "stream": true
}'
request claude POST '/anthropic/v1/messages?beta=true' "$CLAUDE" -H "x-api-key: $KEY" \
  -H 'anthropic-version: 2023-06-01' -H 'anthropic-beta: claude-code-20250219,effort-2025-11-24'
expect claude 200 'events[0] === "message_start" && events.includes("ping") && events[events.length - 1] === "message_stop" && events.includes("message_delta") && chunks[0].message.model === "deepseek-v4-pro" && chunks.every((c, i) => c.type === events[i]) && chunks.find((c) => c.type === "message_delta").usage.output_tokens >= 1'
echo "POST /anthropic/v1/messages: the same, not streamed"
request claude_ns POST /anthropic/v1/messages "$(node -e 'const b = JSON.parse(process.argv[1]); b.stream = false; console.log(JSON.stringify(b))' "$CLAUDE")" \
  -H 'anthropic-version: 2023-06-01'
expect claude_ns 200 'r.type === "message" && r.role === "assistant" && r.content[0].type === "thinking" && typeof r.content[0].signature === "string" && ["end_turn", "max_tokens", "tool_use"].includes(r.stop_reason) && "stop_sequence" in r && r.usage.input_tokens > 0 && r.usage.cache_read_input_tokens % 64 === 0 && r.usage.output_tokens >= 1'
echo "POST /anthropic/v1/messages/count_tokens"
request count POST /anthropic/v1/messages/count_tokens "$CLAUDE"
expect count 200 'Number.isInteger(r.input_tokens) && r.input_tokens > 0'

echo "Errors (api-surface.md §9.2, §7.7)"
REQ_KEY=sk-00000000e78f request badkey GET /models ''
expect badkey 401 'r.error.message === "Authentication Fails, Your api key: ****e78f is invalid" && r.error.type === "authentication_error"'
request nomodel POST /chat/completions '{"model":"deepseek-v9","messages":[{"role":"user","content":"Hi"}]}'
expect nomodel 400 'r.error.message === "Model Not Exist" && r.error.type === "invalid_request_error"'
request maxtok POST /chat/completions '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi"}],"max_tokens":0}'
expect maxtok 400 'r.error.message === "Invalid max_tokens value, the valid range of max_tokens is [1, 393216]"'
request replay POST /chat/completions '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi"},
  {"role":"assistant","content":"","tool_calls":[{"id":"call_0","type":"function","function":{"name":"f","arguments":"{}"}}]},
  {"role":"tool","tool_call_id":"call_0","content":"ok"}],
  "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}]}'
expect replay 400 'r.error.message === "The `reasoning_content` in the thinking mode must be passed back to the API."'
REQ_KEY=$BROKE request broke POST /chat/completions '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi"}]}'
expect broke 402 'r.error.message === "Insufficient Balance" && r.error.type === "unknown_error"'
request anth_err POST /anthropic/v1/messages '{"model":"deepseek-v4-pro","messages":[{"role":"user","content":"Hi"}],"max_tokens":0}'
expect anth_err 400 'r.type === "error" && r.error.type === "invalid_request_error"'
echo "PASS"
