/**
 * A small coding agent made durable by torpor: an ordinary AI SDK `streamText` loop with three
 * tools, plus a handful of torpor lines (marked "torpor:").
 *
 * Its state lives where a normal program keeps it, in memory (the conversation, a turn counter,
 * remembered facts) and on disk (a notes file). torpor snapshots the whole machine between turns,
 * so both are simply there on the next message, even days later.
 *
 * Provider: OPENAI_BASE_URL if set; else OpenAI itself if OPENAI_API_KEY is set; else the dev LLM
 * (`torpor dev-llm`) on the host, which a torpor machine reaches at 10.0.2.2.
 */
import { exec } from 'node:child_process';
import { appendFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { stepCountIs, streamText, tool, type ModelMessage } from 'ai';
import { z } from 'zod';
import { createAgent, historyToModelMessages, withRateLimitSleep, type Entry } from 'torpor/agent';

const baseURL = process.env.OPENAI_BASE_URL ?? (process.env.OPENAI_API_KEY ? 'https://api.openai.com/v1' : 'http://10.0.2.2:11434/v1');
const usesDevLlm = !process.env.OPENAI_BASE_URL && !process.env.OPENAI_API_KEY;
const modelId = process.env.OPENAI_MODEL ?? (usesDevLlm || process.env.OPENAI_BASE_URL ? 'torpor-dev' : 'gpt-4.1-mini');
const provider = createOpenAICompatible({ name: 'openai', baseURL, apiKey: process.env.OPENAI_API_KEY, includeUsage: true });
const model = provider(modelId);

const workdir = resolve(process.env.AGENT_WORKDIR ?? process.cwd());
const notesPath = resolve(workdir, process.env.AGENT_NOTES ?? 'agent-notes.md');
const maxOutput = 8000;

function clip(text: string): string {
  return text.length <= maxOutput ? text : `${text.slice(0, maxOutput)}\n… (${text.length - maxOutput} more characters)`;
}

const tools = {
  shell: tool({
    description: "Run a shell command in the agent's machine and return its exit code and output.",
    inputSchema: z.object({ command: z.string().describe('a /bin/sh command line') }),
    execute: ({ command }) =>
      new Promise<{ exitCode: number; stdout: string; stderr: string }>((done) => {
        exec(command, { cwd: workdir, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
          const exitCode = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
          done({ exitCode, stdout: clip(stdout), stderr: clip(stderr) });
        });
      }),
  }),
  read_file: tool({
    description: 'Read a text file (paths are relative to the working directory).',
    inputSchema: z.object({ path: z.string() }),
    execute: async ({ path }) => clip(await readFile(resolve(workdir, path), 'utf8')),
  }),
  write_file: tool({
    description: 'Write a text file, creating directories as needed (paths are relative to the working directory).',
    inputSchema: z.object({ path: z.string(), content: z.string() }),
    execute: async ({ path, content }) => {
      const target = resolve(workdir, path);
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, content);
      return `wrote ${Buffer.byteLength(content)} bytes to ${path}`;
    },
  }),
};

// State in memory: kept across turns because the process itself is kept (snapshot and restore).
const messages: ModelMessage[] = [];
let turns = 0;
const facts: string[] = [];

function systemPrompt(): string {
  return [
    'You are a coding agent with a shell, read_file and write_file in your own machine.',
    `Working directory: ${workdir}. Turns so far: ${turns}.`,
    facts.length > 0 ? `facts: ${facts.join('; ')}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

// torpor: speak the protocol on stdin/stdout (console.log now goes to stderr).
const agent = createAgent();

// torpor: a session rebuilt from its log after a crash starts a fresh process; take the state back.
const hello = await agent.hello;
agent.log(`coding agent: session ${hello.sessionId}, model ${modelId} at ${baseURL}`);
if (hello.history) {
  messages.push(...historyToModelMessages(hello.history));
  const saved = [...hello.history].reverse().find((entry: Entry) => entry.kind === 'metadata' && entry.data.agentState !== undefined);
  const state = saved?.kind === 'metadata' ? (saved.data.agentState as { turns?: number; facts?: string[] }) : undefined;
  turns = state?.turns ?? 0;
  facts.push(...(state?.facts ?? []));
  agent.log(`coding agent: rebuilt from ${hello.history.length} log entries (${turns} turns)`);
}

for await (const turn of agent.messages()) {
  turns += 1;
  const remember = /^\s*remember\s+(.+)$/is.exec(turn.text);
  if (remember) facts.push(remember[1].trim());
  messages.push(turn.message);
  await appendFile(notesPath, `- turn ${turns}: ${turn.text.split('\n')[0]}\n`);
  try {
    // torpor: on a 429, hibernate until Retry-After instead of waiting awake, then try again.
    await withRateLimitSleep(
      () =>
        // torpor: forward the stream as protocol events; completed steps are appended to `messages`.
        agent.streamText(streamText({ model, system: systemPrompt(), messages, tools, stopWhen: stepCountIs(8), maxRetries: 0, onError: () => {} }), {
          turnId: turn.turnId,
          messages,
          tools,
        }),
      { turnId: turn.turnId },
    );
  } catch (error) {
    agent.log('coding agent: the turn failed:', error);
    agent.send({ type: 'error', turnId: turn.turnId, message: error instanceof Error ? error.message : String(error), code: 'model_error' });
  }
  // torpor: record the state a rebuild would need; the turn finishes when the loop comes round.
  agent.appendEntries([{ kind: 'metadata', data: { agentState: { turns, facts: [...facts], notes: notesPath } } }]);
}
