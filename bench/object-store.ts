// Object store benchmark (issue 13, run by hand): a real hibernated machine's snapshot moved through
// an S3-compatible server on loopback (the test harness's: Ceph radosgw, or s3rver with
// TORPOR_TEST_S3=s3rver), side by side with
//  - the local store (a wake on the node where the session slept: nothing read remotely), and
//  - the peer: a naive whole-RAM-file upload/download of the same memory (one PUT / GET of the file,
//    as `aws s3 cp` of a QEMU memory file would do).
// Also: bytes read from the store per wake (same node, other node with a pull, ranged frame reads).
//   node --import tsx bench/object-store.ts [runs]
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { MiB, ms, percentile, sleep, startHostSampler } from './support.ts';

const runs = Math.max(2, Number(process.argv[2] ?? 3));
const home = await mkdtemp(join(tmpdir(), 'tp-bos-'));
process.env.TORPOR_HOME = home;
const memoryDirectory = await mkdtemp('/dev/shm/tp-bos-');
process.env.TORPOR_MEMORY_DIR = memoryDirectory;

const { createMachine, startMachine, connectToMachine, removeMachine, listMachines, killMachine } = await import('../src/runtime/machines.ts');
const { snapshotMachine, restoreMachine } = await import('../src/runtime/snapshots.ts');
const { readSnapshot, materializeSnapshot, stopSnapshotWorkers } = await import('../src/snapshot/snapshot-store.ts');
const { dropTemplateMemory } = await import('../src/runtime/template-memory.ts');
const { shell } = await import('../src/runtime/testing/guest-shell.ts');
const { startS3Server } = await import('../src/object-store/testing/s3-server.ts');
const { openObjectStore } = await import('../src/object-store/object-store.ts');
const { createChunkCache } = await import('../src/object-store/chunk-cache.ts');
const { createSnapshotReplicator } = await import('../src/object-store/snapshot-replicator.ts');
const { createFrameReader } = await import('../src/object-store/frame-reader.ts');
const { chunksOf } = await import('../src/object-store/manifest-validation.ts');
const { S3Client, PutObjectCommand, GetObjectCommand } = await import('@aws-sdk/client-s3');
type MachineConfig = import('../src/runtime/machine-record.ts').MachineConfig;

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const median = (values: number[]) => percentile(values, 50);
const progress = (text: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${text}\n`);
const lines: string[] = [];
const report = (line = '') => {
  lines.push(line);
  console.log(line);
};

// ~64 MiB of live guest memory: random bytes (incompressible) and text (compressible), in tmpfs.
const workload = String.raw`
head -c 24000000 /dev/urandom > /tmp/random.bin
i=0; while [ $i -lt 400 ]; do echo "line $i of a log the agent keeps, with some words that repeat: session tool call result" ; i=$((i+1)); done > /tmp/seed.txt
j=0; while [ $j -lt 800 ]; do cat /tmp/seed.txt; j=$((j+1)); done > /tmp/text.txt
md5sum /tmp/random.bin /tmp/text.txt > /tmp/sums
echo ready > /tmp/ready
while true; do sleep 1; done
`;

async function guest(config: MachineConfig, script: string): Promise<string> {
  const client = await connectToMachine(config);
  try {
    return await shell(client, script);
  } finally {
    client.close();
  }
}

const server = await startS3Server();
const options = {
  endpoint: server.endpoint,
  region: server.region,
  accessKeyId: server.accessKeyId,
  secretAccessKey: server.secretAccessKey,
  forcePathStyle: true,
};
const client = new S3Client({
  endpoint: server.endpoint,
  region: server.region,
  forcePathStyle: true,
  credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
  requestChecksumCalculation: 'WHEN_REQUIRED',
});
const stopSampler = startHostSampler(memoryDirectory);
try {
  report(`# object store benchmark ${new Date().toISOString()}`);
  report(
    `host: ${cpus().length} cores, node ${process.version}, TCG; S3: ${server.implementation === 'radosgw' ? 'Ceph radosgw 16.2 (one memstore OSD)' : 's3rver 3.7'} on 127.0.0.1, local store in ${home}`,
  );
  progress('booting the machine and filling its memory');
  const machine = await createMachine({ image: 'base', name: 'origin', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(machine.id);
  for (let attempt = 0; attempt < 600; attempt++) {
    if ((await guest(machine, 'cat /tmp/ready 2>/dev/null').catch(() => '')) === 'ready') break;
    await sleep(500);
  }
  const sums = await guest(machine, 'cat /tmp/sums');
  await snapshotMachine(machine, { name: 'origin@1', stop: true });
  await removeMachine(machine, { force: true });
  const manifest = await readSnapshot('origin@1');
  const chunkIds = chunksOf(manifest);
  const localBytes = chunkIds.reduce((sum, id) => sum + statSync(join(home, 'snapshots', 'chunks', id.slice(0, 2), `${id}.zst`)).size, 0);
  const liveChunks = manifest.memory.chunks.filter(Boolean).length;
  report(
    `snapshot: RAM ${mib(manifest.memory.size)} apparent, ${liveChunks} non-zero 256 KiB chunks (${mib(liveChunks * 256 * 1024)}); ${chunkIds.length} chunks in all (RAM, disk layer, device state), ${mib(localBytes)} compressed`,
  );
  report();

  // A RAM file as QEMU left it, for the peer: materialized from the store (sparse, as tmpfs holds it).
  const ramFile = join(memoryDirectory, 'peer.ram');
  await materializeSnapshot('origin@1', { memoryFile: ramFile });

  const rows: Record<string, number[]> = {};
  const add = (key: string, value: number) => (rows[key] ??= []).push(value);
  const replicatorFor = (store: ReturnType<typeof openObjectStore>) => createSnapshotReplicator(store, createChunkCache());
  let pushedBytes = 0;
  let pulledBytes = 0;
  let peerBytes = 0;
  let headRequests = 0;
  let ranged = { bytes: 0, requests: 0, pages: 0, milliseconds: 0 };
  for (let run = 0; run < runs; run++) {
    progress(`run ${run + 1} of ${runs}`);
    const prefix = `run-${run}`;
    const store = openObjectStore(`s3://${server.bucket}/${prefix}`, options);
    // Push into an empty prefix, then again (everything there: HEADs only).
    let started = performance.now();
    const pushed = await replicatorFor(store).push('origin@1');
    add('push (empty store)', performance.now() - started);
    pushedBytes = pushed.uploadedBytes;
    const requests = store.counters.requests;
    started = performance.now();
    await replicatorFor(store).push('origin@1');
    add('push again (a HEAD per chunk)', performance.now() - started);
    headRequests = store.counters.requests - requests;

    // Same node: the chunks are local; a pull checks them and reads nothing remote.
    const requestsBefore = store.counters.requests;
    started = performance.now();
    await replicatorFor(store).pull(manifest);
    add('pull on the same node (cached)', performance.now() - started);
    if (store.counters.requests !== requestsBefore) throw new Error('a cached pull asked the store');
    started = performance.now();
    await materializeSnapshot('origin@1', { memoryFile: join(memoryDirectory, 'local.ram') });
    add('materialize RAM from the local store', performance.now() - started);
    await rm(join(memoryDirectory, 'local.ram'), { force: true });

    // Other node: an empty local store (the same directory, wiped) pulls everything.
    const saved = join(home, 'saved-snapshots');
    await rm(saved, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.rename(join(home, 'snapshots'), saved));
    const readBefore = store.counters.bytesRead;
    started = performance.now();
    await replicatorFor(store).pull(manifest);
    add('pull on another node (empty store)', performance.now() - started);
    pulledBytes = store.counters.bytesRead - readBefore;
    started = performance.now();
    await materializeSnapshot('origin@1', { memoryFile: join(memoryDirectory, 'pulled.ram') });
    add('materialize RAM after the pull', performance.now() - started);
    await rm(join(memoryDirectory, 'pulled.ram'), { force: true });
    // Wake (restore to a machine answering) from the pulled snapshot.
    started = performance.now();
    const woken = await restoreMachine('origin@1', { name: `woken-${run}` });
    const after = await guest(woken, 'md5sum /tmp/random.bin /tmp/text.txt');
    add('wake after the pull (restore to agent answering)', performance.now() - started);
    if (after !== sums) throw new Error(`guest memory differs after the pull: ${after} vs ${sums}`);
    await removeMachine(woken, { force: true });
    await rm(join(home, 'snapshots'), { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.rename(saved, join(home, 'snapshots')));
    // Wake on the same node (local chunks) for comparison.
    started = performance.now();
    const local = await restoreMachine('origin@1', { name: `local-${run}` });
    await guest(local, 'true');
    add('wake on the same node (restore to agent answering)', performance.now() - started);
    await removeMachine(local, { force: true });

    // Ranged reads: 64 random live 4 KiB pages straight from the store (a lazy restore's faults).
    const reader = createFrameReader(store);
    const livePages = manifest.memory.chunks.flatMap((id, index) => (id ? [index] : []));
    const counters = { bytes: store.counters.bytesRead, requests: store.counters.requests };
    started = performance.now();
    for (let page = 0; page < 64; page++) {
      const chunk = livePages[(page * 7919) % livePages.length]!;
      await reader.readMemoryRange(manifest, chunk * 256 * 1024 + ((page * 37) % 64) * 4096, 4096);
    }
    ranged = {
      bytes: store.counters.bytesRead - counters.bytes,
      requests: store.counters.requests - counters.requests,
      pages: 64,
      milliseconds: performance.now() - started,
    };
    add('ranged read of one 4 KiB page (seek table + frame)', ranged.milliseconds / 64);

    // The peer: the whole RAM file up and down, as one object (read densely: zeros too).
    started = performance.now();
    const whole = await readFile(ramFile);
    await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: `${prefix}/peer/ram`, Body: whole, ContentLength: whole.length }));
    add('peer: upload the whole RAM file', performance.now() - started);
    peerBytes = whole.length;
    started = performance.now();
    const answer = await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: `${prefix}/peer/ram` }));
    await writeFile(join(memoryDirectory, 'peer-download.ram'), await answer.Body!.transformToByteArray());
    add('peer: download the whole RAM file to tmpfs', performance.now() - started);
    await rm(join(memoryDirectory, 'peer-download.ram'), { force: true });
    store.close();
  }

  report(`| operation | median of ${runs} | min | max |`);
  report('| --- | --- | --- | --- |');
  for (const [key, values] of Object.entries(rows)) report(`| ${key} | ${ms(median(values))} | ${ms(Math.min(...values))} | ${ms(Math.max(...values))} |`);
  report();
  report('| bytes over the network | |');
  report('| --- | --- |');
  report(`| push into an empty store | ${mib(pushedBytes)} |`);
  report(`| push again | 0 (${headRequests} HEAD requests) |`);
  report(`| peer: whole RAM file, each way | ${mib(peerBytes)} |`);
  report(`| wake on the same node | 0 (no request) |`);
  report(`| wake on another node (pull first) | ${mib(pulledBytes)} |`);
  report(
    `| ranged read of one 4 KiB page, cold chunk | ${(ranged.bytes / ranged.pages / 1024).toFixed(1)} KiB in ${(ranged.requests / ranged.pages).toFixed(1)} requests |`,
  );
  const host = stopSampler();
  report();
  report(
    `host during the run: load ${host.loadStart.toFixed(1)} at start, ${host.loadMax.toFixed(1)} max; other QEMUs up to ${host.foreignQemuMax} (mean ${host.foreignQemuMean.toFixed(1)})`,
  );
} finally {
  client.destroy();
  for (const machine of await listMachines()) await killMachine(machine.config);
  await dropTemplateMemory();
  await stopSnapshotWorkers();
  await server.stop();
  await rm(memoryDirectory, { recursive: true, force: true });
  await rm(home, { recursive: true, force: true });
}
