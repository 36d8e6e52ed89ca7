import { EventEmitter } from 'node:events';
import type { AgentClient } from '../guest/agent-client.ts';
import { connectToMachine } from '../runtime/machines.ts';
import { attachToMainProcess, type AttachedProcess } from '../runtime/attach.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';
import { BoundedLineSplitter, agentMaxLineBytes } from './bounded-lines.ts';

/**
 * The host end of a session's agent program: JSON lines to its stdin, JSON lines from its stdout,
 * carried over the machine's guest channel (which, unlike TCP, survives snapshot and restore).
 */
export class AgentConnection extends EventEmitter<{ event: [Record<string, unknown>]; exit: [number]; stderr: [string] }> {
  private readonly lines = new BoundedLineSplitter(agentMaxLineBytes());

  private constructor(
    readonly machine: MachineConfig,
    private readonly client: AgentClient,
    private readonly process: AttachedProcess,
  ) {
    super();
    process.exited.then((code) => this.emit('exit', code));
  }

  static async open(machine: MachineConfig): Promise<AgentConnection> {
    const client = await connectToMachine(machine);
    let connection: AgentConnection | undefined;
    const early: Buffer[] = [];
    const attached = await attachToMainProcess(client, {
      stdout: (data) => (connection ? connection.receive(data) : early.push(data)),
      stderr: (data) => connection?.emit('stderr', data.toString()),
    });
    connection = new AgentConnection(machine, client, attached);
    for (const data of early) connection.receive(data);
    return connection;
  }

  private receive(data: Buffer): void {
    const { lines, dropped } = this.lines.push(data);
    for (const bytes of dropped) {
      // The program's event is lost; say so in the turn (and the log) instead of buffering it.
      this.emit('event', { type: 'error', code: 'agent-line-too-long', message: `the agent printed a line of ${bytes} bytes to stdout; lines over ${this.lines.maxLineBytes} bytes are dropped (TORPOR_AGENT_MAX_LINE)` });
    }
    for (const line of lines) {
      const text = line.trim();
      if (!text) continue;
      try {
        const event = JSON.parse(text) as Record<string, unknown>;
        if (typeof event.type === 'string') this.emit('event', event);
        else this.emit('stderr', `not an agent event: ${text}\n`);
      } catch {
        // A stray print to stdout: keep it visible, never let it break the session.
        this.emit('stderr', `${text}\n`);
      }
    }
  }

  send(message: Record<string, unknown>): void {
    this.process.write(Buffer.from(JSON.stringify(message) + '\n'));
  }

  /** Resolves with the first event that `accept` takes, or rejects when the program exits or time runs out. */
  waitFor(accept: (event: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`the agent program did not answer within ${timeoutMs} ms`)), timeoutMs);
      const onEvent = (event: Record<string, unknown>) => {
        if (accept(event)) finish(undefined, event);
      };
      const onExit = (code: number) => finish(new Error(`the agent program exited (code ${code})`));
      const finish = (error?: Error, event?: Record<string, unknown>) => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('exit', onExit);
        if (error) reject(error);
        else resolve(event!);
      };
      this.on('event', onEvent);
      this.on('exit', onExit);
    });
  }

  close(): void {
    this.client.close();
  }
}
