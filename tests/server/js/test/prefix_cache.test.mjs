// Context caching as the official clients see it (api-surface.md §10): a
// repeated long prompt reports cache hits in 64-token units through the
// `openai` client (prompt_cache_hit_tokens, prompt_tokens_details.cached_tokens)
// and the Anthropic client (cache_read_input_tokens, input_tokens = non-cached),
// with the same answer at temperature 0; with --prefix-cache-bytes 0 nothing hits.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startServer } from '../lib/server.mjs';

let server;
let off;
before(async () => {
  server = await startServer();
  off = await startServer(['--prefix-cache-bytes', '0']);
});
after(async () => {
  if (server) await server.stop();
  if (off) await off.stop();
});

const system = 'You are a careful assistant. ' +
  Array.from({ length: 30 }, (_, i) => `Rule ${i}: answer precisely and briefly.`).join(' ');

function openaiRequest(topic) {
  return {
    model: 'deepseek-v4-flash',
    messages: [{ role: 'system', content: system }, { role: 'user', content: `Tell me about ${topic}.` }],
    max_tokens: 4,
    temperature: 0,
    thinking: { type: 'disabled' },
  };
}

describe('prefix cache', () => {
  test('openai: the repeat hits whole units and answers the same', async () => {
    const client = new OpenAI({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });
    const a = await client.chat.completions.create(openaiRequest('caches'));
    const b = await client.chat.completions.create(openaiRequest('caches'));
    assert.equal(a.usage.prompt_cache_hit_tokens, 0);
    const n = b.usage.prompt_tokens;
    assert.ok(n > 128, `prompt of ${n} tokens`);
    assert.equal(b.usage.prompt_cache_hit_tokens, Math.floor((n - 1) / 64) * 64);
    assert.equal(b.usage.prompt_cache_hit_tokens + b.usage.prompt_cache_miss_tokens, n);
    assert.equal(b.usage.prompt_tokens_details.cached_tokens, b.usage.prompt_cache_hit_tokens);
    assert.equal(b.choices[0].message.content, a.choices[0].message.content);
  });

  // (Its own system text: the OpenAI test's prompt shares a prefix with it and would hit.)
  test('anthropic: cache_read_input_tokens, input_tokens are the rest', async () => {
    const client = new Anthropic({ baseURL: `${server.url}/anthropic`, apiKey: 'unused', maxRetries: 0 });
    const req = {
      model: 'deepseek-v4-flash', max_tokens: 4, temperature: 0, thinking: { type: 'disabled' },
      system: [{ type: 'text', text: `Anthropic route. ${system}`, cache_control: { type: 'ephemeral' } }],
      messages: [{ role: 'user', content: 'Tell me about anthropic caching.' }],
    };
    const { input_tokens: n } = await client.messages.countTokens(req);
    const a = await client.messages.create(req);
    assert.equal(a.usage.cache_read_input_tokens, 0);
    assert.equal(a.usage.input_tokens, n);
    const m = await client.messages.stream(req).finalMessage();
    const hit = Math.floor((n - 1) / 64) * 64;
    assert.equal(m.usage.cache_read_input_tokens, hit);
    assert.equal(m.usage.input_tokens, n - hit);
    assert.deepEqual(m.content.map((c) => c.text), a.content.map((c) => c.text));
  });

  test('--prefix-cache-bytes 0: never a hit', async () => {
    const client = new OpenAI({ baseURL: off.url, apiKey: 'unused', maxRetries: 0 });
    await client.chat.completions.create(openaiRequest('nothing'));
    const b = await client.chat.completions.create(openaiRequest('nothing'));
    assert.equal(b.usage.prompt_cache_hit_tokens, 0);
    assert.equal(b.usage.prompt_cache_miss_tokens, b.usage.prompt_tokens);
    assert.match(off.log(), /prefix cache off/);
  });
});
