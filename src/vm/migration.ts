import { createServer, createConnection } from 'node:net';
import { rm, chown } from 'node:fs/promises';
import type { QmpClient } from './qmp.ts';

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

async function waitForMigration(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrationInfo>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? 'no reason given'}`);
    if (Date.now() > deadline) throw new Error(`migration did not complete within ${timeoutMs} ms (status ${info.status})`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/**
 * With x-ignore-shared, QEMU leaves guest RAM out of the migration stream because it lives in a
 * shared file (our tmpfs RAM file): what remains is the device state, tens of KB, in milliseconds.
 */
async function ignoreSharedMemory(qmp: QmpClient): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
}

/**
 * Everything of a device-state save that does not need the guest paused: the socket QEMU will
 * stream to, listening, and the x-ignore-shared capability set. A checkpoint prepares this before
 * `stop`, so the pause holds only the migration itself. `close` must follow, saved or not.
 */
export async function prepareDeviceStateSave(
  qmp: QmpClient,
  socketPath: string,
  options: { socketOwner?: { uid: number; gid: number } } = {},
): Promise<{ save: () => Promise<Buffer>; close: () => Promise<void> }> {
  await rm(socketPath, { force: true });
  const chunks: Buffer[] = [];
  let resolveReceived!: () => void;
  const received = new Promise<void>((resolve) => (resolveReceived = resolve));
  const server = createServer((socket) => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', resolveReceived);
    socket.on('error', resolveReceived);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  const close = async () => {
    server.close();
    await rm(socketPath, { force: true });
  };
  try {
    // A QEMU that dropped root (-runas) needs write access to the socket to connect to it.
    if (options.socketOwner) await chown(socketPath, options.socketOwner.uid, options.socketOwner.gid);
    await ignoreSharedMemory(qmp);
  } catch (error) {
    await close();
    throw error;
  }
  const save = async () => {
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    // QEMU marks the migration completed before it closes the stream: once the stream ended, one
    // look usually confirms it (polling from the start cost the pause a few ms of round trips).
    // (A slow poll beside it sees a migration that failed before it ever connected.)
    let ended = false;
    const watch = (async () => {
      for (let waited = 0; !ended && waited < 5000; waited += 20) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        if (ended) return;
        const info = await qmp.execute<MigrationInfo>('query-migrate');
        if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return;
      }
    })();
    await Promise.race([received, watch]);
    ended = true;
    await waitForMigration(qmp, 30_000);
    await Promise.race([received, new Promise((resolve) => setTimeout(resolve, 5000))]);
    return Buffer.concat(chunks);
  };
  return { save, close };
}

/** Saves the device state of a paused VM. QEMU 7.2 has no file: URI and we cannot pass fds from Node, so it streams to our unix socket. */
export async function saveDeviceState(qmp: QmpClient, socketPath: string, options: { socketOwner?: { uid: number; gid: number } } = {}): Promise<Buffer> {
  const prepared = await prepareDeviceStateSave(qmp, socketPath, options);
  try {
    return await prepared.save();
  } finally {
    await prepared.close();
  }
}

/** Loads device state into a VM started with `-incoming defer`; the VM stays paused until `cont`. */
export async function loadDeviceState(qmp: QmpClient, socketPath: string, deviceState: Buffer): Promise<void> {
  await (await prepareDeviceStateLoad(qmp, socketPath)).load(deviceState);
}

/** A QEMU listening for a device state: `load` streams one to it and waits until QEMU has it. */
export interface DeviceStateLoad {
  load: (deviceState: Buffer) => Promise<void>;
}

/**
 * The QMP half of a device-state load, which needs no device state yet: the capability set and
 * QEMU listening for the stream. A start whose QEMU is up before the device state is written (an
 * adopted standby QEMU, which does this when it starts) does this first, so only the stream and its
 * completion wait for the state.
 */
export async function prepareDeviceStateLoad(qmp: QmpClient, socketPath: string): Promise<DeviceStateLoad> {
  await rm(socketPath, { force: true });
  await ignoreSharedMemory(qmp);
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
  return {
    load: async (deviceState) => {
      await new Promise<void>((resolve, reject) => {
        const socket = createConnection(socketPath, () => socket.end(deviceState, () => resolve()));
        socket.once('error', reject);
      });
      await waitForMigration(qmp, 30_000);
      // (not waited for: the guest need not wait for a file to go; a later save removes it first anyway)
      void rm(socketPath, { force: true }).catch(() => {});
    },
  };
}
