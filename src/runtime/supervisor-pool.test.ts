import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { SupervisorPool, type SupervisorPoolLimits } from './supervisor-pool.ts';
import type { StandbyRequest } from './standby-qemu.ts';
import { until } from './testing/until.ts';

// The pool's bookkeeping with real processes standing in for supervisors (no QEMU): each spare
// writes the lines it reads to a file and exits when its stdin ends, as a spare supervisor does.
// What a standby line makes a real supervisor do is fork-pool.test.ts's and standby-qemu.test.ts's.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let script: string;
let received: string;

const shape = (memoryMiB: number): StandbyRequest => ({
  cpus: 1,
  memoryMiB,
  accelerator: 'tcg',
  kernelPath: '/boot/vmlinuz',
  initramfsPath: '/boot/initrd',
  kernelArguments: ['quiet'],
  imageDisk: '/images/base',
  network: false,
  layerBytes: 1 << 30,
});

/** pid -> the standby shapes (memoryMiB) it was told, from the spares' own record. */
async function told(): Promise<Map<number, number[]>> {
  const result = new Map<number, number[]>();
  for (const line of (await readFile(received, 'utf8').catch(() => '')).split('\n').filter(Boolean)) {
    const [pid, ...rest] = line.split(' ');
    const text = rest.join(' ');
    const entry = result.get(Number(pid)) ?? [];
    if (text.startsWith('standby ')) entry.push((JSON.parse(text.slice('standby '.length)) as StandbyRequest).memoryMiB);
    result.set(Number(pid), entry);
  }
  return result;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

before(async () => {
  home = await useTemporaryHome();
  script = join(home.home, 'spare.mjs');
  received = join(home.home, 'received.txt');
  await writeFile(
    script,
    `import { appendFileSync } from 'node:fs';
appendFileSync(${JSON.stringify(received)}, process.pid + ' started\\n');
let text = '';
process.stdin.on('data', (chunk) => {
  text += chunk;
  for (let end = text.indexOf('\\n'); end >= 0; end = text.indexOf('\\n')) {
    appendFileSync(${JSON.stringify(received)}, process.pid + ' ' + text.slice(0, end) + '\\n');
    text = text.slice(end + 1);
  }
});
process.stdin.on('end', () => process.exit(0));
`,
  );
});

after(async () => {
  await home.cleanup();
});

/** A pool whose spares are the stand-in script, refilling 10 ms after a take. */
const standInPool = (limits: SupervisorPoolLimits) =>
  new SupervisorPool(
    async () => [script],
    () => process.env,
    limits,
    10,
  );

test('the pool keeps one spare, grows to a fork demand within its bounds, and moves standbys to the newest shape', async () => {
  const pool = standInPool({ spares: 3, standbys: 2 });
  const pids = new Set<number>();
  try {
    pool.fill();
    await until('one spare', () => pool.count().spares === 1 || undefined);
    // A fork of 4 of shape 256: at most 2 standbys (and so 2 spares), never 4.
    pool.want(shape(256), 4);
    await until('two spares holding 256', async () => (pool.count(shape(256)).standbys === 2 ? true : undefined));
    // Each spare records its own start (a node process: slower than the pool's count on a busy host).
    await until('both spares to record their start', async () => ((await told()).size >= 2 ? true : undefined));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(pool.count(), { spares: 2, standbys: 2 }, 'bounded by standbys, not by the fork');
    for (const [pid] of await told()) pids.add(pid);
    assert.equal(pids.size, 2, 'no more processes than that were started');

    // A wake of another shape: the newest demand takes one of the two standbys (one 256 spare is
    // ended, a fresh spare holds 320); a spare is told one shape in its life.
    pool.preStart(shape(320));
    await until('one standby of each shape', async () => (pool.count(shape(320)).standbys === 1 && pool.count(shape(256)).standbys === 1 ? true : undefined));
    const history = await until('the fresh spare to record its shape', async () => {
      const record = await told();
      return [...record.values()].some((shapes) => shapes.includes(320)) ? record : undefined;
    });
    for (const [pid, shapes] of history) {
      pids.add(pid);
      assert.ok(shapes.length <= 1, `spare ${pid} was told ${shapes.join(', ')}`);
    }
    await until('the ended spare to exit', () => ([...history.keys()].filter(alive).length === 2 ? true : undefined));
    assert.ok(pool.count().spares <= 3);

    // Taking by shape: the spare holding it, said so; take() prefers the last wake's shape.
    const byShape = pool.takeFor(shape(256), { refill: false });
    assert.equal(byShape.standby, true);
    assert.deepEqual(history.get(byShape.supervisor!.pid!), [256]);
    const wake = pool.takeFor(undefined, { refill: false });
    assert.equal(wake.standby, true, 'take() without a shape takes the last wake shape');
    assert.deepEqual(history.get(wake.supervisor!.pid!), [320]);
    const none = pool.takeFor(shape(512), { refill: false });
    assert.deepEqual(none, { standby: false }, 'an empty pool gives nothing (the start spawns its own)');
    for (const taken of [byShape, wake]) taken.supervisor!.stdin!.end();
  } finally {
    await pool.close();
  }
  await until('every spare to exit', () => ([...pids].some(alive) ? undefined : true));
});

test('limits of 0 keep no spare', async () => {
  const pool = standInPool({ spares: 0, standbys: 4 });
  try {
    pool.fill();
    pool.want(shape(256), 4);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(pool.count(), { spares: 0, standbys: 0 });
    assert.deepEqual(pool.takeFor(shape(256)), { standby: false });
  } finally {
    await pool.close();
  }
});
