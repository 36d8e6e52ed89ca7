import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { statfs } from 'node:fs/promises';
import { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { SessionManager } from '../session/session-manager.ts';
import type { AgentSessionRecord } from '../session/session-store.ts';
import { listMachines, prepareHost } from '../runtime/machines.ts';
import { listSnapshots, storeUsage, type SnapshotUsage } from '../snapshot/snapshot-store.ts';
import { runDoctorChecks } from '../host/doctor.ts';
import { memoryDirectory, stateHome } from '../state/paths.ts';
import { appPage } from './pages.ts';
import { securityHeaders, stateDirectoryToken } from './dashboard-login.ts';
import { SessionHistory } from './session-history.ts';
import { buildTimeline } from './session-timeline.ts';
import type { HostView, MachinesView, SessionDetail, SessionView } from './client/shapes.ts';

export interface DashboardRoutesOptions {
  sessions: SessionManager;
  /** Interval of SSE keep-alive comments. Default 15 s. */
  heartbeatMs?: number;
  /** Where session histories are kept (default: session-history/ in the state directory). */
  historyDirectory?: string;
  /** Create the state directory's API token if missing (default true). */
  ensureToken?: boolean;
}

function sessionView(record: AgentSessionRecord, usage?: SnapshotUsage[]): SessionView {
  const snapshotUsage = record.snapshot ? usage?.find((each) => each.name === record.snapshot) : undefined;
  return {
    id: record.id,
    name: record.name,
    state: record.state,
    image: record.spec.image,
    turns: record.turns,
    machineId: record.machineId,
    snapshot: record.snapshot,
    wakeAt: record.wakeAt,
    note: record.note,
    parentId: record.parentId,
    createdAt: record.createdAt,
    lastActivityAt: record.lastActivityAt,
    ...(snapshotUsage ? { storedBytes: { referenced: snapshotUsage.referencedBytes, exclusive: snapshotUsage.exclusiveBytes } } : {}),
  };
}

const numberOf = (value: unknown) => (typeof value === 'number' ? value : undefined);

/**
 * The dashboard's pages (one HTML shell; the bundle draws each page) and the JSON they read under
 * /ui/api: sessions with their stored bytes, one session's history and timeline, machines and
 * snapshots, the host. Live updates come as SSE from /ui/api/events. Actions (send, fork, delete)
 * use the public session API under /v1/sessions, so the dashboard can do nothing a client cannot.
 * Sign-in is checked in front of these routes (dashboard-login.ts).
 */
export function createDashboardRoutes(options: DashboardRoutesOptions): Hono {
  const { sessions } = options;
  const heartbeatMs = options.heartbeatMs ?? 15_000;
  const history = new SessionHistory(sessions, options.historyDirectory);
  // The token the login asks for must exist before anyone is asked for it (the API's own auth, when
  // present, creates the same file first; this only fills in when nothing did).
  if (options.ensureToken !== false) stateDirectoryToken();
  const app = new Hono();
  // One listener on the manager fans out to every open page: a listener per page would trip
  // EventEmitter's leak warning at the eleventh tab.
  const subscribers = new Set<(record: AgentSessionRecord) => void>();
  sessions.on('change', (record) => {
    for (const subscriber of subscribers) subscriber(record);
  });

  const shell = () => new Response(appPage, { headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...securityHeaders } });
  // Not /sessions: that reads as an unversioned alias of the API's /v1/sessions, which does not exist.
  for (const path of ['/', '/session/:id', '/machines', '/host']) app.get(path, shell);

  app.get('/ui/api/sessions', async (context) => {
    const usage = (await storeUsage()).snapshots;
    return context.json({ sessions: sessions.list().map((record) => sessionView(record, usage)) });
  });

  app.get('/ui/api/sessions/:id', async (context) => {
    const record = sessions.get(context.req.param('id'));
    await history.settled();
    const events = history.read(record.id);
    const detail: SessionDetail = { session: sessionView(record, (await storeUsage()).snapshots), history: events, timeline: buildTimeline(events) };
    return context.json(detail);
  });

  app.get('/ui/api/machines', async (context) => {
    const [machines, manifests, usage] = await Promise.all([listMachines(), listSnapshots(), storeUsage()]);
    const view: MachinesView = {
      machines: machines
        .filter(({ config }) => !config.spare) // the host's spare pool, not the user's machines (torpor system pool)
        .map(({ config, state }) => ({
          id: config.id,
          name: config.name,
          image: config.image.reference,
          status: state.status,
          exitCode: state.exitCode,
          error: state.error,
          cpus: config.cpus,
          memoryMiB: config.memoryMiB,
          accelerator: config.accelerator,
          startedAt: state.startedAt,
          createdAt: config.createdAt,
        })),
      snapshots: manifests.map((manifest) => {
        const used = usage.snapshots.find((each) => each.name === manifest.name);
        const referencedBytes = used?.referencedBytes ?? 0;
        const exclusiveBytes = used?.exclusiveBytes ?? 0;
        return {
          name: manifest.name,
          createdAt: manifest.createdAt,
          machine: (manifest.metadata as { machine?: { name?: string } }).machine?.name,
          parent: manifest.parent,
          memoryBytes: manifest.memory.size,
          newBytes: numberOf((manifest.stats as unknown as Record<string, unknown>).newCompressedBytes),
          referencedBytes,
          exclusiveBytes,
          sharedBytes: referencedBytes - exclusiveBytes,
        };
      }),
      store: { chunks: usage.chunks, bytes: usage.bytes },
    };
    return context.json(view);
  });

  app.get('/ui/api/host', async (context) => {
    const processors = cpus();
    const [usage, doctor, accelerator] = await Promise.all([
      storeUsage(),
      runDoctorChecks(),
      // The same probe `torpor run` and `torpor doctor` use; cached after the first time.
      prepareHost().then(
        (host) => ({ name: host.accelerator.accelerator, reason: host.accelerator.reason }),
        (error: Error) => ({ error: error.message }),
      ),
    ]);
    const space = (path: string) => statfs(path).then((info) => ({ totalBytes: info.blocks * info.bsize, freeBytes: info.bavail * info.bsize }));
    const tmpfs = await space(memoryDirectory()).then(
      (info) => ({ path: memoryDirectory(), ...info }),
      (error: Error) => ({ path: memoryDirectory(), error: error.message }),
    );
    const disk = await space(stateHome()).catch(() => undefined);
    const view: HostView = {
      cpu: { model: processors[0]?.model ?? 'unknown', count: processors.length, loadAverage: loadavg() },
      memory: { totalBytes: totalmem(), freeBytes: freemem() },
      tmpfs,
      store: {
        path: stateHome(),
        chunks: usage.chunks,
        bytes: usage.bytes,
        ...(disk ? { diskTotalBytes: disk.totalBytes, diskFreeBytes: disk.freeBytes } : {}),
      },
      accelerator,
      doctor,
    };
    return context.json(view);
  });

  // Every change of every session, as it happens: the sessions table and a session's page follow it.
  app.get('/ui/api/events', (context) => {
    context.header('Cache-Control', 'no-store');
    context.header('X-Accel-Buffering', 'no');
    return streamSSE(context, async (stream) => {
      let sequence = 0;
      const send = (record: AgentSessionRecord, usage?: SnapshotUsage[]) =>
        stream.writeSSE({ event: 'session', id: String(sequence++), data: JSON.stringify(sessionView(record, usage)) }).catch(() => undefined);
      // One chain per connection: a change that waits for its stored bytes must not be overtaken
      // by the next one, or the page would end on a state the session already left.
      let queue: Promise<unknown> = Promise.resolve();
      const onChange = (record: AgentSessionRecord) => {
        // Stored bytes change only with a new snapshot: look them up then, not on every change.
        const usage =
          record.state === 'hibernated' || record.state === 'deleted'
            ? storeUsage().then(
                (found) => found.snapshots,
                () => undefined,
              )
            : Promise.resolve(undefined);
        queue = queue.then(() => usage).then((found) => send(record, found));
      };
      subscribers.add(onChange);
      const heartbeat = setInterval(() => void stream.write(': keep-alive\n\n').catch(() => undefined), heartbeatMs);
      await stream.writeSSE({ event: 'ready', data: '{}' });
      await new Promise<void>((resolve) => stream.onAbort(resolve));
      clearInterval(heartbeat);
      subscribers.delete(onChange);
    });
  });

  return app;
}
