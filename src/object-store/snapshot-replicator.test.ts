import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { chunkPath } from '../snapshot/chunk-operations.ts';
import { pinChunks, unpinChunks } from '../snapshot/chunk-pins.ts';
import { captureSnapshot, listSnapshots, materializeSnapshot, readSnapshot, removeSnapshot, stopSnapshotWorkers, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { changePages, sameFileContent, writeSyntheticFile, type SyntheticFile } from '../snapshot/testing/synthetic-machine.ts';
import { readMemoryRange as readLocalMemoryRange } from '../snapshot/snapshot-store.ts';
import { TorporError } from '../util/errors.ts';
import { createChunkCache } from './chunk-cache.ts';
import { createFrameReader } from './frame-reader.ts';
import { chunksOf } from './manifest-validation.ts';
import { openObjectStore, type ObjectStore } from './object-store.ts';
import { chunksOfStoredManifests, collectRemoteGarbage } from './remote-garbage.ts';
import { createSnapshotReplicator } from './snapshot-replicator.ts';
import { startS3Server, type S3Server } from './testing/s3-server.ts';

const MiB = 1024 * 1024;

function isTorporError(code: string, pattern?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof TorporError, `expected a TorporError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.ok(error.hint, 'says what to do');
    if (pattern) assert.match(error.message, pattern);
    return true;
  };
}

/** Named chunk files in the local store (temporaries excluded). */
function localChunkIds(home: string): string[] {
  const root = join(home, 'snapshots', 'chunks');
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((directory) =>
    readdirSync(join(root, directory))
      .filter((name) => name.endsWith('.zst') && !name.startsWith('.'))
      .map((name) => name.slice(0, -4)),
  );
}

describe('snapshot replication through an S3-compatible store', () => {
  let server: S3Server;
  let store: ObjectStore;
  let client: S3Client;
  let shm: string;
  let homeA: string;
  let homeB: string;
  let ram: SyntheticFile;
  let disk: SyntheticFile;
  let manifest: SnapshotManifest;
  const deviceState = randomBytes(40_000);
  const storeOptions = () => ({ endpoint: server.endpoint, region: server.region, accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey, forcePathStyle: true });
  const useHome = (home: string) => (process.env.TORPOR_HOME = home);

  before(async () => {
    server = await startS3Server();
    store = openObjectStore(`s3://${server.bucket}/cluster-a`, storeOptions());
    client = new S3Client({ endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
    shm = mkdtempSync('/dev/shm/torpor-objectstore-test-');
    homeA = mkdtempSync('/var/tmp/torpor-objectstore-a-');
    homeB = mkdtempSync('/var/tmp/torpor-objectstore-b-');
    ram = writeSyntheticFile(join(shm, 'machine.ram'), { size: 64 * MiB, liveBytes: 3 * MiB, randomShare: 0.3, seed: 21 });
    disk = writeSyntheticFile(join(shm, 'layer.img'), { size: 256 * MiB, liveBytes: MiB / 2, randomShare: 0.3, seed: 22, maxRun: 32 });
    useHome(homeA);
    manifest = await captureSnapshot({ name: 'web@1', memoryFile: ram.path, diskFile: disk.path, deviceState, metadata: { machine: { name: 'web' } } });
  });

  after(async () => {
    await stopSnapshotWorkers();
    store?.close();
    client?.destroy();
    await server?.stop();
    for (const directory of [shm, homeA, homeB]) if (directory) rmSync(directory, { recursive: true, force: true });
  });

  test('push uploads every chunk once; a second push uploads nothing', async () => {
    useHome(homeA);
    const replicator = createSnapshotReplicator(store, createChunkCache());
    const progress: number[] = [];
    const first = await replicator.push('web@1', { onProgress: (p) => progress.push(p.doneChunks) });
    assert.equal(first.uploadedChunks, chunksOf(manifest).length);
    assert.equal(first.skippedChunks, 0);
    assert.equal(first.manifest.id, manifest.id);
    assert.equal(progress.at(-1), chunksOf(manifest).length);
    for (const id of chunksOf(manifest)) {
      // Stored exactly as the local store has it.
      assert.equal((await store.headChunk(id))?.bytes, statSync(chunkPath(join(homeA, 'snapshots', 'chunks'), id)).size);
    }
    const second = await replicator.push('web@1');
    assert.equal(second.uploadedChunks, 0);
    assert.equal(second.skippedChunks, chunksOf(manifest).length);
    await store.putManifest(first.manifest);
  });

  test('pull on another node (empty store) restores the snapshot byte for byte', async () => {
    useHome(homeB);
    const replicator = createSnapshotReplicator(store, createChunkCache());
    const fromStore = await store.getManifest('web@1');
    const readBefore = store.counters.bytesRead;
    const pulled = await replicator.pull(fromStore);
    assert.equal(pulled.downloadedChunks, chunksOf(manifest).length);
    assert.equal(pulled.cachedChunks, 0);
    assert.equal(store.counters.bytesRead - readBefore, pulled.downloadedBytes);
    assert.equal((await readSnapshot('web@1')).id, manifest.id);
    const memoryFile = join(shm, 'restored.ram');
    const diskFile = join(shm, 'restored.img');
    const deviceStateFile = join(shm, 'restored.state');
    await materializeSnapshot('web@1', { memoryFile, diskFile, deviceStateFile });
    assert.ok(sameFileContent(ram.path, memoryFile));
    assert.ok(sameFileContent(disk.path, diskFile));
    assert.deepEqual(readFileSync(deviceStateFile), deviceState);
    for (const file of [memoryFile, diskFile, deviceStateFile]) rmSync(file);
    // A second pull (the node where it now sleeps) reads nothing remote.
    const requests = store.counters.requests;
    const again = await replicator.pull(fromStore);
    assert.equal(again.downloadedChunks, 0);
    assert.equal(again.cachedChunks, chunksOf(manifest).length);
    assert.equal(store.counters.requests, requests);
  });

  test('ranged frame reads give the same bytes as the local store, reading a fraction of the chunk', async () => {
    useHome(homeA);
    const reader = createFrameReader(store);
    const page = 4096;
    const live = ram.runs[3]!;
    const offset = live.page * page;
    const before = store.counters.bytesRead;
    const remote = await reader.readMemoryRange(manifest, offset, page * 2);
    assert.deepEqual(remote, await readLocalMemoryRange(manifest, offset, page * 2));
    const firstRead = store.counters.bytesRead - before;
    assert.ok(firstRead < 256 * 1024, `one page read ${firstRead} bytes, less than its chunk`);
    // The seek table is cached: the next read of that chunk is one frame.
    const requests = store.counters.requests;
    await reader.readMemoryRange(manifest, offset, 16);
    assert.ok(store.counters.requests - requests <= 2);
    const chunk = manifest.memory.chunks.find((id) => id)!;
    assert.equal((await reader.readFrame(chunk, 0)).length, 64 * 1024);
    await assert.rejects(reader.readFrame(chunk, 99), isTorporErrorWithoutHint('range-invalid'));
  });

  test('a hostile manifest (path in a chunk id, absolute name, huge sizes) is refused before any request', async () => {
    useHome(homeB);
    const replicator = createSnapshotReplicator(store, createChunkCache());
    const requests = store.counters.requests;
    const cases: [string, (m: SnapshotManifest) => unknown][] = [
      ['dot-dot chunk', (m) => ({ ...m, name: 'evil', memory: { ...m.memory, chunks: m.memory.chunks.map((id, index) => (index === 0 ? '../../../../etc/passwd' : id)) } })],
      ['absolute device state', (m) => ({ ...m, name: 'evil', deviceState: '/etc/shadow' })],
      ['path as name', (m) => ({ ...m, name: '../manifests/web@1' })],
      ['absolute name', (m) => ({ ...m, name: '/tmp/x' })],
      ['huge memory', (m) => ({ ...m, name: 'evil', memory: { ...m.memory, size: 2 ** 52 } })],
      ['odd chunk size', (m) => ({ ...m, name: 'evil', memory: { ...m.memory, chunkSize: 3 } })],
      ['not an object', () => 'manifest'],
      ['version 3', (m) => ({ ...m, version: 3 })],
      ['dot-dot delta base', (m) => ({ ...m, version: 2, name: 'evil', memory: { ...m.memory, deltaBases: { [m.memory.chunks.find(Boolean)!]: '../../../etc/passwd' } } })],
      ['delta bases not a map', (m) => ({ ...m, version: 2, name: 'evil', memory: { ...m.memory, deltaBases: ['a'] } })],
    ];
    for (const [what, change] of cases) {
      await assert.rejects(replicator.pull(change(manifest) as SnapshotManifest), isTorporError('manifest-invalid'), what);
    }
    assert.equal(store.counters.requests, requests, 'nothing was asked of the store');
    assert.ok(!existsSync('/etc/passwd.zst'));
    assert.deepEqual((await listSnapshots()).map((m) => m.name), ['web@1']);
  });

  test('a store returning wrong bytes: the pull fails clearly and nothing lands', async () => {
    useHome(homeA);
    const second = await captureSnapshot({ name: 'web@2', memoryFile: ram.path, deviceState: randomBytes(30_000), metadata: {} });
    const replicator = createSnapshotReplicator(store, createChunkCache());
    await replicator.push('web@2');
    // Replace the device state object with other, well-formed chunk bytes (a chunk of web@1).
    const victim = second.deviceState;
    const other = readFileSync(chunkPath(join(homeA, 'snapshots', 'chunks'), manifest.memory.chunks.find((id) => id)!));
    await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: `cluster-a/chunks/${victim}`, Body: other }));
    useHome(homeB);
    const before = new Set(localChunkIds(homeB));
    await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(second), isTorporError('store-chunk-corrupt', /does not match its hash|holds|claims/));
    assert.deepEqual(new Set(localChunkIds(homeB)), before, 'no chunk landed');
    await assert.rejects(readSnapshot('web@2'), isTorporError('snapshot-unknown'));
    // Flipped bytes are refused too.
    const flipped = Buffer.from(other);
    flipped[100] ^= 0xff;
    await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: `cluster-a/chunks/${victim}`, Body: flipped }));
    await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(second), isTorporError('store-chunk-corrupt'));
    // An oversized object is refused without reading it into memory.
    await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: `cluster-a/chunks/${victim}`, Body: Buffer.alloc(65 * MiB) }));
    await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(second), isTorporError('object-too-large'));
    // A missing chunk names the snapshot.
    await store.deleteChunk(victim);
    await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(second), isTorporError('store-chunk-missing', /web@2/));
    assert.deepEqual(new Set(localChunkIds(homeB)), before);
    // A push from the node that has it repairs the store.
    useHome(homeA);
    const repaired = await replicator.push('web@2');
    assert.equal(repaired.uploadedChunks, 1);
    useHome(homeB);
    await createSnapshotReplicator(store, createChunkCache()).pull(second);
    assert.equal((await readSnapshot('web@2')).id, second.id);
  });

  test('a pull killed with SIGKILL leaves no torn chunk, and the next pull completes', async () => {
    const homeC = mkdtempSync('/var/tmp/torpor-objectstore-c-');
    try {
      const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'testing', 'pull-child.ts')], {
        env: { ...process.env, TORPOR_HOME: homeC, PULL_STORE: JSON.stringify({ url: `s3://${server.bucket}/cluster-a`, ...storeOptions() }), PULL_MANIFEST: JSON.stringify(manifest) },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      // The child prints a line per chunk it has fetched; kill it in the middle.
      await new Promise<void>((resolve, reject) => {
        let lines = 0;
        child.stdout.on('data', (data: Buffer) => {
          lines += data.toString().split('\n').length - 1;
          if (lines >= 10) resolve();
        });
        child.once('exit', () => reject(new Error('the pull finished before it could be killed')));
      });
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
      useHome(homeC);
      for (const id of localChunkIds(homeC)) {
        // Every chunk that has its name is whole.
        assert.ok(chunksOf(manifest).includes(id));
      }
      await assert.rejects(readSnapshot('web@1'), isTorporError('snapshot-unknown'));
      const pulled = await createSnapshotReplicator(store, createChunkCache()).pull(manifest);
      assert.equal(pulled.downloadedChunks + pulled.cachedChunks, chunksOf(manifest).length);
      const memoryFile = join(shm, 'after-kill.ram');
      await materializeSnapshot('web@1', { memoryFile });
      assert.ok(sameFileContent(ram.path, memoryFile));
      rmSync(memoryFile);
    } finally {
      rmSync(homeC, { recursive: true, force: true });
    }
  });

  test('the cache evicts least recently used chunks the store has, never the only copy', async () => {
    useHome(homeB);
    // web@1 and web@2 were pulled (in the store); a local-only snapshot must keep its chunks.
    const localOnly = writeSyntheticFile(join(shm, 'local-only.ram'), { size: 16 * MiB, liveBytes: 2 * MiB, randomShare: 1, seed: 23 });
    const onlyHere = await captureSnapshot({ name: 'local@1', memoryFile: localOnly.path, deviceState: randomBytes(1000), metadata: {} });
    const cache = createChunkCache({ budgetBytes: 0 });
    const usage = await cache.usage();
    const result = await cache.evict(store);
    assert.ok(result.evictedChunks > 0);
    const left = new Set(localChunkIds(homeB));
    for (const id of chunksOf(onlyHere)) assert.ok(left.has(id), 'chunks of a snapshot not pushed stay');
    for (const id of left) assert.ok(chunksOf(onlyHere).includes(id), `chunk ${id} of a pushed snapshot was evictable`);
    assert.equal(result.keptBytes + result.freedBytes, usage.bytes);
    // Evicted chunks come back with a pull, and only those are read.
    const pulled = await createSnapshotReplicator(store, createChunkCache()).pull(await store.getManifest('web@1'));
    assert.equal(pulled.downloadedChunks, chunksOf(manifest).length);
    // LRU: with room for web@1 only, touching web@1 last keeps it and evicts web@2's own chunks.
    const web2 = await readSnapshot('web@2');
    await createSnapshotReplicator(store, createChunkCache()).pull(web2);
    await createChunkCache().touch(chunksOf(manifest));
    const web1Bytes = chunksOf(manifest).reduce((sum, id) => sum + statSync(chunkPath(join(homeB, 'snapshots', 'chunks'), id)).size, 0);
    const localOnlyBytes = chunksOf(onlyHere).reduce((sum, id) => sum + statSync(chunkPath(join(homeB, 'snapshots', 'chunks'), id)).size, 0);
    await createChunkCache({ budgetBytes: web1Bytes + localOnlyBytes }).evict(store);
    const kept = new Set(localChunkIds(homeB));
    for (const id of chunksOf(manifest)) assert.ok(kept.has(id), 'recently used chunk kept');
    assert.ok(chunksOf(web2).some((id) => !kept.has(id)), 'least recently used chunks went');
    // Pinned chunks (a running lazily restored machine) stay whatever the budget.
    await pinChunks(join(homeB, 'snapshots'), 'machine-under-test', chunksOf(manifest));
    await removeSnapshot('local@1');
    await createChunkCache({ budgetBytes: 0 }).evict(store);
    const pinnedLeft = new Set(localChunkIds(homeB));
    for (const id of chunksOf(manifest)) assert.ok(pinnedLeft.has(id), 'pinned chunk kept');
    // Everything else the store has went (local@1's chunks are not in the store: local gc's business).
    for (const id of pinnedLeft) assert.ok(chunksOf(manifest).includes(id) || chunksOf(onlyHere).includes(id), `chunk ${id} stayed`);
    await unpinChunks(join(homeB, 'snapshots'), 'machine-under-test');
  });

  test('remote gc deletes unreferenced chunks older than the grace, nothing referenced or young', async () => {
    useHome(homeA);
    // web@2 is dropped from the catalog (here: the store's manifests); its own chunks become garbage.
    const web2 = await readSnapshot('web@2');
    const onlyWeb2 = chunksOf(web2).filter((id) => !chunksOf(manifest).includes(id));
    assert.ok(onlyWeb2.length > 0);
    const listed: string[] = [];
    for await (const chunk of store.listChunks()) listed.push(chunk.id);
    // Fresh objects: a grace of an hour keeps everything (an upload in flight looks like this).
    const young = await collectRemoteGarbage(store, { referencedChunks: () => chunksOfStoredManifests(store), graceSeconds: 3600, refreshAfterSeconds: 60 });
    assert.equal(young.deletedChunks, 0);
    assert.equal(young.youngChunks, listed.length);
    // Two hours later (clock moved forward): only web@2's own chunks go.
    const later = () => Date.now() + 2 * 3600 * 1000;
    const dry = await collectRemoteGarbage(store, { referencedChunks: () => chunksOfStoredManifests(store), graceSeconds: 3600, refreshAfterSeconds: 60, now: later, dryRun: true });
    assert.equal(dry.deletedChunks, onlyWeb2.length);
    const collected = await collectRemoteGarbage(store, { referencedChunks: () => new Set(chunksOf(manifest)), graceSeconds: 3600, refreshAfterSeconds: 60, now: later });
    assert.equal(collected.deletedChunks, onlyWeb2.length);
    for (const id of onlyWeb2) assert.equal(await store.headChunk(id), undefined);
    for (const id of chunksOf(manifest)) assert.ok(await store.headChunk(id));
    await assert.rejects(
      collectRemoteGarbage(store, { referencedChunks: () => [], graceSeconds: 60, refreshAfterSeconds: 3600 }),
      isTorporError('gc-grace-too-short'),
    );
    // A push after gc re-uploads what gc took.
    const again = await createSnapshotReplicator(store, createChunkCache()).push('web@2');
    assert.equal(again.uploadedChunks, onlyWeb2.length);
  });

  test('a chunk older than the refresh age is uploaded again on push (renewing it for gc)', async () => {
    useHome(homeA);
    const result = await createSnapshotReplicator(store, createChunkCache(), { refreshAfterSeconds: 0 }).push('web@1');
    assert.equal(result.uploadedChunks, chunksOf(manifest).length);
  });

  test('4 KiB page deltas travel with their bases: pulled into an empty node, restored and range-read byte for byte; a delta rebuilt wrong is refused', async () => {
    const homeC = mkdtempSync('/var/tmp/torpor-objectstore-c-');
    const homeD = mkdtempSync('/var/tmp/torpor-objectstore-d-');
    try {
      useHome(homeC);
      const file = writeSyntheticFile(join(shm, 'delta.ram'), { size: 16 * MiB, liveBytes: 6 * MiB, randomShare: 0.5, seed: 71 });
      const first = await captureSnapshot({ name: 'delta@1', memoryFile: file.path, deviceState, metadata: {} });
      changePages(file, { share: 0.004, seed: 72, maxRun: 1, randomShare: 1 });
      const known = { chunkSize: first.memory.chunkSize, ids: first.memory.chunks.map(() => undefined), previous: first.memory.chunks };
      const second = await captureSnapshot({ name: 'delta@2', memoryFile: file.path, deviceState, metadata: {}, knownMemory: known });
      const deltas = Object.keys(second.memory.deltaBases ?? {});
      assert.ok(deltas.length > 0, 'the second snapshot stores some chunks as deltas');
      // Only the second snapshot is pushed and pulled: its bases must come with it.
      await removeSnapshot('delta@1');
      const pushed = await createSnapshotReplicator(store, createChunkCache()).push('delta@2');
      for (const base of Object.values(second.memory.deltaBases!)) assert.ok(await store.headChunk(base), `base ${base} is in the store`);

      const reader = createFrameReader(store);
      const middle = second.memory.chunks.indexOf(deltas[0]!) * second.memory.chunkSize;
      assert.deepEqual(await reader.readMemoryRange(pushed.manifest, middle, 3 * 4096), await readLocalMemoryRange(second, middle, 3 * 4096), 'a range read through the store rebuilds a delta');

      useHome(homeD);
      await createSnapshotReplicator(store, createChunkCache()).pull(JSON.parse(JSON.stringify(pushed.manifest)));
      const restored = join(shm, 'delta-restored.ram');
      await materializeSnapshot('delta@2', { memoryFile: restored });
      assert.ok(sameFileContent(file.path, restored), 'restored byte for byte on the other node');
      rmSync(restored);

      // A store that answers one delta's key with another delta (well-formed, another base): rebuilt, it does not hash to its id.
      const homeE = mkdtempSync('/var/tmp/torpor-objectstore-e-');
      try {
        assert.ok(deltas.length >= 2, `two deltas to swap (${deltas.length})`);
        await store.putChunk(deltas[0]!, await store.getChunk(deltas[1]!));
        useHome(homeE);
        await assert.rejects(createSnapshotReplicator(store, createChunkCache()).pull(pushed.manifest), isTorporError('store-chunk-corrupt'));
        assert.deepEqual(localChunkIds(homeE).filter((id) => deltas.includes(id)), [], 'no delta landed on a wrong base');
        await assert.rejects(readSnapshot('delta@2'));
      } finally {
        rmSync(homeE, { recursive: true, force: true });
      }
    } finally {
      rmSync(join(shm, 'delta.ram'), { force: true });
      rmSync(homeC, { recursive: true, force: true });
      rmSync(homeD, { recursive: true, force: true });
      useHome(homeA);
    }
  });

  test('a store laid out by another format version is refused', async () => {
    const other = openObjectStore(`s3://${server.bucket}/future`, storeOptions());
    try {
      await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: 'future/format.json', Body: JSON.stringify({ format: 'torpor-snapshot-chunks', version: 2 }) }));
      useHome(homeA);
      await assert.rejects(createSnapshotReplicator(other, createChunkCache()).push('web@1'), isTorporError('store-format-unknown'));
    } finally {
      other.close();
    }
  });
});

function isTorporErrorWithoutHint(code: string) {
  return (error: unknown) => error instanceof TorporError && error.code === code;
}
