import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rename } from 'node:fs/promises';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, connectToMachine, stopMachine, removeMachine, listMachines } from './machines.ts';
import { snapshotMachine, restoreMachine, forkMachine } from './snapshots.ts';
import { readSnapshot, listSnapshots } from '../snapshot/snapshot-store.ts';
import type { MachineConfig } from './machine-record.ts';
import { shell } from './testing/guest-shell.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let machine: MachineConfig;

// A process tree (a shell with two children), a counter in memory, and a file written and
// closed before the snapshot: everything must come back, which process checkpointing cannot do.
const workload = String.raw`
echo written-before-snapshot > /root/closed.txt
( while true; do sleep 1001; done ) &
( while true; do sleep 1002; done ) &
i=0
while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done
`;

async function inspect(
  config: MachineConfig,
): Promise<{ counter: number; children: number; file: string; hostname: string; hostnameFile: string; hostsLine: string }> {
  const client = await connectToMachine(config);
  try {
    const [counter, children, file, hostname, hostnameFile, hostsLine] = (
      await shell(
        client,
        'cat /tmp/counter; ps -o args | grep -c "^sleep 100[12]$"; cat /root/closed.txt; hostname; cat /etc/hostname; grep "^127.0.1.1" /etc/hosts',
      )
    ).split('\n');
    return { counter: Number(counter), children: Number(children), file: file!, hostname: hostname!, hostnameFile: hostnameFile!, hostsLine: hostsLine! };
  } finally {
    client.close();
  }
}

before(async () => {
  home = await useTemporaryHome();
  machine = await createMachine({ image: 'base', name: 'origin', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(machine.id);
  await new Promise((resolve) => setTimeout(resolve, 1000));
});

after(async () => {
  await home.cleanup();
});

/** Unsolicited (and any) IPv6 neighbour adverts the guest sent so far: what a network self-announce makes it send. */
async function neighbourAdvertsSent(config: MachineConfig): Promise<number> {
  const client = await connectToMachine(config);
  try {
    const count = (await shell(client, 'awk \'$1 == "Icmp6OutNeighborAdvertisements" { print $2 }\' /proc/net/snmp6')).trim();
    assert.match(count, /^\d+$/, 'the guest counts its IPv6 neighbour adverts');
    return Number(count);
  } finally {
    client.close();
  }
}

test('restore continues every process where the snapshot left it, with files that were not open', async () => {
  // Let the counter get well past where a fresh start would be, however slow the host is.
  let before = await inspect(machine);
  for (let attempt = 0; attempt < 300 && before.counter < 10; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    before = await inspect(machine);
  }
  const advertsBefore = await neighbourAdvertsSent(machine);
  const summary = await snapshotMachine(machine, { name: 'origin@1' });
  assert.ok(summary.deviceStateMs < 1000);
  const atSnapshot = await inspect(machine);
  const restored = await restoreMachine('origin@1', { name: 'copy' });
  const restoredAt = Date.now();
  try {
    const after = await inspect(restored);
    assert.equal(after.children, 2, 'both background children are alive');
    assert.equal(after.file, 'written-before-snapshot');
    assert.equal(after.hostname, 'copy');
    // The files that name the machine follow its new name (they live on the guest's runtime tmpfs).
    assert.equal(after.hostnameFile, 'copy');
    assert.equal(after.hostsLine, '127.0.1.1\tcopy');
    // The counter went on from the snapshot's value (not from zero, as a fresh start would).
    assert.ok(
      after.counter >= before.counter && after.counter <= atSnapshot.counter + 100,
      `counter ${after.counter}: ${before.counter} before the snapshot, ${atSnapshot.counter} just after`,
    );
    // No network self-announce after the restore (QEMU's default is 5 rounds within ~1 s, each an
    // unsolicited IPv6 neighbour advert from the guest): with user networking nobody listens, and
    // under TCG it was guest code to translate while the agent answers.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, restoredAt + 1500 - Date.now())));
    assert.equal(await neighbourAdvertsSent(restored), advertsBefore, 'the restored guest sent no neighbour adverts');
  } finally {
    await removeMachine(restored, { force: true });
  }
});

test('a second snapshot stores only what changed (layering)', async () => {
  const second = await snapshotMachine(machine, { name: 'origin@2' });
  const manifest = await readSnapshot('origin@2');
  assert.ok(manifest.parent, 'it names the snapshot it layers on');
  assert.ok(Number(second.stats.newCompressedBytes) < 16 * 1024 * 1024, `new bytes ${String(second.stats.newCompressedBytes)}`);
  assert.ok(Number(second.stats.reusedChunks) > 0);
});

test('forks are independent copies', async () => {
  const { forks } = await forkMachine(machine, { count: 2 });
  const [first, second] = forks as [MachineConfig, MachineConfig];
  try {
    const a = await connectToMachine(first);
    const b = await connectToMachine(second);
    await shell(a, 'echo mine > /root/own.txt');
    assert.equal(await shell(b, 'cat /root/own.txt 2>/dev/null || echo absent'), 'absent');
    assert.notEqual(await shell(a, 'head -c 16 /dev/urandom | od -An -tx1'), await shell(b, 'head -c 16 /dev/urandom | od -An -tx1'));
    a.close();
    b.close();
  } finally {
    for (const fork of forks) await removeMachine(fork, { force: true });
  }
});

test('bad input: a stopped machine, a taken name, a missing image', async () => {
  await assert.rejects(restoreMachine('origin@1', { name: 'origin' }), /already used/);
  await assert.rejects(restoreMachine('no-such-snapshot'), /no snapshot named no-such-snapshot/);
  await stopMachine(machine, { timeoutSeconds: 1 });
  await assert.rejects(snapshotMachine(machine, { name: 'origin@3' }), /only a running machine can be snapshotted/);
  const disk = machine.image.diskPath;
  await rename(disk, `${disk}.moved`);
  try {
    await assert.rejects(
      restoreMachine('origin@1', { name: 'orphan' }),
      (error: Error & { hint?: string }) => /its image is gone/.test(error.message) && /import or pull image base/.test(error.hint ?? ''),
    );
  } finally {
    await rename(`${disk}.moved`, disk);
  }
  assert.ok((await listSnapshots()).some((snapshot) => snapshot.name === 'origin@1'));
  assert.deepEqual(
    (await listMachines()).map((view) => view.config.name),
    ['origin'],
  );
});
