import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { shell } from './testing/guest-shell.ts';
import { createMachine, startMachine, connectToMachine, removeMachine } from './machines.ts';
import { machineFiles } from './machine-files.ts';
import { bootTemplateName } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';
import { lazyMemoryFiles, lazyMemorySupport } from '../snapshot/lazy-memory.ts';
import { pathExists } from '../util/path-exists.ts';

// A start from a boot template serves the guest's RAM lazily from the template's RAM file in tmpfs
// (restore-materialization.ts). That file is shared by every later start: whatever a guest does, it
// must stay the template's, and one machine's memory must never show up in another.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;

before(async () => {
  home = await useTemporaryHome();
});

after(async () => {
  await home.cleanup();
});

function sha256(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

const allocatedMiB = async (path: string) => ((await stat(path)).blocks * 512) / 1024 ** 2;

async function startFromTemplate(name: string) {
  const config = await createMachine({ image: 'base', name, command: ['sleep', '100000'] });
  const state = await startMachine(config.id);
  assert.equal(state.status, 'running');
  return { config, client: await connectToMachine(config) };
}

test("a guest that writes all over its memory leaves the template's RAM and the next machine untouched", async () => {
  // The first start makes the template (a cold boot) and caches its layer and device state.
  const first = await startFromTemplate('first');
  const templateRam = templateMemoryFile(bootTemplateName(first.config));
  assert.ok(await pathExists(templateRam), "the template's RAM stays in tmpfs");
  first.client.close();
  await removeMachine(first.config, { force: true });

  const before = await sha256(templateRam);
  const writer = await startFromTemplate('writer');
  const writerRam = machineFiles(writer.config.id).memoryFile;
  const lazy = (await lazyMemorySupport()).available;
  if (lazy) {
    assert.ok(await pathExists(lazyMemoryFiles(writerRam).mapFile), 'the start is lazy where the host supports it');
    const templateMiB = await allocatedMiB(templateRam);
    const ownMiB = await allocatedMiB(writerRam);
    assert.ok(ownMiB < templateMiB / 2, `a lazily started machine holds only the pages it touched (${ownMiB.toFixed(0)} of ${templateMiB.toFixed(0)} MiB)`);
  }
  // 48 MiB of random data in the guest's tmpfs, and the page cache churned: pages the template
  // holds are written over.
  const written = await shell(
    writer.client,
    'dd if=/dev/urandom of=/dev/shm/secret bs=1M count=48 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; md5sum /dev/shm/secret | cut -c1-32',
  );
  assert.match(written, /^[0-9a-f]{32}$/);
  assert.equal(await shell(writer.client, 'md5sum /dev/shm/secret | cut -c1-32'), written, "the guest reads back what it wrote (its own pages)");
  assert.equal(await sha256(templateRam), before, "the template's RAM file is unchanged");

  const next = await startFromTemplate('next');
  assert.equal(await shell(next.client, 'ls /dev/shm/secret 2>/dev/null || echo absent'), 'absent', "another machine's memory does not leak in");
  assert.equal(await shell(next.client, 'echo answering'), 'answering');
  writer.client.close();
  next.client.close();
  await removeMachine(writer.config, { force: true });
  await removeMachine(next.config, { force: true });
  if (lazy) assert.equal(await pathExists(lazyMemoryFiles(writerRam).mapFile), false, "the removed machine's page map is gone");
});
