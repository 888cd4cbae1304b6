// The official `openai` npm client against dsv4 serve (api-surface.md §3-§5, §9, §14).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer } from '../lib/server.mjs';

let server;
let client;
let v1;
before(async () => {
  server = await startServer();
  client = new OpenAI({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });
  v1 = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
after(async () => server && server.stop());

const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hi.' }];

describe('chat completions', () => {
  test('non-stream, thinking by default: reasoning_content and all usage fields', async () => {
    const r = await client.chat.completions.create({ model: 'deepseek-v4-flash', messages, max_tokens: 5 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, 'deepseek-v4-flash');
    const m = r.choices[0].message;
    assert.equal(m.role, 'assistant');
    assert.equal(typeof m.reasoning_content, 'string');
    assert.ok(['length', 'stop', 'tool_calls'].includes(r.choices[0].finish_reason));
    const u = r.usage;
    assert.ok(u.prompt_tokens > 0);
    assert.ok(u.completion_tokens >= 1 && u.completion_tokens <= 5);
    assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    assert.equal(u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens, u.prompt_tokens);
    assert.equal(u.prompt_tokens_details.cached_tokens, u.prompt_cache_hit_tokens);
    assert.equal(typeof u.completion_tokens_details.reasoning_tokens, 'number');
    assert.ok(r._request_id || true);
  });

  test('/v1 base URL and thinking disabled: no reasoning_content', async () => {
    const r = await v1.chat.completions.create({
      model: 'deepseek-v4-pro', messages, max_tokens: 4, thinking: { type: 'disabled' },
    });
    assert.equal(r.model, 'deepseek-v4-pro');
    assert.equal(r.choices[0].message.reasoning_content, undefined);
  });

  test('stream with include_usage: role first, usage at the end, [DONE]', async () => {
    const stream = await client.chat.completions.create({
      model: 'deepseek-v4-flash', messages, max_tokens: 5, stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.ok(chunks.length >= 2);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const finish = chunks.find((c) => c.choices.length && c.choices[0].finish_reason);
    assert.ok(finish, 'a chunk carries finish_reason');
    const last = chunks[chunks.length - 1];
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.completion_tokens >= 1);
    assert.ok(chunks.every((c) => c.id === chunks[0].id));
  });

  test('seed: same seed + same request = same output', async () => {
    const req = { model: 'deepseek-v4-flash', messages, max_tokens: 6, seed: 42 };
    const a = await client.chat.completions.create(req);
    const b = await client.chat.completions.create(req);
    assert.deepEqual(a.choices[0].message, b.choices[0].message);
  });

  test('max_tokens -> finish_reason length; stop sequences accepted', async () => {
    const r = await client.chat.completions.create({
      model: 'deepseek-v4-flash', messages, max_tokens: 2, thinking: { type: 'disabled' },
      stop: ['\n\n\n\n', 'zzzzzz'], temperature: 0,
    });
    assert.equal(r.usage.completion_tokens <= 2, true);
    assert.ok(['length', 'stop'].includes(r.choices[0].finish_reason));
  });

  test('logprobs / top_logprobs', async () => {
    const r = await client.chat.completions.create({
      model: 'deepseek-v4-flash', messages, max_tokens: 3, thinking: { type: 'disabled' },
      logprobs: true, top_logprobs: 3,
    });
    const lp = r.choices[0].logprobs.content;
    assert.equal(lp.length, r.usage.completion_tokens);
    for (const t of lp) {
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 3);
      assert.ok(Array.isArray(t.bytes));
    }
  });

  test('a full tool round trip, with the thinking-mode replay rule', async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather of a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
    const first = await client.chat.completions.create({ model: 'deepseek-v4-flash', messages, tools, max_tokens: 4 });
    assert.ok(first.choices[0].message);
    const call = { id: 'call_00_abc', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } };
    const history = [...messages, { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: 'call_00_abc', content: 'sunny' }];
    await assert.rejects(
      client.chat.completions.create({ model: 'deepseek-v4-flash', messages: history, tools, max_tokens: 4 }),
      (e) => e.status === 400 && e.message.includes('The `reasoning_content` in the thinking mode must be passed back to the API.'));
    history[2].reasoning_content = 'I should look it up.';
    const answer = await client.chat.completions.create({ model: 'deepseek-v4-flash', messages: history, tools, max_tokens: 4 });
    assert.ok(answer.usage.prompt_tokens > first.usage.prompt_tokens);
  });

  test('json_object output is valid JSON even from random weights', async () => {
    for (const seed of [1, 2, 3]) {
      const r = await client.chat.completions.create({
        model: 'deepseek-v4-flash', max_tokens: 24, seed, thinking: { type: 'disabled' },
        response_format: { type: 'json_object' },
        messages: [{ role: 'user', content: 'Answer in json: {"greeting": ...}' }],
      });
      const content = r.choices[0].message.content;
      assert.match(content, /^\s*\{/);
      if (r.choices[0].finish_reason === 'stop') {
        const v = JSON.parse(content);
        assert.equal(typeof v, 'object');
        assert.ok(!Array.isArray(v));
      }
    }
  });

  // Tool-call constrained decoding on random weights: a strict named call's
  // arguments always parse and fit the schema; `required` always calls.
  const weatherSchema = {
    type: 'object',
    properties: {
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      hourly: { type: 'boolean' },
      opts: {
        type: 'object', properties: { mode: { type: 'string', enum: ['a', 'b'] } },
        required: ['mode'], additionalProperties: false,
      },
    },
    required: ['unit', 'hourly', 'opts'],
    additionalProperties: false,
  };
  const emptySchema = { type: 'object', properties: {}, required: [], additionalProperties: false };
  // An independent check of weatherSchema.
  function validWeather(a) {
    return a && typeof a === 'object' && Object.keys(a).sort().join() === 'hourly,opts,unit'
      && ['celsius', 'fahrenheit'].includes(a.unit) && typeof a.hourly === 'boolean'
      && Object.keys(a.opts).join() === 'mode' && ['a', 'b'].includes(a.opts.mode);
  }

  test('strict tools + named tool_choice: the named tool, arguments valid for the schema', async () => {
    const beta = new OpenAI({ baseURL: `${server.url}/beta`, apiKey: 'unused', maxRetries: 0 });
    let complete = 0;
    for (const seed of [1, 2, 3, 4]) {
      const r = await beta.chat.completions.create({
        model: 'deepseek-v4-flash', max_tokens: 600, seed, thinking: { type: 'disabled' },
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [
          { type: 'function', function: { name: 'get_time', strict: true, parameters: emptySchema } },
          { type: 'function', function: { name: 'get_weather', strict: true, parameters: weatherSchema } },
        ],
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
      });
      const choice = r.choices[0];
      const calls = choice.message.tool_calls ?? [];
      assert.ok(calls.length >= 1, JSON.stringify(choice));
      assert.equal(choice.message.content, '');
      // With finish_reason length the last call may be cut off; every other
      // one is whole.
      const whole = choice.finish_reason === 'tool_calls' ? calls : calls.slice(0, -1);
      if (choice.finish_reason === 'tool_calls') complete += 1;
      else assert.equal(choice.finish_reason, 'length');
      for (const c of calls) assert.equal(c.function.name, 'get_weather');
      for (const c of whole) assert.ok(validWeather(JSON.parse(c.function.arguments)), c.function.arguments);
    }
    assert.ok(complete >= 1, 'at least one run ends its calls within max_tokens');
  });

  test('tool_choice required (no strict): the answer is a tool call', async () => {
    const r = await client.chat.completions.create({
      model: 'deepseek-v4-flash', max_tokens: 120, seed: 5, thinking: { type: 'disabled' },
      messages: [{ role: 'user', content: 'What time is it?' }],
      tools: [{ type: 'function', function: { name: 'get_time', parameters: emptySchema } }],
      tool_choice: 'required',
    });
    const choice = r.choices[0];
    assert.equal(choice.message.content, '');
    assert.ok(choice.message.tool_calls.length >= 1, JSON.stringify(choice));
    assert.equal(choice.message.tool_calls[0].function.name, 'get_time');
    assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), {});
  });

  test('legacy aliases', async () => {
    const r = await client.chat.completions.create({ model: 'deepseek-chat', messages, max_tokens: 2 });
    assert.equal(r.choices[0].message.reasoning_content, undefined);
    const t = await client.chat.completions.create({ model: 'deepseek-reasoner', messages, max_tokens: 2 });
    assert.equal(typeof t.choices[0].message.reasoning_content, 'string');
  });
});

describe('beta: FIM and prefix completion', () => {
  test('FIM completion returns text', async () => {
    const beta = new OpenAI({ baseURL: `${server.url}/beta`, apiKey: 'unused', maxRetries: 0 });
    const r = await beta.completions.create({
      model: 'deepseek-v4-pro', prompt: 'def fib(a):', suffix: '    return fib(a-1) + fib(a-2)', max_tokens: 4,
    });
    assert.equal(r.object, 'text_completion');
    assert.equal(typeof r.choices[0].text, 'string');
    assert.ok(r.usage.completion_tokens >= 1);
  });

  test('chat prefix completion', async () => {
    const beta = new OpenAI({ baseURL: `${server.url}/beta`, apiKey: 'unused', maxRetries: 0 });
    const r = await beta.chat.completions.create({
      model: 'deepseek-v4-flash', max_tokens: 3, thinking: { type: 'disabled' }, stop: ['```'],
      messages: [{ role: 'user', content: 'Please write quick sort code' },
        { role: 'assistant', content: '```python\n', prefix: true }],
    });
    assert.equal(typeof r.choices[0].message.content, 'string');
  });
});

describe('errors keep the platform shapes', () => {
  test('unknown model -> 400 Model Not Exist', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages }),
      (e) => e instanceof OpenAI.BadRequestError && e.message.includes('Model Not Exist'));
  });
  test('max_tokens out of range -> 400 with the range text', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'deepseek-v4-flash', messages, max_tokens: 393217 }),
      (e) => e.status === 400 && e.message.includes('Invalid max_tokens value, the valid range of max_tokens is [1, 393216]'));
  });
  test('thinking: true -> 422', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'deepseek-v4-flash', messages, thinking: true }),
      (e) => e instanceof OpenAI.UnprocessableEntityError);
  });
  test('image parts -> 400', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }] }),
      (e) => e.status === 400 && e.message.includes("unknown variant `image_url`"));
  });
  test('models list', async () => {
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    assert.deepEqual(ids.slice(0, 2), ['deepseek-v4-flash', 'deepseek-v4-pro']);
  });
});

describe('auth', () => {
  test('401 without or with a wrong key, 200 with a right one', async () => {
    const keyed = await startServer(['--api-key', 'sk-test-1234']);
    try {
      const bad = new OpenAI({ baseURL: keyed.url, apiKey: 'sk-wrong-9999', maxRetries: 0 });
      await assert.rejects(bad.chat.completions.create({ model: 'deepseek-v4-flash', messages, max_tokens: 1 }),
        (e) => e instanceof OpenAI.AuthenticationError && e.message.includes('Authentication Fails'));
      const good = new OpenAI({ baseURL: keyed.url, apiKey: 'sk-test-1234', maxRetries: 0 });
      const r = await good.chat.completions.create({ model: 'deepseek-v4-flash', messages, max_tokens: 1 });
      assert.equal(r.object, 'chat.completion');
      const health = await fetch(`${keyed.url}/health`);
      assert.equal(health.status, 200);
    } finally {
      await keyed.stop();
    }
  });
});
