import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startDevLlm, type DevLlmServer } from "../../src/dev-llm/server.ts";
import { eventToEntries } from "../../src/session/agent-events-to-entries.ts";
import { encodeLine, parseAgentEvent, type AgentEvent, type HostMessage } from "../../src/session/agent-protocol.ts";
import { buildCodingAgent } from "./build.ts";

/**
 * End to end on the host (no VM): the bundled agent as a real child process, the dev LLM on
 * loopback, and the test speaking the protocol to its stdin and stdout as torpor would.
 */
let llm: DevLlmServer;
let directory: string;
let child: ChildProcessWithoutNullStreams;
const events: AgentEvent[] = [];
let stderr = "";
let waiters: Array<() => void> = [];

function send(message: HostMessage): void {
  child.stdin.write(encodeLine(message));
}

async function until<T>(find: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = find();
    if (found !== undefined) return found;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(events.slice(-5))}; stderr: ${stderr}`);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 200);
      waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Sends a message and returns the turn's events once it finishes. */
async function turn(turnId: string, content: string): Promise<AgentEvent[]> {
  const start = events.length;
  send({ type: "message", turnId, message: { role: "user", content } });
  await until(() => events.slice(start).find((event) => event.type === "turn-finish" && event.turnId === turnId), `turn-finish of ${turnId}`);
  return events.slice(start);
}

function finalText(turnEvents: AgentEvent[]): string {
  const finishes = turnEvents.filter((event) => event.type === "message-finish");
  const last = finishes.at(-1);
  if (last?.type !== "message-finish" || typeof last.message.content === "string") return typeof last?.message.content === "string" ? last.message.content : "";
  return last.message.content.flatMap((part) => (part.type === "text" ? [part.text] : [])).join("");
}

function agentState(turnEvents: AgentEvent[]): { turns: number; facts: string[] } {
  const append = turnEvents.find((event) => event.type === "entries-append");
  assert.ok(append?.type === "entries-append" && append.entries[0].kind === "metadata");
  const { turns, facts } = (append.entries[0] as unknown as { data: { agentState: { turns: number; facts: string[] } } }).data.agentState;
  return { turns, facts };
}

before(async () => {
  llm = await startDevLlm();
  // Outside the repository, so that no node_modules is within reach: the bundle must be self-contained.
  directory = await mkdtemp(join(tmpdir(), "torpor-coding-agent-"));
  const bundle = await buildCodingAgent(join(directory, "agent.mjs"));
  const environment: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: directory, OPENAI_BASE_URL: llm.url, AGENT_WORKDIR: join(directory, "work") };
  await import("node:fs/promises").then((fs) => fs.mkdir(join(directory, "work")));
  child = spawn(process.execPath, [bundle], { cwd: directory, env: environment, stdio: ["pipe", "pipe", "pipe"] });
  let buffer = "";
  child.stdout.on("data", (data: Buffer) => {
    buffer += data.toString();
    const lines = buffer.split("\n");
    buffer = lines.pop()!;
    for (const line of lines) events.push(parseAgentEvent(line));
    for (const wake of waiters.splice(0)) wake();
  });
  child.stderr.on("data", (data: Buffer) => (stderr += data.toString()));
  send({ type: "hello", protocol: 1, sessionId: "e2e" });
});

after(async () => {
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await llm.close();
  await rm(directory, { recursive: true, force: true });
});

describe("coding agent example, bundled, over the protocol", { timeout: 20_000 }, () => {
  it("runs a shell command with the shell tool", async () => {
    const events = await turn("t1", "run: echo torpor-$((6*7))");
    assert.equal(events[0].type, "turn-start");
    const call = events.find((event) => event.type === "tool-call");
    assert.ok(call?.type === "tool-call" && call.toolName === "shell");
    assert.deepEqual(call.input, { command: "echo torpor-$((6*7))" });
    const result = events.find((event) => event.type === "tool-result");
    assert.ok(result?.type === "tool-result" && result.output.type === "json");
    assert.deepEqual(result.output.value, { exitCode: 0, stdout: "torpor-42\n", stderr: "" });
    assert.ok(events.findIndex((event) => event.type === "message-finish") < events.indexOf(result), "the call is logged before its result");
    assert.match(finalText(events), /torpor-42/);
    assert.ok(events.some((event) => event.type === "text-delta"));
    assert.ok(events.some((event) => event.type === "usage" && event.inputTokens! > 0));
    assert.deepEqual(agentState(events), { turns: 1, facts: [] });
  });

  it("writes and reads files in its working directory", async () => {
    const written = await turn("t2", "write notes/hello.txt: hi from the test");
    assert.ok(written.some((event) => event.type === "tool-call" && event.toolName === "write_file"));
    assert.equal(await readFile(join(directory, "work", "notes/hello.txt"), "utf8"), "hi from the test");
    const read = await turn("t3", "read notes/hello.txt");
    const result = read.find((event) => event.type === "tool-result");
    assert.ok(result?.type === "tool-result" && result.toolName === "read_file");
    assert.deepEqual(result.output, { type: "text", value: "hi from the test" });
    assert.equal(finalText(read), "The read_file tool returned: hi from the test");
  });

  it("keeps memory and a notes file across turns", async () => {
    const remembered = await turn("t4", "remember the deploy key is in vault");
    assert.deepEqual(agentState(remembered), { turns: 4, facts: ["the deploy key is in vault"] });
    const recalled = await turn("t5", "what do you remember?");
    assert.equal(finalText(recalled), "I remember: the deploy key is in vault.");
    assert.equal(agentState(recalled).turns, 5);
    const notes = await readFile(join(directory, "work", "agent-notes.md"), "utf8");
    assert.deepEqual(notes.trim().split("\n"), [
      "- turn 1: run: echo torpor-$((6*7))",
      "- turn 2: write notes/hello.txt: hi from the test",
      "- turn 3: read notes/hello.txt",
      "- turn 4: remember the deploy key is in vault",
      "- turn 5: what do you remember?",
    ]);
  });

  it("asks to sleep through a 429 and finishes the turn after the wake", async () => {
    const start = events.length;
    const sent = Date.now();
    send({ type: "message", turnId: "t6", message: { role: "user", content: "rate-limit 2" } });
    const sleep = await until(() => events.slice(start).find((event) => event.type === "sleep-until"), "sleep-until");
    assert.ok(sleep.type === "sleep-until");
    const ahead = Date.parse(sleep.until) - sent;
    assert.ok(ahead >= 1500 && ahead <= 3500, `about 2 s ahead, got ${ahead} ms`);
    assert.equal(sleep.turnId, "t6");
    // Asleep: nothing more happens until the host wakes it (here, at once: no VM to restore).
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!events.slice(start).some((event) => event.type === "turn-finish"));
    send({ type: "wake", reason: "timer" });
    await until(() => events.slice(start).find((event) => event.type === "turn-finish"), "turn-finish after the wake");
    assert.equal(finalText(events.slice(start)), "Done waiting: the rate limit of 2 s is over.");
  });

  it("produced only events the log accepts, and exits on shutdown", async () => {
    const entries = events.flatMap((event) => eventToEntries(event));
    assert.deepEqual(entries.filter((entry) => entry.kind === "error"), []);
    assert.ok(entries.length > 10);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    send({ type: "shutdown" });
    assert.equal(await exited, 0);
    assert.match(stderr, /coding agent: session e2e/);
  });
});
