import { processExists } from '../../util/process-identity.ts';
import { existsSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import {
  ContextLogError,
  InvalidArgumentError,
  RemoteContextLog,
  contextLogPaths,
  openContextLog,
  stateDirectory,
  type ContextLogClient,
  type StoredEntry,
} from '../../context/index.ts';
import { environment as parseEnvironment } from '../../config/environment.ts';

/** Where commands read and write; tests pass their own. */
export interface CommandInputOutput {
  stdin: AsyncIterable<string | Buffer>;
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  environment: NodeJS.ProcessEnv;
  setExitCode(code: number): void;
  /** Resolves when the user interrupts (Ctrl-C); ends `--follow`. */
  interrupted(): Promise<void>;
}

export const processInputOutput: CommandInputOutput = {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  environment: process.env,
  setExitCode: (code) => {
    process.exitCode = code;
  },
  interrupted: () => new Promise((resolve) => process.once('SIGINT', () => resolve())),
};

export interface ServerInfo {
  url: string;
  pid: number;
  storage: string;
}

/**
 * The log to use: an explicit --url or TORPOR_URL; else a running `torpor serve` recorded in the
 * state directory (so the CLI sees what the server sees, PostgreSQL included); else the embedded
 * SQLite file, which needs no server at all.
 */
export async function openLogClient(options: { url?: string; token?: string }, environment: NodeJS.ProcessEnv): Promise<ContextLogClient> {
  const url = options.url ?? parseEnvironment(environment).TORPOR_URL;
  if (url) return new RemoteContextLog(url, { token: options.token, environment });
  const directory = stateDirectory(environment);
  const infoPath = contextLogPaths(directory).serverInfo;
  if (existsSync(infoPath)) {
    try {
      const info = JSON.parse(readFileSync(infoPath, 'utf8')) as ServerInfo;
      if (typeof info.url === 'string' && Number.isInteger(info.pid) && processExists(info.pid))
        return new RemoteContextLog(info.url, { token: options.token, environment });
    } catch {
      // A torn or stale file only means no server: fall back to the embedded store.
    }
  }
  return openContextLog({ stateDirectory: directory });
}

function parseCount(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  return Number(value);
}

async function readLines(input: AsyncIterable<string | Buffer>): Promise<string[]> {
  let text = '';
  for await (const chunk of input) text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
  return text.split('\n');
}

function oneLine(entry: StoredEntry['entry']): string {
  const clip = (text: string) => {
    const flat = text.replace(/\s+/g, ' ').trim();
    return flat.length > 100 ? `${flat.slice(0, 99)}…` : flat;
  };
  switch (entry.kind) {
    case 'message': {
      const content =
        typeof entry.content === 'string' ? entry.content : entry.content.map((part) => (part.type === 'text' ? part.text : `[${part.type}]`)).join(' ');
      return `${entry.role}: ${clip(content)}`;
    }
    case 'tool-call':
      return `${entry.toolName}(${clip(JSON.stringify(entry.input))}) id=${entry.toolCallId}`;
    case 'tool-result':
      return `id=${entry.toolCallId} ${entry.output.type}: ${clip(typeof entry.output.value === 'string' ? entry.output.value : JSON.stringify(entry.output.value))}`;
    case 'reasoning':
      return clip(entry.text);
    case 'error':
      return `${entry.code ? `${entry.code} ` : ''}${clip(entry.message)}`;
    case 'usage':
      return `in=${entry.inputTokens ?? '?'} out=${entry.outputTokens ?? '?'}${entry.model ? ` model=${entry.model}` : ''}`;
    case 'summary':
      return `covers [${entry.covers.from}, ${entry.covers.to}): ${clip(entry.text)}`;
    case 'metadata':
      return clip(JSON.stringify(entry.data));
  }
}

function formatEntry(stored: StoredEntry, json: boolean): string {
  if (json) return `${JSON.stringify(stored)}\n`;
  return `${String(stored.offset).padStart(6)}  ${stored.entry.kind.padEnd(11)}  ${oneLine(stored.entry)}\n`;
}

function parseTarget(target: string): { sessionId: string; offset?: number } {
  const at = target.lastIndexOf('@');
  if (at < 0) return { sessionId: target };
  return { sessionId: target.slice(0, at), offset: parseCount('the offset after @', target.slice(at + 1)) };
}

/** Registers `torpor log append|ls|show|fork`. */
export function registerLogCommands(program: Command, io: CommandInputOutput = processInputOutput): Command {
  const log = program.command('log').description('the context log: everything that went into and came out of the LLM, per session');
  log.option('--url <url>', 'talk to a torpor server at this URL (default: TORPOR_URL, a running `torpor serve`, or the local store)');
  log.option('--token <token>', "API token (default: TORPOR_TOKEN, or the local server's token in the state directory)");

  const run = (body: (client: ContextLogClient) => Promise<void>) => async () => {
    let client: ContextLogClient | undefined;
    try {
      client = await openLogClient(log.opts<{ url?: string; token?: string }>(), io.environment);
      await body(client);
    } catch (error) {
      const message = error instanceof ContextLogError ? error.message : `${(error as Error).message ?? error}`;
      io.stderr.write(`torpor: ${message}\n`);
      io.setExitCode(1);
    } finally {
      await client?.close();
    }
  };

  log
    .command('append')
    .description('append entries, one JSON object per line on stdin, as one all-or-nothing batch; prints their offsets')
    .argument('<session>', 'session id (created by its first append)')
    .option('--expected-offset <n>', "fail unless the session's next offset is n (optimistic concurrency)")
    .option('--producer <id>', 'idempotent producer id; with --epoch and --seq a retried append is not written twice')
    .option('--epoch <n>', 'producer epoch', '0')
    .option('--seq <n>', 'producer sequence number of this batch')
    .option('--json', 'print the whole result as JSON')
    .action((sessionId: string, options: { expectedOffset?: string; producer?: string; epoch: string; seq?: string; json?: boolean }) =>
      run(async (client) => {
        const entries: unknown[] = [];
        const lines = await readLines(io.stdin);
        lines.forEach((line, index) => {
          if (line.trim() === '') return;
          try {
            entries.push(JSON.parse(line));
          } catch (error) {
            throw new ContextLogError(
              'invalid-json',
              400,
              `line ${index + 1} of stdin is not JSON (${(error as Error).message}); give one JSON entry per line. Nothing was written.`,
            );
          }
        });
        if (entries.length === 0)
          throw new InvalidArgumentError('no entries on stdin; pipe one JSON entry per line, e.g. {"kind":"message","role":"user","content":"hi"}');
        let producer;
        if (options.producer !== undefined || options.seq !== undefined) {
          if (options.producer === undefined || options.seq === undefined)
            throw new InvalidArgumentError('--producer and --seq go together (with --epoch, default 0)');
          producer = { id: options.producer, epoch: parseCount('--epoch', options.epoch)!, sequence: parseCount('--seq', options.seq)! };
        }
        const result = await client.append(sessionId, entries, { expectedOffset: parseCount('--expected-offset', options.expectedOffset), producer });
        if (options.json) io.stdout.write(`${JSON.stringify(result)}\n`);
        else io.stdout.write(result.offsets.map((offset) => `${offset}\n`).join(''));
      })(),
    );

  log
    .command('ls')
    .description('list sessions')
    .option('--json', 'one JSON object per line')
    .action((options: { json?: boolean }) =>
      run(async (client) => {
        const sessions = await client.sessions();
        if (options.json) {
          io.stdout.write(sessions.map((session) => `${JSON.stringify(session)}\n`).join(''));
          return;
        }
        const rows = [
          ['SESSION', 'ENTRIES', 'FORKED FROM', 'CREATED'],
          ...sessions.map((session) => [
            session.id,
            String(session.nextOffset),
            session.parentId ? `${session.parentId}@${session.forkOffset}` : '-',
            session.createdAt,
          ]),
        ];
        const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
        io.stdout.write(
          rows.map((row) => `${row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]))).join('  ')}\n`).join(''),
        );
      })(),
    );

  log
    .command('show')
    .description("print a session's entries with their offsets")
    .argument('<session>', 'session id')
    .option('--from <n>', 'first offset to show', '0')
    .option('--limit <n>', 'show at most n entries')
    .option('-f, --follow', 'keep printing new entries as they are appended (Ctrl-C to stop)')
    .option('--json', 'one JSON object per line: {sessionId, offset, appendedAt, entry}')
    .action((sessionId: string, options: { from: string; limit?: string; follow?: boolean; json?: boolean }) =>
      run(async (client) => {
        const from = parseCount('--from', options.from) ?? 0;
        const limit = parseCount('--limit', options.limit);
        if (!options.follow) {
          const { entries } = await client.read(sessionId, { from, limit });
          for (const stored of entries) io.stdout.write(formatEntry(stored, Boolean(options.json)));
          return;
        }
        const controller = new AbortController();
        void io.interrupted().then(() => controller.abort());
        let shown = 0;
        for await (const stored of client.tail(sessionId, { from, signal: controller.signal })) {
          io.stdout.write(formatEntry(stored, Boolean(options.json)));
          if (limit !== undefined && ++shown >= limit) break;
        }
      })(),
    );

  log
    .command('fork')
    .description("start a new session that shares SESSION's entries before OFFSET (copy-on-write); prints the new id")
    .argument('<session@offset>', 'where to fork, e.g. chat-1@12 (without @offset: at the end)')
    .option('--name <new>', 'id of the new session (default: generated)')
    .action((target: string, options: { name?: string }) =>
      run(async (client) => {
        const { sessionId, offset } = parseTarget(target);
        const at = offset ?? (await client.describe(sessionId)).nextOffset;
        const session = await client.fork(sessionId, at, { name: options.name });
        io.stdout.write(`${session.id}\n`);
      })(),
    );

  return log;
}
