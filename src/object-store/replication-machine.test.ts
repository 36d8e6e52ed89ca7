import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connectToMachine, createMachine, removeMachine, startMachine } from '../runtime/machines.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';
import { restoreMachine, snapshotMachine } from '../runtime/snapshots.ts';
import { shell } from '../runtime/testing/guest-shell.ts';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { listSnapshots, readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { TorporError } from '../util/errors.ts';
import { createChunkCache } from './chunk-cache.ts';
import { chunksOf } from './manifest-validation.ts';
import { openObjectStore, type ObjectStore } from './object-store.ts';
import { createSnapshotReplicator } from './snapshot-replicator.ts';
import { startS3Server, type S3Server } from './testing/s3-server.ts';

// A real machine (QEMU) through the object store: snapshot, push, lose the whole local snapshot
// store, pull, restore; the guest carries on with its memory intact. Then a damaged object: the pull
// fails clearly and nothing of the snapshot lands.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: S3Server;
let store: ObjectStore;
let machine: MachineConfig;
let manifest: SnapshotManifest;

const workload = String.raw`
head -c 3000000 /dev/urandom > /tmp/data.bin
md5sum /tmp/data.bin > /tmp/data.md5
i=0
while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done
`;

async function inspect(config: MachineConfig): Promise<{ counter: number; stored: string; now: string }> {
  const client = await connectToMachine(config);
  try {
    const [counter, stored, now] = (await shell(client, 'cat /tmp/counter; cut -d" " -f1 /tmp/data.md5; md5sum /tmp/data.bin | cut -d" " -f1')).split('\n');
    return { counter: Number(counter), stored: stored!, now: now! };
  } finally {
    client.close();
  }
}

before(async () => {
  home = await useTemporaryHome();
  server = await startS3Server();
  store = openObjectStore(`s3://${server.bucket}/machines`, {
    endpoint: server.endpoint,
    region: server.region,
    accessKeyId: server.accessKeyId,
    secretAccessKey: server.secretAccessKey,
    forcePathStyle: true,
  });
  machine = await createMachine({ image: 'base', name: 'origin', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(machine.id);
});

after(async () => {
  store?.close();
  await server?.stop();
  await home?.cleanup();
});

test('snapshot, push, wipe the local store, pull, restore: the guest continues with its memory intact', async () => {
  let before = { counter: 0, stored: '', now: '' };
  let lastError: unknown;
  for (let attempt = 0; attempt < 300 && !(before.counter >= 5 && before.stored.length === 32); attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    before = await inspect(machine).catch((error: unknown) => {
      lastError = error;
      return before;
    });
  }
  assert.ok(before.counter >= 5, `the workload runs (${String(lastError)})`);
  await snapshotMachine(machine, { name: 'origin@1', stop: true });
  manifest = await readSnapshot('origin@1');
  const pushed = await createSnapshotReplicator(store, createChunkCache()).push('origin@1');
  assert.equal(pushed.uploadedChunks, chunksOf(manifest).length);
  await store.putManifest(pushed.manifest);
  await removeMachine(machine, { force: true });

  // Lose every snapshot and chunk of this node (a new node has none).
  await rm(join(home.home, 'snapshots'), { recursive: true, force: true });
  assert.deepEqual(await listSnapshots(), []);

  const pulled = await createSnapshotReplicator(store, createChunkCache()).pull(await store.getManifest('origin@1'));
  assert.equal(pulled.downloadedChunks, chunksOf(manifest).length);
  const restored = await restoreMachine('origin@1', { name: 'copy' });
  try {
    const after = await inspect(restored);
    assert.equal(after.stored, before.stored, 'the 3 MB file in guest RAM (tmpfs) is intact');
    assert.equal(after.now, after.stored);
    assert.ok(after.counter >= before.counter, `counter ${after.counter} went on from ${before.counter}`);
  } finally {
    await removeMachine(restored, { force: true });
  }
});

test('a damaged object in the store: the pull fails clearly and nothing lands', async () => {
  await rm(join(home.home, 'snapshots'), { recursive: true, force: true });
  // Flip bytes in the middle of one RAM chunk's object (bit rot, tampering).
  const victim = manifest.memory.chunks.find((id) => id)!;
  const bytes = Buffer.from(await store.getChunk(victim));
  for (let index = 200; index < 240; index++) bytes[index]! ^= 0x5a;
  await store.putChunk(victim, bytes);
  await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(manifest), (error: unknown) => {
    assert.ok(error instanceof TorporError);
    assert.equal(error.code, 'store-chunk-corrupt');
    assert.match(error.message, new RegExp(`origin@1.*${victim}`));
    assert.ok(error.hint);
    return true;
  });
  assert.deepEqual(await listSnapshots(), [], 'no manifest');
  const chunks = join(home.home, 'snapshots', 'chunks');
  const landed = existsSync(chunks) ? readdirSync(chunks).flatMap((directory) => readdirSync(join(chunks, directory))) : [];
  assert.ok(!landed.some((name) => name.startsWith(victim)), 'the damaged chunk did not land');
});
