// Real coding agents, unchanged, against `dsv4 serve` (issue #4): Claude Code
// (`claude -p`, Anthropic Messages at ANTHROPIC_BASE_URL) and OpenCode
// (`opencode run`, an @ai-sdk/openai-compatible provider at the server's /v1).
// Each must finish a turn with exit code 0 and no protocol error, and every
// request the server saw must have been answered 2xx.
//
// Model: DSV4_AGENTS_MODEL=DIR serves that checkpoint (e.g. models/dsv4-demo;
// without a tokenizer.json it gets models/deepseek-v4-tokenizer);
// otherwise a `dsv4 synth --like tiny` checkpoint with the real V4 tokenizer.
// Random weights never choose the end token by themselves, so on the synth
// checkpoint the server gets `--logit-bias EOS=100` (the answer ends at once:
// the agents see an empty end_turn / stop answer, the protocol is the same).
// DSV4_AGENTS_EOS_BIAS overrides the bias (0 = none).
//
// The agents get a temp HOME, no telemetry, and a dead proxy for everything
// but loopback, so a run that needs the network fails instead of hanging.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = process.env.DSV4_BINARY;
const SRC = process.env.DSV4_SOURCE_DIR;
if (!BIN || !SRC) throw new Error('set DSV4_BINARY and DSV4_SOURCE_DIR (ctest does)');
const HERE = dirname(dirname(fileURLToPath(import.meta.url)));
const KEY = 'sk-dsv4-agents-test';

// The agents' native binaries. Claude Code's postinstall copies its binary
// over the wrapper's bin/claude.exe; if install scripts were not allowed to
// run, the platform package's binary is used directly. OpenCode is installed
// as its platform package (see package.json's description).
function agentBinary(wrapper, platformCandidates) {
  const w = join(HERE, 'node_modules', wrapper);
  if (existsSync(w) && statSync(w).size > 1 << 20) return w;
  for (const c of platformCandidates) {
    const p = join(HERE, 'node_modules', c);
    if (existsSync(p)) return p;
  }
  throw new Error(`no ${wrapper} binary: run npm ci in tests/server/agents`);
}
const CLAUDE = () => agentBinary('@anthropic-ai/claude-code/bin/claude.exe',
  ['@anthropic-ai/claude-code-linux-x64/claude', '@anthropic-ai/claude-code-linux-arm64/claude']);
const OPENCODE = () => agentBinary('opencode-ai/bin/opencode.exe',
  ['opencode-linux-x64/bin/opencode', 'opencode-linux-x64-baseline/bin/opencode',
    'opencode-linux-arm64/bin/opencode']);

const work = mkdtempSync(join(tmpdir(), 'dsv4-agents-'));
let server;
let serverLog = '';

function modelDir() {
  if (process.env.DSV4_AGENTS_MODEL) return process.env.DSV4_AGENTS_MODEL;
  const dir = join(work, 'model');
  execFileSync(BIN, ['synth', '--like', 'tiny', '--tokenizer',
    join(SRC, 'models', 'deepseek-v4-tokenizer'), '--out', dir], { stdio: 'ignore' });
  return dir;
}

before(async () => {
  const model = modelDir();
  const args = ['serve', '--model', model, '--port', '0', '--api-key', KEY, '--log-requests'];
  // A checkpoint folder without its own tokenizer gets the bundled V4 one.
  if (!existsSync(join(model, 'tokenizer.json')))
    args.push('--tokenizer', join(SRC, 'models', 'deepseek-v4-tokenizer'));
  const eos = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')).eos_token_id;
  const bias = process.env.DSV4_AGENTS_EOS_BIAS ?? (process.env.DSV4_AGENTS_MODEL ? '0' : '100');
  if (Number(bias) !== 0) args.push('--logit-bias', `${eos}=${bias}`);
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dsv4 serve did not start:\n${serverLog}`)), 300000);
    const onData = (d) => {
      serverLog += d.toString();
      const m = serverLog.match(/ready in .*\n/) && serverLog.match(/http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(`http://127.0.0.1:${m[1]}`); }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`dsv4 serve exited ${code}:\n${serverLog}`)); });
  });
  server = { proc, url };
});

after(async () => {
  if (server) {
    server.proc.removeAllListeners('exit');
    const done = new Promise((r) => server.proc.on('exit', r));
    server.proc.kill('SIGTERM');
    await done;
  }
  rmSync(work, { recursive: true, force: true });
});

// Runs an agent to completion; resolves with its exit code and output.
function runAgent(bin, args, env, cwd) {
  return new Promise((resolve) => {
    const p = spawn(bin, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d.toString(); });
    p.stderr.on('data', (d) => { stderr += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), 600000);
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}

function agentEnv(home, extra) {
  mkdirSync(home, { recursive: true });
  return {
    PATH: process.env.PATH,
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CACHE_HOME: join(home, '.cache'),
    XDG_STATE_HOME: join(home, '.local', 'state'),
    TMPDIR: tmpdir(),
    // Anything but loopback goes to a closed port.
    HTTP_PROXY: 'http://127.0.0.1:9',
    HTTPS_PROXY: 'http://127.0.0.1:9',
    NO_PROXY: '127.0.0.1,localhost',
    ...extra,
  };
}

// The server's request-log lines after `from` (see dsv4 serve --log-requests).
function requestsSince(from) {
  return serverLog.slice(from).split('\n').filter((l) => /^dsv4 serve: (GET|POST) /.test(l));
}

test('Claude Code: claude -p completes a turn over /v1/messages', { timeout: 900000 }, async () => {
  const from = serverLog.length;
  const home = join(work, 'claude-home');
  const cwd = join(work, 'claude-project');
  mkdirSync(cwd, { recursive: true });
  const r = await runAgent(CLAUDE(), ['-p', 'Say hi in one word.', '--output-format', 'json'], agentEnv(home, {
    ANTHROPIC_BASE_URL: server.url,
    ANTHROPIC_API_KEY: KEY,
    // As DeepSeek's guide for Claude Code sets them: Claude Code drops the thinking blocks of a
    // reply whose `model` is not the one it asked for, and the server (like DeepSeek) names the
    // model it serves (claude-opus-* → deepseek-v4-pro); a tool-use turn replayed without its
    // thinking is then refused with 400 (docs/api.md).
    ANTHROPIC_MODEL: 'deepseek-v4-pro',
    ANTHROPIC_SMALL_FAST_MODEL: 'deepseek-v4-flash',
    CLAUDE_CODE_MAX_OUTPUT_TOKENS: process.env.DSV4_AGENTS_MAX_TOKENS ?? '16',
    DISABLE_TELEMETRY: '1',
    DISABLE_AUTOUPDATER: '1',
    DISABLE_ERROR_REPORTING: '1',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
  }), cwd);
  const seen = requestsSince(from);
  const context = `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\nserver saw:\n${seen.join('\n')}`;
  assert.equal(r.code, 0, context);
  const result = JSON.parse(r.stdout);
  assert.equal(result.type, 'result', context);
  assert.equal(result.is_error, false, context);
  assert.doesNotMatch(r.stdout + r.stderr, /API Error/, context);
  // What Claude Code sends (docs/api.md): the beta messages route with tools,
  // list-form system, adaptive thinking and the effort setting, streamed.
  const messages = seen.filter((l) => l.startsWith('dsv4 serve: POST /v1/messages?beta=true '));
  assert.ok(messages.length >= 1, context);
  for (const l of messages) {
    assert.match(l, /^dsv4 serve: POST \S+ 200 /, context);
    assert.match(l, / tools\[\d+\] /, context);
    assert.match(l, / system\[\d+\] /, context);
    assert.match(l, /anthropic-beta: /, context);
  }
  for (const l of seen) assert.match(l, /^dsv4 serve: \S+ \S+ 2\d\d /, context);
});

test('OpenCode: opencode run completes a turn over /v1/chat/completions', { timeout: 900000 }, async () => {
  const from = serverLog.length;
  const home = join(work, 'opencode-home');
  const cwd = join(work, 'opencode-project');
  mkdirSync(cwd, { recursive: true });
  const config = join(work, 'opencode.json');
  writeFileSync(config, JSON.stringify({
    $schema: 'https://opencode.ai/config.json',
    provider: {
      dsv4: {
        npm: '@ai-sdk/openai-compatible',
        name: 'dsv4 serve',
        options: { baseURL: `${server.url}/v1`, apiKey: KEY },
        models: {
          'deepseek-v4-flash': {
            name: 'DeepSeek V4 Flash',
            limit: { context: 1048576, output: Number(process.env.DSV4_AGENTS_MAX_TOKENS ?? 16) },
          },
        },
      },
    },
    model: 'dsv4/deepseek-v4-flash',
    small_model: 'dsv4/deepseek-v4-flash',
    autoupdate: false,
    share: 'disabled',
  }, null, 2));
  const r = await runAgent(OPENCODE(), ['run', '--format', 'json', '--print-logs', 'Say hi in one word.'],
    agentEnv(home, {
      OPENCODE_CONFIG: config,
      OPENCODE_DISABLE_MODELS_FETCH: '1',
      OPENCODE_DISABLE_AUTOUPDATE: '1',
      OPENCODE_DISABLE_DEFAULT_PLUGINS: '1',
      OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
      OPENCODE_DISABLE_SHARE: '1',
    }), cwd);
  const seen = requestsSince(from);
  const context = `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr.slice(-8000)}\nserver saw:\n${seen.join('\n')}`;
  assert.equal(r.code, 0, context);
  // --format json prints one event per line; none may be an error.
  const events = r.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  assert.ok(!events.some((e) => e.type === 'error' || e.error), context);
  assert.doesNotMatch(r.stderr, /level=ERROR/, context);
  // The turn itself: streaming chat completions with tools and usage.
  const chats = seen.filter((l) => l.startsWith('dsv4 serve: POST /v1/chat/completions '));
  assert.ok(chats.some((l) => / tools\[\d+\] /.test(l) && /stream=true/.test(l)
    && /stream_options\{include_usage=true\}/.test(l)), context);
  for (const l of seen) assert.match(l, /^dsv4 serve: \S+ \S+ 2\d\d /, context);
});
