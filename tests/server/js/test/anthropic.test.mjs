// The official `@anthropic-ai/sdk` client against dsv4 serve (api-surface.md §7, §14 item 9).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startServer } from '../lib/server.mjs';

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Anthropic({ baseURL: `${server.url}/anthropic`, apiKey: 'unused', maxRetries: 0 });
});
after(async () => server && server.stop());

const base = {
  model: 'claude-sonnet-4-5',
  max_tokens: 5,
  system: [{ type: 'text', text: 'You are terse.', cache_control: { type: 'ephemeral' } }],
  messages: [{ role: 'user', content: 'Say hi.' }],
};

describe('messages', () => {
  test('non-stream with thinking: a thinking block with a signature', async () => {
    const m = await client.messages.create({ ...base, thinking: { type: 'enabled', budget_tokens: 1024 } });
    assert.equal(m.type, 'message');
    assert.equal(m.model, 'deepseek-v4-flash');
    assert.equal(m.content[0].type, 'thinking');
    assert.equal(typeof m.content[0].signature, 'string');
    assert.ok(['end_turn', 'max_tokens', 'tool_use', 'stop_sequence'].includes(m.stop_reason));
    assert.ok(m.usage.output_tokens >= 1 && m.usage.output_tokens <= 5);
    assert.equal(m.usage.cache_read_input_tokens, 0);
  });

  test('stream(): named events rebuild the final message', async () => {
    const stream = client.messages.stream({ ...base, thinking: { type: 'adaptive' } });
    const events = [];
    stream.on('streamEvent', (e) => events.push(e.type));
    const m = await stream.finalMessage();
    assert.equal(events[0], 'message_start');
    assert.equal(events[events.length - 1], 'message_stop');
    assert.ok(events.includes('message_delta'));
    assert.ok(m.usage.output_tokens >= 1);
  });

  test('count_tokens (also ?beta=true) equals the input tokens of the request', async () => {
    const m = await client.messages.create(base);
    const c = await client.messages.countTokens({ model: base.model, system: base.system, messages: base.messages });
    assert.equal(c.input_tokens, m.usage.input_tokens);
    const b = await client.beta.messages.countTokens({ model: base.model, system: base.system, messages: base.messages,
      betas: ['claude-code-20250219', 'some-future-beta-2099'] });
    assert.equal(b.input_tokens, c.input_tokens);
  });

  test('a tool round trip, with the thinking replay rule', async () => {
    const tools = [{ name: 'read_file', description: 'Read a file',
      input_schema: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] } }];
    const turn = [{ type: 'tool_use', id: 'toolu_01', name: 'read_file', input: { path: 'README.md' } }];
    const messages = [{ role: 'user', content: 'Read README.md' }, { role: 'assistant', content: turn },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01', content: 'hello' }] }];
    await assert.rejects(client.messages.create({ ...base, tools, messages, thinking: { type: 'enabled', budget_tokens: 100 } }),
      (e) => e.status === 400 && e.error.error.type === 'invalid_request_error'
        && e.message.includes('The `content[].thinking` in the thinking mode must be passed back to the API.'));
    messages[1].content = [{ type: 'thinking', thinking: 'Read it.', signature: 'abc' }, ...turn];
    const m = await client.messages.create({ ...base, tools, messages, thinking: { type: 'enabled', budget_tokens: 100 } });
    assert.equal(m.type, 'message');
  });

  test('tool_choice {type: tool}: a tool_use block of that tool with valid input', async () => {
    const r = await client.messages.create({
      ...base, max_tokens: 200, thinking: { type: 'disabled' },
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [
        { name: 'get_time', input_schema: { type: 'object', properties: {} } },
        {
          name: 'get_weather',
          input_schema: {
            type: 'object', properties: { unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
            required: ['unit'], additionalProperties: false,
          },
        },
      ],
      tool_choice: { type: 'tool', name: 'get_weather' },
    });
    const uses = r.content.filter((b) => b.type === 'tool_use');
    assert.ok(uses.length >= 1, JSON.stringify(r.content));
    assert.equal(uses[0].name, 'get_weather');
    assert.ok(['celsius', 'fahrenheit'].includes(uses[0].input.unit), JSON.stringify(uses[0]));
    if (r.stop_reason === 'tool_use') for (const u of uses) assert.equal(u.name, 'get_weather');
  });

  test('claude-opus maps to pro, [1m] stripped; unknown names are 404', async () => {
    const m = await client.messages.create({ ...base, model: 'claude-opus-4-1[1m]' });
    assert.equal(m.model, 'deepseek-v4-pro');
    await assert.rejects(client.messages.create({ ...base, model: 'gpt-4o' }),
      (e) => e instanceof Anthropic.NotFoundError && e.error.type === 'error');
  });

  test('context overflow speaks Claude Code\'s language', async () => {
    const small = await startServer(['--max-context', '64']);
    try {
      const c = new Anthropic({ baseURL: `${small.url}/anthropic`, apiKey: 'unused', maxRetries: 0 });
      await assert.rejects(c.messages.create({ ...base, max_tokens: 60 }),
        (e) => e.status === 400 && e.error.error.type === 'invalid_request_error'
          && /input length and `max_tokens` exceed context limit: \d+ \+ 60 > 64, decrease input length or `max_tokens` and try again/.test(e.message));
      await assert.rejects(c.messages.create({ ...base, messages: [{ role: 'user', content: 'word '.repeat(100) }] }),
        (e) => e.status === 400 && /prompt is too long: \d+ tokens > \d+ maximum/.test(e.message));
      const o = await fetch(`${small.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'deepseek-v4-flash', max_tokens: 60, messages: [{ role: 'user', content: 'Say hi.' }] }) });
      assert.equal(o.status, 400);
      const body = await o.json();
      assert.match(body.error.message, /^This model's maximum context length is 64 tokens\. However, you requested \d+ tokens \(\d+ in the messages, 60 in the completion\)\. Please reduce the length of the messages or completion\.$/);
    } finally {
      await small.stop();
    }
  });
});
