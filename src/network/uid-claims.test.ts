import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test("uidPreparedFor: a starter's uid hint is used only when that claim is this machine's and this supervisor's", async () => {
  const runtime = await mkdtemp(join(tmpdir(), 'tp-uid-claims-'));
  const saved = process.env.TORPOR_RUNTIME_DIR;
  process.env.TORPOR_RUNTIME_DIR = runtime;
  try {
    const { claimUid, uidPreparedFor } = await import('./uid-claims.ts');
    const supervisor = process.pid;
    const mine = claimUid('machine-a', supervisor);
    const other = claimUid('machine-b', supervisor);
    const otherSupervisor = claimUid('machine-c', process.ppid);
    assert.equal(uidPreparedFor('machine-a', supervisor, mine), mine, 'the right hint');
    assert.equal(uidPreparedFor('machine-a', supervisor), mine, 'no hint: found by reading the claims');
    assert.equal(uidPreparedFor('machine-a', supervisor, other), mine, "another machine's uid as the hint is not taken");
    assert.equal(uidPreparedFor('machine-c', supervisor, otherSupervisor), undefined, "a claim made for another supervisor is not this one's");
    assert.equal(uidPreparedFor('machine-a', supervisor, 12.5), mine, 'a hint that is no uid is ignored');
    assert.equal(uidPreparedFor('machine-a', supervisor, 1_900_065_999), mine, 'a hint without a claim is ignored');
  } finally {
    if (saved === undefined) delete process.env.TORPOR_RUNTIME_DIR;
    else process.env.TORPOR_RUNTIME_DIR = saved;
    await rm(runtime, { recursive: true, force: true });
  }
});

test('pruneStaleClaims: frees the claims of killed machines (and their rules), never a live one', async () => {
  const runtime = await mkdtemp(join(tmpdir(), 'tp-uid-claims-'));
  const saved = process.env.TORPOR_RUNTIME_DIR;
  process.env.TORPOR_RUNTIME_DIR = runtime;
  // A live "supervisor": claims are checked by pid and command line.
  const live = spawn('bash', ['-c', 'exec -a torpor-supervisor sleep 60'], { stdio: 'ignore' });
  const dead = spawn('true');
  await once(dead, 'exit');
  try {
    const { claimUid, pruneStaleClaims, uidsHeldBy, claimDirectory } = await import('./uid-claims.ts');
    await new Promise((resolve) => setTimeout(resolve, 100)); // bash has exec'd
    const alive = claimUid('machine-live', live.pid!);
    const killed = claimUid('machine-killed', dead.pid!);
    const planted = 1_900_000_077;
    await writeFile(join(claimDirectory(), String(planted)), 'not json');
    await writeFile(join(claimDirectory(), 'not-a-uid'), '{}');
    const removed: number[] = [];
    const freed = await pruneStaleClaims(async (uid) => {
      removed.push(uid);
    });
    assert.deepEqual([...freed].sort(), [killed, planted].sort());
    assert.deepEqual([...removed].sort(), [killed, planted].sort(), 'the rules of exactly the freed uids are removed');
    assert.deepEqual(uidsHeldBy('machine-live'), [alive], "a live machine's claim stays");
    const left = (await readdir(claimDirectory())).sort();
    assert.deepEqual(left, [String(alive), 'not-a-uid'].sort(), 'freed claims are gone; what is not a claim is left alone');
    // A rule removal that fails leaves no claim held by the prune behind.
    const again = claimUid('machine-killed-2', dead.pid!);
    await assert.rejects(
      pruneStaleClaims(async () => Promise.reject(new Error('nft failed'))),
      /nft failed/,
    );
    assert.ok(!(await readdir(claimDirectory())).includes(String(again)), 'the claim is released even when the rules could not be removed');
  } finally {
    live.kill();
    if (saved === undefined) delete process.env.TORPOR_RUNTIME_DIR;
    else process.env.TORPOR_RUNTIME_DIR = saved;
    await rm(runtime, { recursive: true, force: true });
  }
});
