import { EventEmitter } from 'node:events';
import type { AgentClient } from '../guest/agent-client.ts';
import { connectToMachine } from '../runtime/machines.ts';
import { attachToMainProcess, type AttachedProcess } from '../runtime/attach.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';
import { AgentProtocolError, encodeLine, parseAgentEvent, type AgentEvent, type HostMessage } from './agent-protocol.ts';
import { BoundedLineSplitter, agentMaxLineBytes } from './bounded-lines.ts';

/** A line that looked like an agent event (a JSON object with a `type`) but broke the protocol. */
export interface InvalidAgentEvent {
  value: unknown;
  /** What is wrong with it, from the protocol's schema. */
  problem: string;
}

/**
 * The host end of a session's agent program: JSON lines to its stdin, JSON lines from its stdout,
 * carried over the machine's guest channel (which, unlike TCP, survives snapshot and restore).
 * The agent runs in the guest and is not trusted: every line is validated against the protocol's
 * schema here, at the boundary, so the rest of the host handles typed events only.
 */
export class AgentConnection extends EventEmitter<{ event: [AgentEvent]; invalid: [InvalidAgentEvent]; exit: [number]; stderr: [string] }> {
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
      this.emit('event', {
        type: 'error',
        code: 'agent-line-too-long',
        message: `the agent printed a line of ${bytes} bytes to stdout; lines over ${this.lines.maxLineBytes} bytes are dropped (TORPOR_AGENT_MAX_LINE)`,
      });
    }
    for (const line of lines) {
      const text = line.trim();
      if (!text) continue;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        // A stray print to stdout: keep it visible, never let it break the session.
        this.emit('stderr', `${text}\n`);
        continue;
      }
      if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string') {
        this.emit('stderr', `not an agent event: ${text}\n`);
        continue;
      }
      let event: AgentEvent;
      try {
        event = parseAgentEvent(value);
      } catch (error) {
        if (!(error instanceof AgentProtocolError)) throw error;
        this.emit('invalid', { value, problem: error.message });
        continue;
      }
      this.emit('event', event);
    }
  }

  send(message: HostMessage): void {
    this.process.write(Buffer.from(encodeLine(message)));
  }

  /** Resolves with the first event that `accept` takes, or rejects when the program exits or time runs out. */
  waitFor(accept: (event: AgentEvent) => boolean, timeoutMs: number): Promise<AgentEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`the agent program did not answer within ${timeoutMs} ms`)), timeoutMs);
      const onEvent = (event: AgentEvent) => {
        if (accept(event)) finish(undefined, event);
      };
      const onExit = (code: number) => finish(new Error(`the agent program exited (code ${code})`));
      const finish = (error?: Error, event?: AgentEvent) => {
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
