import { Hono, type Context } from 'hono';
import { stream as streamBody } from 'hono/streaming';
import { z } from 'zod';
import { TorporError } from '../util/errors.ts';
import { GuestError } from '../guest/agent-client.ts';
import { parseEnvironment, parseMemory } from '../runtime/run-options.ts';
import { connectToMachine, createMachine, effectiveState, findMachine, listMachines, removeMachine, startMachine, stopMachine } from '../runtime/machines.ts';
import { forkMachine, restoreMachine, snapshotMachine } from '../runtime/snapshots.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';
import type { SupervisorPool } from '../runtime/supervisor-pool.ts';

/**
 * Machines over HTTP (/v1/machines): what `torpor run / exec / cp / snapshot / restore / fork / rm`
 * do, for apps and the typed client. Exec streams its output as Server-Sent Events; files travel
 * as raw bytes.
 */

const resources = z.strictObject({ cpus: z.number().int().min(1).max(64).default(1), memory: z.string().default('512m') });
const createBody = z.strictObject({
  image: z.string().min(1).max(512),
  name: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/)
    .optional(),
  command: z.array(z.string()).optional(),
  env: z.array(z.string()).default([]),
  workdir: z.string().optional(),
  user: z.string().optional(),
  network: z.boolean().default(false),
  resources: resources.default({ cpus: 1, memory: '512m' }),
});
const execBody = z.strictObject({
  command: z.array(z.string()).min(1),
  env: z.array(z.string()).default([]),
  workdir: z.string().optional(),
  user: z.string().optional(),
  /** Written to the command's standard input, then closed. */
  stdin: z.string().optional(),
});
const snapshotBody = z.strictObject({ name: z.string().min(1).max(200), stop: z.boolean().default(false), replace: z.boolean().default(false) });
const restoreBody = z.strictObject({
  snapshot: z.string().min(1).max(200),
  name: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/)
    .optional(),
});
const forkBody = z.strictObject({
  count: z.number().int().min(1).max(16).default(1),
  namePrefix: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}$/)
    .optional(),
});

const statusByCode: Record<string, number> = {
  'machine-unknown': 404,
  'ambiguous-machine': 409,
  'image-unknown': 404,
  'snapshot-unknown': 404,
  'snapshot-exists': 409,
  'snapshot-name-invalid': 400,
  'name-taken': 409,
  'name-in-use': 409,
  'already-running': 409,
  'machine-running': 409,
  'not-running': 409,
  'no-such-file': 404,
  'invalid-memory': 400,
  'invalid-request': 400,
};

class RequestError extends TorporError {}

function answer(context: Context, error: unknown) {
  if (error instanceof TorporError) {
    const status = error instanceof RequestError ? 400 : (statusByCode[error.code] ?? (/invalid/.test(error.code) ? 400 : 500));
    return context.json({ error: { code: error.code, message: error.message, hint: error.hint } }, status as 400);
  }
  if (error instanceof GuestError) return context.json({ error: { code: 'guest-error', message: error.message } }, (error.errno === 2 ? 404 : 400) as 400);
  return context.json({ error: { code: 'internal', message: (error as Error).message } }, 500);
}

async function parse<T>(context: Context, schema: z.ZodType<T>): Promise<T> {
  const parsed = schema.safeParse(await context.req.json().catch(() => undefined));
  if (!parsed.success)
    throw new RequestError('invalid-request', parsed.error.issues.map((issue) => `${issue.path.join('.') || 'body'}: ${issue.message}`).join('; '));
  return parsed.data;
}

/**
 * A machine named in a URL: a name or an id (prefix). Checked before it reaches the state
 * directory, where names are file names: "../x" must not walk out of it.
 */
async function machineOf(context: Context): Promise<MachineConfig> {
  const reference = context.req.param('machine') ?? '';
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/.test(reference) || reference.includes('..')) {
    throw new RequestError('invalid-request', `not a machine name or id: ${JSON.stringify(reference.slice(0, 100))}`, {
      hint: 'list machines with GET /v1/machines',
    });
  }
  return findMachine(reference);
}

function guestPathOf(context: Context): string {
  const path = context.req.query('path');
  if (!path || !path.startsWith('/') || path.includes('\0'))
    throw new RequestError('invalid-request', 'path must be an absolute path in the machine, e.g. ?path=/root/notes.md');
  return path;
}

async function describe(config: MachineConfig) {
  return { ...config, state: await effectiveState(config) };
}

export function createMachineRoutes(
  options: {
    maxFileBytes?: number;
    /** the host's spare supervisors (shared with session wakes): restores and forks take theirs from it */
    pool?: SupervisorPool;
  } = {},
): Hono {
  const maxFileBytes = options.maxFileBytes ?? 256 * 1024 * 1024;
  const app = new Hono();

  // Spare machines (started, waiting for a `run` to claim them) are the host's, not the user's: listed
  // only on request, as `torpor ps --spares` does.
  app.get('/', async (context) => {
    const withSpares = context.req.query('spares') === 'true';
    const machines = (await listMachines()).filter((view) => withSpares || !view.config.spare);
    return context.json({ machines: machines.map((view) => ({ ...view.config, state: view.state })) });
  });

  app.post('/', async (context) => {
    try {
      const body = await parse(context, createBody);
      const config = await createMachine({
        image: body.image,
        name: body.name,
        command: body.command,
        env: parseEnvironment(body.env),
        workingDir: body.workdir,
        user: body.user,
        network: body.network,
        cpus: body.resources.cpus,
        memoryMiB: parseMemory(body.resources.memory),
      });
      try {
        await startMachine(config.id);
      } catch (error) {
        await removeMachine(config, { force: true }).catch(() => {});
        throw error;
      }
      return context.json(await describe(config), 201);
    } catch (error) {
      return answer(context, error);
    }
  });

  app.post('/restore', async (context) => {
    try {
      const body = await parse(context, restoreBody);
      return context.json(await describe(await restoreMachine(body.snapshot, { name: body.name, pool: options.pool })), 201);
    } catch (error) {
      return answer(context, error);
    }
  });

  app.get('/:machine', async (context) => {
    try {
      return context.json(await describe(await machineOf(context)));
    } catch (error) {
      return answer(context, error);
    }
  });

  app.post('/:machine/exec', async (context) => {
    let config: MachineConfig;
    let body: z.infer<typeof execBody>;
    try {
      config = await machineOf(context);
      body = await parse(context, execBody);
    } catch (error) {
      return answer(context, error);
    }
    const environment = new Map(config.env.map((entry) => [entry.slice(0, entry.indexOf('=')), entry]));
    for (const entry of parseEnvironment(body.env)) environment.set(entry.slice(0, entry.indexOf('=')), entry);
    const request = {
      argv: body.command,
      env: [...environment.values()],
      workingDirectory: body.workdir ?? config.workingDir,
      user: body.user ?? config.user,
      tty: false,
      stdin: body.stdin !== undefined,
    };
    let client: Awaited<ReturnType<typeof connectToMachine>>;
    try {
      client = await connectToMachine(config);
    } catch (error) {
      return answer(context, error);
    }
    const streaming = (context.req.header('accept') ?? '').includes('text/event-stream');
    if (!streaming) {
      // Buffered: one JSON answer with the whole output and the exit code.
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      try {
        const remote = client.exec(request, { stdout: (data) => stdout.push(data), stderr: (data) => stderr.push(data) });
        if (body.stdin !== undefined) {
          remote.write(Buffer.from(body.stdin));
          remote.endInput();
        }
        const status = await remote.exited;
        return context.json({
          exitCode: status.code,
          signal: status.signal,
          stdout: Buffer.concat(stdout).toString('utf8'),
          stderr: Buffer.concat(stderr).toString('utf8'),
        });
      } catch (error) {
        return answer(context, error);
      } finally {
        client.close();
      }
    }
    context.header('Content-Type', 'text/event-stream');
    context.header('Cache-Control', 'no-cache');
    context.header('X-Accel-Buffering', 'no');
    const event = (name: string, data: unknown) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
    return streamBody(context, async (stream) => {
      try {
        const remote = client.exec(request, {
          stdout: (data) => void stream.write(event('stdout', { data: data.toString('utf8') })),
          stderr: (data) => void stream.write(event('stderr', { data: data.toString('utf8') })),
        });
        if (body.stdin !== undefined) {
          remote.write(Buffer.from(body.stdin));
          remote.endInput();
        }
        const status = await remote.exited;
        await stream.write(event('exit', { code: status.code, signal: status.signal }));
      } catch (error) {
        await stream.write(event('error', { message: (error as Error).message, ...(error instanceof GuestError ? { errno: error.errno } : {}) }));
      } finally {
        client.close();
      }
    });
  });

  app.get('/:machine/files', async (context) => {
    try {
      const path = guestPathOf(context);
      const config = await machineOf(context);
      const client = await connectToMachine(config);
      try {
        const chunks: Buffer[] = [];
        let size = 0;
        await client.readFile(path, (chunk) => {
          size += chunk.length;
          if (size > maxFileBytes) throw new RequestError('invalid-request', `${path} is larger than ${maxFileBytes} bytes; copy it with torpor cp`);
          chunks.push(chunk);
        });
        return context.body(new Uint8Array(Buffer.concat(chunks)), 200, { 'Content-Type': 'application/octet-stream' });
      } finally {
        client.close();
      }
    } catch (error) {
      return answer(context, error);
    }
  });

  app.put('/:machine/files', async (context) => {
    try {
      const path = guestPathOf(context);
      const config = await machineOf(context);
      const declared = Number(context.req.header('content-length') ?? '0');
      if (declared > maxFileBytes) throw new RequestError('invalid-request', `the body is larger than ${maxFileBytes} bytes; copy it with torpor cp`);
      const data = Buffer.from(await context.req.arrayBuffer());
      if (data.length > maxFileBytes) throw new RequestError('invalid-request', `the body is larger than ${maxFileBytes} bytes; copy it with torpor cp`);
      const modeText = context.req.query('mode');
      if (modeText !== undefined && !/^[0-7]{3,4}$/.test(modeText)) throw new RequestError('invalid-request', 'mode must be octal, e.g. 644 or 0755');
      const client = await connectToMachine(config);
      try {
        await client.writeFile(path, data, modeText === undefined ? 0o644 : parseInt(modeText, 8));
      } finally {
        client.close();
      }
      return context.json({ path, bytes: data.length }, 200);
    } catch (error) {
      return answer(context, error);
    }
  });

  app.post('/:machine/snapshot', async (context) => {
    try {
      const config = await machineOf(context);
      const body = await parse(context, snapshotBody);
      return context.json(await snapshotMachine(config, body), 201);
    } catch (error) {
      return answer(context, error);
    }
  });

  app.post('/:machine/fork', async (context) => {
    try {
      const config = await machineOf(context);
      const body = await parse(context, forkBody);
      const { forks, snapshot } = await forkMachine(config, { ...body, pool: options.pool });
      return context.json({ snapshot, forks: await Promise.all(forks.map(describe)) }, 201);
    } catch (error) {
      return answer(context, error);
    }
  });

  app.post('/:machine/stop', async (context) => {
    try {
      return context.json({ state: await stopMachine(await machineOf(context)) });
    } catch (error) {
      return answer(context, error);
    }
  });

  app.delete('/:machine', async (context) => {
    try {
      await removeMachine(await machineOf(context), { force: context.req.query('force') === 'true' });
      return context.body(null, 204);
    } catch (error) {
      return answer(context, error);
    }
  });

  return app;
}
