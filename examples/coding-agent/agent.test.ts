import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDevLlm, type DevLlmServer } from '../../src/dev-llm/server.ts';
import type { Entry } from '../../src/context/entry.ts';
import { eventToEntries } from '../../src/session/agent-events-to-entries.ts';
import { encodeLine, parseAgentEvent, type AgentEvent, type HostMessage } from '../../src/session/agent-protocol.ts';
import { buildCodingAgent } from './build.ts';

/**
 * End to end on the host (no VM): the bundled agent as a real child process, the dev LLM on
 * loopback, and the test speaking the protocol to its stdin and stdout as torpor would.
 */
let llm: DevLlmServer;
let directory: string;
let bundle: string;
let agent: AgentProcess;

/** The bundled agent as a child process, and the host's end of its stdin and stdout. */
class AgentProcess {
  readonly child: ChildProcessWithoutNullStreams;
  readonly events: AgentEvent[] = [];
  stderr = '';
  private waiters: Array<() => void> = [];

  constructor(sessionId: string, history?: Entry[]) {
    const environment: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: directory, OPENAI_BASE_URL: llm.url, AGENT_WORKDIR: join(directory, 'work') };
    this.child = spawn(process.execPath, [bundle], { cwd: directory, env: environment, stdio: ['pipe', 'pipe', 'pipe'] });
    let buffer = '';
    this.child.stdout.on('data', (data: Buffer) => {
      buffer += data.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop()!;
      for (const line of lines) this.events.push(parseAgentEvent(line));
      for (const wake of this.waiters.splice(0)) wake();
    });
    this.child.stderr.on('data', (data: Buffer) => (this.stderr += data.toString()));
    this.send({ type: 'hello', protocol: 1, sessionId, ...(history ? { history } : {}) });
  }

  send(message: HostMessage): void {
    this.child.stdin.write(encodeLine(message));
  }

  async until<T>(find: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = find();
      if (found !== undefined) return found;
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events.slice(-5))}; stderr: ${this.stderr}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Sends a message and returns the turn's events once it finishes. */
  async turn(turnId: string, content: string): Promise<AgentEvent[]> {
    const start = this.events.length;
    this.send({ type: 'message', turnId, message: { role: 'user', content } });
    await this.until(() => this.events.slice(start).find((event) => event.type === 'turn-finish' && event.turnId === turnId), `turn-finish of ${turnId}`);
    return this.events.slice(start);
  }

  async shutdown(): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => this.child.once('exit', (code) => resolve(code)));
    this.send({ type: 'shutdown' });
    return exited;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

function finalText(turnEvents: AgentEvent[]): string {
  const finishes = turnEvents.filter((event) => event.type === 'message-finish');
  const last = finishes.at(-1);
  if (last?.type !== 'message-finish') return '';
  if (typeof last.message.content === 'string') return last.message.content;
  return last.message.content.flatMap((part) => (part.type === 'text' ? [part.text] : [])).join('');
}

function agentState(turnEvents: AgentEvent[]): { turns: number; facts: string[] } {
  const append = turnEvents.find((event) => event.type === 'entries-append');
  assert.ok(append?.type === 'entries-append' && append.entries[0].kind === 'metadata');
  const { turns, facts } = (append.entries[0] as unknown as { data: { agentState: { turns: number; facts: string[] } } }).data.agentState;
  return { turns, facts };
}

before(async () => {
  llm = await startDevLlm();
  // Outside the repository, so that no node_modules is within reach: the bundle must be self-contained.
  directory = await mkdtemp(join(tmpdir(), 'torpor-coding-agent-'));
  await mkdir(join(directory, 'work'));
  bundle = await buildCodingAgent(join(directory, 'agent.mjs'));
  agent = new AgentProcess('e2e');
});

after(async () => {
  agent.kill();
  await llm.close();
  await rm(directory, { recursive: true, force: true });
});

describe('coding agent example, bundled, over the protocol', { timeout: 20_000 }, () => {
  it('runs a shell command with the shell tool', async () => {
    const events = await agent.turn('t1', userMessages.t1);
    assert.equal(events[0].type, 'turn-start');
    const call = events.find((event) => event.type === 'tool-call');
    assert.ok(call?.type === 'tool-call' && call.toolName === 'shell');
    assert.deepEqual(call.input, { command: 'echo torpor-$((6*7))' });
    const result = events.find((event) => event.type === 'tool-result');
    assert.ok(result?.type === 'tool-result' && result.output.type === 'json');
    assert.deepEqual(result.output.value, { exitCode: 0, stdout: 'torpor-42\n', stderr: '' });
    assert.ok(events.findIndex((event) => event.type === 'message-finish') < events.indexOf(result), 'the call is logged before its result');
    assert.match(finalText(events), /torpor-42/);
    assert.ok(events.some((event) => event.type === 'text-delta'));
    assert.ok(events.some((event) => event.type === 'usage' && event.inputTokens! > 0));
    assert.deepEqual(agentState(events), { turns: 1, facts: [] });
  });

  it('writes and reads files in its working directory', async () => {
    const written = await agent.turn('t2', 'write notes/hello.txt: hi from the test');
    assert.ok(written.some((event) => event.type === 'tool-call' && event.toolName === 'write_file'));
    assert.equal(await readFile(join(directory, 'work', 'notes/hello.txt'), 'utf8'), 'hi from the test');
    const read = await agent.turn('t3', 'read notes/hello.txt');
    const result = read.find((event) => event.type === 'tool-result');
    assert.ok(result?.type === 'tool-result' && result.toolName === 'read_file');
    assert.deepEqual(result.output, { type: 'text', value: 'hi from the test' });
    assert.equal(finalText(read), 'The read_file tool returned: hi from the test');
  });

  it('keeps memory and a notes file across turns', async () => {
    const remembered = await agent.turn('t4', 'remember the deploy key is in vault');
    assert.deepEqual(agentState(remembered), { turns: 4, facts: ['the deploy key is in vault'] });
    const recalled = await agent.turn('t5', 'what do you remember?');
    assert.equal(finalText(recalled), 'I remember: the deploy key is in vault.');
    assert.equal(agentState(recalled).turns, 5);
    const notes = await readFile(join(directory, 'work', 'agent-notes.md'), 'utf8');
    assert.deepEqual(notes.trim().split('\n'), [
      '- turn 1: run: echo torpor-$((6*7))',
      '- turn 2: write notes/hello.txt: hi from the test',
      '- turn 3: read notes/hello.txt',
      '- turn 4: remember the deploy key is in vault',
      '- turn 5: what do you remember?',
    ]);
  });

  it('asks to sleep through a 429 and finishes the turn after the wake', async () => {
    const { events } = agent;
    const start = events.length;
    const sent = Date.now();
    agent.send({ type: 'message', turnId: 't6', message: { role: 'user', content: 'rate-limit 2' } });
    const sleep = await agent.until(() => events.slice(start).find((event) => event.type === 'sleep-until'), 'sleep-until');
    assert.ok(sleep.type === 'sleep-until');
    const ahead = Date.parse(sleep.until) - sent;
    assert.ok(ahead >= 1500 && ahead <= 3500, `about 2 s ahead, got ${ahead} ms`);
    assert.equal(sleep.turnId, 't6');
    // Asleep: nothing more happens until the host wakes it (here, at once: no VM to restore).
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!events.slice(start).some((event) => event.type === 'turn-finish'));
    agent.send({ type: 'wake', reason: 'timer' });
    await agent.until(() => events.slice(start).find((event) => event.type === 'turn-finish'), 'turn-finish after the wake');
    assert.equal(finalText(events.slice(start)), 'Done waiting: the rate limit of 2 s is over.');
  });

  it('produced only events the log accepts, and exits on shutdown', async () => {
    const entries = agent.events.flatMap((event) => eventToEntries(event));
    assert.deepEqual(
      entries.filter((entry) => entry.kind === 'error'),
      [],
    );
    assert.ok(entries.length > 10);
    assert.equal(await agent.shutdown(), 0);
    assert.match(agent.stderr, /coding agent: session e2e/);
  });

  it("rebuilds its memory from the log's history on a fresh process", async () => {
    // What the host would have logged: each user message, then what eventToEntries made of the events.
    const history: Entry[] = [];
    for (const event of agent.events) {
      if (event.type === 'turn-start') history.push({ kind: 'message', role: 'user', content: userMessages[event.turnId], metadata: { turnId: event.turnId } });
      history.push(...eventToEntries(event));
    }
    const rebuilt = new AgentProcess('e2e', history);
    try {
      const recalled = await rebuilt.turn('t7', 'what do you remember?');
      assert.equal(finalText(recalled), 'I remember: the deploy key is in vault.');
      assert.deepEqual(agentState(recalled), { turns: 7, facts: ['the deploy key is in vault'] });
      assert.match(rebuilt.stderr, /rebuilt from \d+ log entries \(6 turns\)/);
      assert.equal(await rebuilt.shutdown(), 0);
    } finally {
      rebuilt.kill();
    }
  });
});

const userMessages: Record<string, string> = {
  t1: 'run: echo torpor-$((6*7))',
  t2: 'write notes/hello.txt: hi from the test',
  t3: 'read notes/hello.txt',
  t4: 'remember the deploy key is in vault',
  t5: 'what do you remember?',
  t6: 'rate-limit 2',
};
