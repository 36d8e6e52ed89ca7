import { test } from 'node:test';
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { checkMachineCount, checkMachineSize, checkSessionCount, hostDefaultLimits, parseDiskSize, resolveLimits } from './limits.ts';
import { TorporError } from '../util/errors.ts';

test('defaults follow the host; the environment overrides them and flags override the environment', () => {
  assert.equal(hostDefaultLimits().maxCpus, availableParallelism());
  const limits = resolveLimits({ TORPOR_MAX_CPUS: '3', TORPOR_MAX_MEMORY: '2g', TORPOR_MAX_SESSIONS: '7' }, { maxCpus: '1', maxDiskGiB: '10g' });
  assert.deepEqual([limits.maxCpus, limits.maxMemoryMiB, limits.maxSessions, limits.maxDiskGiB], [1, 2048, 7, 10]);
  assert.throws(() => resolveLimits({ TORPOR_MAX_MACHINES: 'many' }), /TORPOR_MAX_MACHINES must be a whole number/);
  assert.throws(() => resolveLimits({}, { maxCpus: '0' }), /--max-cpus must be a whole number of at least 1/);
  assert.throws(() => resolveLimits({}, { maxMemoryMiB: 'lots' }), /--max-memory must be a memory size/);
  assert.equal(parseDiskSize('1536m'), 2);
  assert.throws(() => parseDiskSize('100m'), /at least 1g/);
});

test('each limit fails with its code, what was asked, the maximum and the flag that raises it', () => {
  const limits = { maxCpus: 2, maxMemoryMiB: 1024, maxDiskGiB: 8, maxMachines: 1, maxSessions: 1 };
  const refusal = (work: () => void) => {
    try {
      work();
    } catch (error) {
      assert.ok(error instanceof TorporError);
      return error;
    }
    assert.fail('no refusal');
  };
  assert.doesNotThrow(() => checkMachineSize(limits, { cpus: 2, memoryMiB: 1024, diskGiB: 8 }));
  const cpus = refusal(() => checkMachineSize(limits, { cpus: 64, memoryMiB: 512 }));
  assert.equal(cpus.code, 'limit-cpus');
  assert.match(cpus.hint!, /--max-cpus/);
  assert.equal(refusal(() => checkMachineSize(limits, { cpus: 1, memoryMiB: 256 * 1024 })).code, 'limit-memory');
  assert.equal(refusal(() => checkMachineSize(limits, { cpus: 1, memoryMiB: 512, diskGiB: 9 })).code, 'limit-disk');
  assert.equal(refusal(() => checkSessionCount(limits, 1)).code, 'limit-sessions');
  assert.equal(refusal(() => checkMachineCount(limits, 1)).code, 'limit-machines');
  assert.doesNotThrow(() => checkMachineCount(limits, 0));
});
