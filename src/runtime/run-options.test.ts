import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMemory, parsePort, parseCpus, validateMachineName } from './run-options.ts';

test('memory sizes parse like docker', () => {
  assert.equal(parseMemory('512m'), 512);
  assert.equal(parseMemory('2g'), 2048);
  assert.equal(parseMemory('1.5G'), 1536);
  assert.equal(parseMemory(String(256 * 1024 * 1024)), 256);
  assert.throws(() => parseMemory('lots'), /invalid --memory/);
  assert.throws(() => parseMemory('16m'), /too small/);
});

test('published ports parse like docker and bad ones say the format', () => {
  assert.deepEqual(parsePort('8080:80'), { hostAddress: '', hostPort: 8080, guestPort: 80, protocol: 'tcp' });
  assert.deepEqual(parsePort('127.0.0.1:8080:80/udp'), { hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80, protocol: 'udp' });
  assert.throws(
    () => parsePort('80'),
    (error: Error & { hint?: string }) => /HOST_PORT:GUEST_PORT/.test(error.hint ?? ''),
  );
  assert.throws(() => parsePort('70000:80'), /invalid -p/);
  assert.throws(() => parsePort('a:b'), /invalid -p/);
});

test('cpus and names are checked', () => {
  assert.equal(parseCpus('2'), 2);
  assert.throws(() => parseCpus('0'), /invalid --cpus/);
  assert.throws(() => parseCpus('1.5'), /invalid --cpus/);
  assert.throws(() => validateMachineName('../etc'), /invalid machine name/);
  validateMachineName('web-1.test_a');
});
