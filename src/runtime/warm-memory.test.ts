import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, removeMachine } from './machines.ts';
import { snapshotMachine, restoreMachine } from './snapshots.ts';
import { readLazyMemoryStatus } from '../snapshot/lazy-memory.ts';
import { memoryDirectory } from '../state/paths.ts';
import { homePrefix } from './template-memory.ts';
import { shellIn } from './testing/guest-shell.ts';

// The warm tier against real machines: a hibernation (snapshot + stop) leaves its RAM in tmpfs, the
// next restore of that snapshot takes it over (no chunk read from the store), the guest is intact,
// and the budget is respected.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;

const workload = String.raw`
mkdir -p /tmp/data; i=0
while [ $i -lt 8 ]; do head -c 1048576 /dev/urandom > /tmp/data/$i; i=$((i+1)); done
echo ready > /tmp/ready
while true; do sleep 1; done
`;
const checksums = 'cd /tmp/data && md5sum $(ls | sort -n) | cut -c1-32 | tr "\\n" " "';

const run = shellIn;

const warmEntries = async () => (await readdir(memoryDirectory())).filter((name) => name.startsWith(`${homePrefix()}warm-`) && name.endsWith('.ram'));

before(async () => {
  home = await useTemporaryHome();
});

after(async () => {
  delete process.env.TORPOR_WARM_MEMORY;
  await home.cleanup();
});

test('a hibernated machine stays warm and its next restore takes its RAM over', async () => {
  process.env.TORPOR_WARM_MEMORY = '1024';
  const machine = await createMachine({ image: 'base', name: 'sleeper', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(machine.id);
  for (let attempt = 0; attempt < 600 && (await run(machine, 'cat /tmp/ready 2>/dev/null')) !== 'ready'; attempt++)
    await new Promise((resolve) => setTimeout(resolve, 200));
  const expected = await run(machine, checksums);
  await snapshotMachine(machine, { name: 'sleeper@1', stop: true });
  await removeMachine(machine, { force: true });
  assert.equal((await warmEntries()).length, 1, 'the hibernated RAM is kept');

  const woken = await restoreMachine('sleeper@1', { name: 'woken' });
  try {
    assert.equal((await warmEntries()).length, 0, 'the restore took it over');
    const status = await readLazyMemoryStatus(join(memoryDirectory(), `${woken.id}.ram`));
    if (status) {
      // The machine came from the boot template lazily: its RAM file held only what it had loaded,
      // and those chunks were not read again.
      const before = status.counters.templateChunks + status.counters.storeChunks;
      assert.ok(status.loaded.some((flag) => flag === 1));
      assert.ok(
        before < status.loaded.filter((flag) => flag === 1).length,
        `served ${before} chunks again of ${status.loaded.filter((flag) => flag === 1).length} loaded`,
      );
    }
    assert.equal(await run(woken, checksums), expected);
    // Hibernated again and woken again: still the same data, from a second warm generation.
    await snapshotMachine(woken, { name: 'sleeper@2', stop: true });
  } finally {
    await removeMachine(woken, { force: true });
  }
  const again = await restoreMachine('sleeper@2', { name: 'again' });
  try {
    assert.equal(await run(again, checksums), expected);
  } finally {
    await removeMachine(again, { force: true });
  }
});

test('the warm tier keeps nothing beyond its budget', async () => {
  process.env.TORPOR_WARM_MEMORY = '1';
  const machine = await createMachine({ image: 'base', name: 'big', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(machine.id);
  await snapshotMachine(machine, { name: 'big@1', stop: true });
  await removeMachine(machine, { force: true });
  assert.deepEqual(await warmEntries(), []);
  const restored = await restoreMachine('big@1', { name: 'big-again' });
  await removeMachine(restored, { force: true });
});
