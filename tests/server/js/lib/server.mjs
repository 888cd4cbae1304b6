// Starts `dsv4 serve` on a free loopback port over a random-weight V4
// checkpoint written by `dsv4 synth --like tiny` with the real V4 tokenizer.
// DSV4_BINARY and DSV4_SOURCE_DIR come from ctest (tests/server/tests.cmake).
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = process.env.DSV4_BINARY;
const SRC = process.env.DSV4_SOURCE_DIR;
if (!BIN || !SRC) throw new Error('set DSV4_BINARY and DSV4_SOURCE_DIR (ctest does)');

let modelDir = null;
function model() {
  if (!modelDir) {
    modelDir = mkdtempSync(join(tmpdir(), 'dsv4-js-model-'));
    execFileSync(BIN, ['synth', '--like', 'tiny', '--tokenizer',
      join(SRC, 'models', 'deepseek-v4-tokenizer'), '--out', modelDir], { stdio: 'ignore' });
    process.on('exit', () => rmSync(modelDir, { recursive: true, force: true }));
  }
  return modelDir;
}

export async function startServer(extraArgs = []) {
  const proc = spawn(BIN, ['serve', '--model', model(), '--port', '0', ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dsv4 serve did not start:\n${log}`)), 120000);
    const onData = (d) => {
      log += d.toString();
      const m = log.match(/ready in .*\n/) && log.match(/http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(`http://127.0.0.1:${m[1]}`); }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', (d) => { log += d.toString(); });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`dsv4 serve exited ${code}:\n${log}`)); });
  });
  return {
    url,
    log: () => log,
    async stop() {
      proc.removeAllListeners('exit');
      const done = new Promise((r) => proc.on('exit', r));
      proc.kill('SIGTERM');
      await done;
    },
  };
}
