import { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import { z } from 'zod';
import { TorporError } from '../util/errors.ts';
import { parseMemory } from '../runtime/run-options.ts';
import { machineDefaults } from '../config/machine-defaults.ts';
import { sessionNetworkOptions } from '../session/session-network.ts';
import { storeUsage } from '../snapshot/snapshot-store.ts';
import type { SessionManager, SessionEvent } from '../session/session-manager.ts';
import type { AgentSessionRecord } from '../session/session-store.ts';
import { parseDiskSize } from '../runtime/limits.ts';

const createSessionBody = z.strictObject({
  image: z.string().min(1),
  command: z.array(z.string()).min(1),
  env: z.array(z.string().regex(/^[^=]+=/, 'KEY=VALUE')).default([]),
  name: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/)
    .optional(),
  resources: z
    .strictObject({
      cpus: z.number().int().min(1).max(64).default(machineDefaults.cpus),
      memory: z.string().default(machineDefaults.memory),
      disk: z.string().max(32).optional(),
    })
    .default({ cpus: machineDefaults.cpus, memory: machineDefaults.memory }),
  idle: z.union([z.number().nonnegative(), z.string().regex(/^\d+(\.\d+)?(ms|s|m|h)?$/)]).default(machineDefaults.sessionIdleSeconds),
  /** Default: the public internet only. `{ allowHost: [11434] }` lets the agent reach a host service at 10.0.2.2. */
  network: z
    .strictObject({
      mode: z.enum(['user', 'none', 'unrestricted']).optional(),
      allowHost: z.array(z.union([z.number().int(), z.string()])).optional(),
      egressAllow: z.array(z.string()).optional(),
      egressDeny: z.array(z.string()).optional(),
    })
    .optional(),
});

const sendMessageBody = z.strictObject({ content: z.string().min(1) });

/** "30s", "5m", 45 -> seconds. */
export function parseIdle(value: number | string): number {
  if (typeof value === 'number') return value;
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value)!;
  const amount = Number(match[1]);
  return { ms: amount / 1000, s: amount, m: amount * 60, h: amount * 3600 }[match[2] ?? 's']!;
}

/** A request body that does not match its schema: 400, with every issue in the message. */
function invalidRequest(message: string): TorporError {
  return new TorporError('invalid-request', message, { status: 400 });
}

/** A session as the API shows it: its record plus what its snapshot costs in the store. */
async function describe(record: AgentSessionRecord) {
  const usage = record.snapshot ? (await storeUsage()).snapshots.find((snapshot) => snapshot.name === record.snapshot) : undefined;
  return {
    ...record,
    lastSnapshot: record.snapshot,
    storedBytes: usage ? { referenced: usage.referencedBytes, exclusive: usage.exclusiveBytes } : undefined,
  };
}

/**
 * The session API: create, message (SSE), inspect, fork, delete. The log itself is under /v1/logs.
 * Errors are thrown, and answered by the app's one error handler (`answerError`).
 */
export function createSessionRoutes(manager: SessionManager): Hono {
  const app = new Hono();

  app.post('/', async (context) => {
    const parsed = createSessionBody.safeParse(await context.req.json().catch(() => undefined));
    if (!parsed.success) throw invalidRequest(parsed.error.issues.map((issue) => `${issue.path.join('.') || 'body'}: ${issue.message}`).join('; '));
    const body = parsed.data;
    sessionNetworkOptions(body.network); // bad ranges or ports: a 400 now, not a failed machine later
    const record = await manager.create(
      {
        image: body.image,
        command: body.command,
        env: body.env,
        cpus: body.resources.cpus,
        memoryMiB: parseMemory(body.resources.memory),
        ...(body.resources.disk !== undefined ? { diskGiB: parseDiskSize(body.resources.disk, 'resources.disk') } : {}),
        idleSeconds: parseIdle(body.idle),
        ...(body.network ? { network: body.network } : {}),
      },
      { name: body.name },
    );
    return context.json(await describe(record), 201);
  });

  app.get('/', async (context) => context.json({ sessions: await Promise.all(manager.list().map(describe)) }));

  app.get('/:id', async (context) => context.json(await describe(manager.get(context.req.param('id')))));

  app.get('/:id/log', (context) => {
    const record = manager.get(context.req.param('id'));
    const query = new URL(context.req.url).search;
    return context.redirect(`/v1/logs/${encodeURIComponent(record.id)}${query}`, 307);
  });

  app.post('/:id/messages', async (context) => {
    const parsed = sendMessageBody.safeParse(await context.req.json().catch(() => undefined));
    if (!parsed.success) throw invalidRequest('body must be {"content": "..."}');
    const record = manager.get(context.req.param('id'));
    if (!(context.req.header('accept') ?? '').includes('text/event-stream')) return context.json(await manager.send(record.id, parsed.data.content));
    return streamSSE(context, async (stream) => {
      let sequence = 0;
      const write = (event: SessionEvent) => void stream.writeSSE({ event: event.type, data: JSON.stringify(event), id: String(sequence++) });
      try {
        await manager.send(record.id, parsed.data.content, write);
      } catch (error) {
        write({ type: 'error', message: (error as Error).message, ...(error instanceof TorporError ? { code: error.code } : {}) });
      }
    });
  });

  app.post('/:id/fork', async (context) => {
    const body = (await context.req.json().catch(() => ({}))) as { name?: string; atTurn?: unknown };
    if (body.atTurn !== undefined && !(Number.isSafeInteger(body.atTurn) && (body.atTurn as number) >= 0)) {
      throw invalidRequest('atTurn must be a turn number (0 or more)');
    }
    return context.json(await describe(await manager.fork(context.req.param('id'), { name: body.name, atTurn: body.atTurn as number | undefined })), 201);
  });

  app.delete('/:id', async (context) => {
    await manager.delete(context.req.param('id'));
    return context.body(null, 204);
  });

  return app;
}
