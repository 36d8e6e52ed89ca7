import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { APICallError, generateText, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';
import { startDevLlm, type DevLlmServer } from './server.ts';

let server: DevLlmServer;
before(async () => {
  server = await startDevLlm();
});
after(() => server.close());

async function chat(body: unknown): Promise<Response> {
  return fetch(`${server.url}/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

/** Response bodies are checked field by field below; `any` keeps those checks short. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function body(response: Response | Promise<Response>): Promise<any> {
  return (await response).json();
}

function model() {
  return createOpenAICompatible({ name: 'dev', baseURL: server.url, includeUsage: true })('torpor-dev');
}

const shellTool = tool({
  description: 'run a shell command',
  inputSchema: z.object({ command: z.string() }),
  execute: async ({ command }) => `output of ${command}`,
});

describe('dev-llm over raw HTTP', () => {
  it('lists its model', async () => {
    const response = await fetch(`${server.url}/models`);
    assert.equal(response.status, 200);
    assert.deepEqual(
      (await body(response)).data.map((entry: { id: string }) => entry.id),
      ['torpor-dev'],
    );
  });

  it('answers a plain completion with usage, deterministically', async () => {
    const request = { model: 'torpor-dev', messages: [{ role: 'user', content: 'hello there' }] };
    const first = await body(chat(request));
    const second = await body(chat(request));
    assert.equal(first.object, 'chat.completion');
    assert.equal(first.choices[0].message.content, 'You said: hello there');
    assert.equal(first.choices[0].finish_reason, 'stop');
    assert.ok(first.usage.prompt_tokens > 0 && first.usage.completion_tokens > 0);
    assert.equal(first.usage.total_tokens, first.usage.prompt_tokens + first.usage.completion_tokens);
    assert.equal(second.choices[0].message.content, first.choices[0].message.content);
  });

  it('streams SSE chunks ending with [DONE], tool call arguments in fragments', async () => {
    const response = await chat({
      model: 'torpor-dev',
      stream: true,
      messages: [{ role: 'user', content: 'run: echo hello world from the test' }],
      tools: [{ type: 'function', function: { name: 'shell', parameters: {} } }],
    });
    assert.equal(response.headers.get('content-type'), 'text/event-stream');
    const events = (await response.text()).split('\n\n').filter(Boolean);
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events.slice(0, -1).map((event) => JSON.parse(event.replace(/^data: /, '')));
    const argumentText = chunks
      .flatMap((chunk) =>
        chunk.choices.flatMap((choice: { delta: { tool_calls?: Array<{ function: { arguments?: string } }> } }) => choice.delta.tool_calls ?? []),
      )
      .map((call: { function: { arguments?: string } }) => call.function.arguments ?? '')
      .join('');
    assert.deepEqual(JSON.parse(argumentText), { command: 'echo hello world from the test' });
    assert.ok(chunks.filter((chunk) => chunk.choices[0]?.delta.tool_calls).length > 2, 'arguments arrive in several chunks');
    assert.equal(chunks.find((chunk) => chunk.choices[0]?.finish_reason)?.choices[0].finish_reason, 'tool_calls');
    assert.ok(chunks.at(-1).usage.total_tokens > 0);
  });

  it('answers 429 with Retry-After once per conversation', async () => {
    const request = { model: 'torpor-dev', messages: [{ role: 'user', content: 'rate-limit 3' }] };
    const limited = await chat(request);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get('retry-after'), '3');
    assert.equal((await body(limited)).error.code, 'rate_limit_exceeded');
    const retried = await chat(request);
    assert.equal(retried.status, 200);
    const dated = await chat({ messages: [{ role: 'user', content: 'rate-limit 5 date' }] });
    assert.equal(dated.status, 429);
    const until = Date.parse(dated.headers.get('retry-after')!);
    assert.ok(until - Date.now() > 3000 && until - Date.now() <= 6000, dated.headers.get('retry-after')!);
  });

  it("rejects bad requests in OpenAI's error format", async () => {
    const notJson = await fetch(`${server.url}/chat/completions`, { method: 'POST', body: '{' });
    assert.equal(notJson.status, 400);
    assert.match((await body(notJson)).error.message, /not JSON/);
    assert.equal((await chat({ messages: [] })).status, 400);
    assert.equal((await fetch(`${server.url}/embeddings`, { method: 'POST', body: '{}' })).status, 404);
  });
});

describe('dev-llm with the AI SDK', () => {
  it('drives a tool loop: tool call, then a summary of the result', async () => {
    const result = await generateText({ model: model(), prompt: 'run: ls /tmp', tools: { shell: shellTool }, stopWhen: stepCountIs(3) });
    assert.equal(result.steps.length, 2);
    assert.deepEqual(
      result.steps[0].toolCalls.map((call) => [call.toolName, call.input]),
      [['shell', { command: 'ls /tmp' }]],
    );
    assert.equal(result.text, 'The shell tool returned: output of ls /tmp');
    assert.ok(result.totalUsage.inputTokens! > 0);
  });

  it('maps write and read to their tools, and answers plainly without tools', async () => {
    const write_file = tool({ inputSchema: z.object({ path: z.string(), content: z.string() }) });
    const read_file = tool({ inputSchema: z.object({ path: z.string() }) });
    const written = await generateText({ model: model(), prompt: 'write notes.txt: buy milk: now', tools: { write_file, read_file } });
    assert.deepEqual(
      written.toolCalls.map((call) => [call.toolName, call.input]),
      [['write_file', { path: 'notes.txt', content: 'buy milk: now' }]],
    );
    const read = await generateText({ model: model(), prompt: 'read notes.txt', tools: { write_file, read_file } });
    assert.deepEqual(
      read.toolCalls.map((call) => [call.toolName, call.input]),
      [['read_file', { path: 'notes.txt' }]],
    );
    const untooled = await generateText({ model: model(), prompt: 'run: ls' });
    assert.match(untooled.text, /no such tool/);
  });

  it('streams text and reasoning, and remembers across the conversation', async () => {
    const result = streamText({ model: model(), prompt: 'think: the meaning of life' });
    const types = new Set<string>();
    for await (const part of result.fullStream) types.add(part.type);
    assert.ok(types.has('reasoning-delta') && types.has('text-delta'), [...types].join());
    assert.equal(await result.text, 'My answer about the meaning of life: 42.');
    assert.equal(await result.reasoningText, 'Let me think about the meaning of life.');
    const recall = await generateText({
      model: model(),
      messages: [
        { role: 'system', content: 'You are helpful.\nfacts: the sky is blue' },
        { role: 'user', content: 'remember the cat is called Tom' },
        { role: 'assistant', content: 'OK' },
        { role: 'user', content: 'what do you remember?' },
      ],
    });
    assert.equal(recall.text, 'I remember: the sky is blue; the cat is called Tom.');
  });

  it('surfaces a 429 as APICallError with the Retry-After header', async () => {
    await assert.rejects(
      generateText({ model: model(), prompt: 'rate-limit 2 for the SDK', maxRetries: 0 }),
      (error: unknown) => APICallError.isInstance(error) && error.statusCode === 429 && error.responseHeaders?.['retry-after'] === '2',
    );
  });
});

describe('torpor dev-llm command', () => {
  it('listens where asked and stops on SIGTERM', async () => {
    const script = `import { Command } from "commander"; import { registerDevLlmCommand } from "./src/cli/commands/dev-llm.ts";
      const program = new Command("torpor"); registerDevLlmCommand(program); await program.parseAsync(["node", "torpor", "dev-llm", "--port", "0", "--quiet"]);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: new URL('../..', import.meta.url).pathname,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let output = '';
        child.stdout.on('data', (data: Buffer) => {
          output += data.toString();
          const match = /listening on (\S+)/.exec(output);
          if (match) resolve(match[1]);
        });
        child.once('exit', (code) => reject(new Error(`exited ${code}`)));
      });
      const models = await body(fetch(`${url}/models`));
      assert.equal(models.data[0].id, 'torpor-dev');
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
