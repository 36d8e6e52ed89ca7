import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, removeMachine, connectToMachine, createSupervisorPool } from './machines.ts';
import { snapshotMachine, restoreMachine } from './snapshots.ts';
import { shell, shellIn } from './testing/guest-shell.ts';
import type { MachineConfig } from './machine-record.ts';

// A restored guest gets a fresh clock, RNG seed and name (supervisor.ts sends them with the hello;
// the agent rewrites its name files in place through descriptors it kept since boot). These
// tests read them in the very first exec a client sends after the restore returned: nothing the
// guest runs for a client may see the snapshot's clock, RNG state or name files.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let origin: MachineConfig;
let pool: ReturnType<typeof createSupervisorPool> | undefined;

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));
const hostsFor = (name: string) => `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${name}\n`;
// Everything the checks need, in one exec: name, both files verbatim (base64: tabs and the final
// newline matter), the wall clock in ms, 16 random bytes.
const probe =
  'hostname; base64 -w0 /etc/hostname; echo; base64 -w0 /etc/hosts; echo; echo $(($(date +%s) * 1000)); head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo';

interface Seen {
  name: string;
  hostnameFile: string;
  hostsFile: string;
  clockMs: number;
  random: string;
}

/** Restores `origin@1` under `name` and runs the probe as the client's first frame. */
async function restoreAndProbe(name: string): Promise<{ machine: MachineConfig; seen: Seen; hostMs: number }> {
  const machine = await restoreMachine('origin@1', { name, ...(pool ? { pool } : {}) });
  const client = await connectToMachine(machine);
  try {
    const hostMs = Date.now();
    const [seenName, hostnameFile, hostsFile, clock, random] = (await shell(client, probe)).split('\n');
    return {
      machine,
      hostMs,
      seen: {
        name: seenName!,
        hostnameFile: Buffer.from(hostnameFile!, 'base64').toString(),
        hostsFile: Buffer.from(hostsFile!, 'base64').toString(),
        clockMs: Number(clock),
        random: random!,
      },
    };
  } finally {
    client.close();
  }
}

before(async () => {
  home = await useTemporaryHome();
  // A long name, and a hosts file the guest itself made longer than any the agent writes: a rename
  // to a shorter name must not leave the old text's tail behind.
  origin = await createMachine({ image: 'base', name: 'settings-origin-with-a-long-name', command: ['sleep', '100000'], memoryMiB: 256 });
  await startMachine(origin.id);
  await shellIn(origin, 'echo "10.1.2.3 added-by-the-guest-before-its-snapshot with-more-names" >> /etc/hosts');
  assert.match(await shellIn(origin, 'cat /etc/hosts'), /added-by-the-guest/);
  await snapshotMachine(origin, { name: 'origin@1' });
  await removeMachine(origin, { force: true });
  // The snapshot's clock falls behind from here: a restore that did not set it would be >= 6 s late.
  await sleep(6000);
});

after(async () => {
  await pool?.close();
  await home.cleanup();
});

for (const [label, name] of [
  ['a shorter name', 'short'],
  ['a name of the same length', 'settings-origin-with-a-long-nam2'],
  ['a longer name', 'settings-origin-with-an-even-longer-name-than-before'],
] as const) {
  test(`restored under ${label}: the first exec sees the new name files exactly, the host's clock and a reseeded RNG`, async () => {
    const first = await restoreAndProbe(name);
    const second = await restoreAndProbe(`${name.slice(0, 40)}-b`);
    try {
      for (const [{ seen, hostMs }, expected] of [
        [first, name],
        [second, `${name.slice(0, 40)}-b`],
      ] as const) {
        assert.equal(seen.name, expected);
        assert.equal(seen.hostnameFile, `${expected}\n`);
        assert.equal(seen.hostsFile, hostsFor(expected), 'the whole hosts file, nothing of the old text left');
        assert.ok(Math.abs(seen.clockMs - hostMs) < 3000, `guest clock ${seen.clockMs} vs host ${hostMs}`);
      }
      assert.match(first.seen.random, /^[0-9a-f]{32}$/);
      assert.notEqual(first.seen.random, second.seen.random, 'two restores of one snapshot read different random bytes');
    } finally {
      await removeMachine(first.machine, { force: true });
      await removeMachine(second.machine, { force: true });
    }
  });
}

test('through a pool with a standby QEMU: the same, and the files stay bound (a rewrite inside the guest is what /etc shows)', async () => {
  pool = createSupervisorPool(1);
  // The first restore teaches the pool the shape; the next ones adopt a standby QEMU.
  await removeMachine((await restoreAndProbe('pool-warm-up')).machine, { force: true });
  await sleep(2500);
  const { machine, seen, hostMs } = await restoreAndProbe('p');
  try {
    assert.equal(seen.name, 'p');
    assert.equal(seen.hostnameFile, 'p\n');
    assert.equal(seen.hostsFile, hostsFor('p'));
    assert.ok(Math.abs(seen.clockMs - hostMs) < 3000, `guest clock ${seen.clockMs} vs host ${hostMs}`);
    // /etc/hostname is still the runtime file the agent holds: a write through the path reads back.
    assert.equal(await shellIn(machine, 'echo inside > /etc/hostname; cat /run/torpor/hostname'), 'inside');
  } finally {
    await removeMachine(machine, { force: true });
  }
});
