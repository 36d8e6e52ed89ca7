import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
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
