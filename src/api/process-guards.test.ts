import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('with the guards installed, a stray rejection and a thrown callback are logged and the process goes on', () => {
  const guards = fileURLToPath(new URL('./process-guards.ts', import.meta.url));
  const script = `
    const { installProcessGuards } = await import(${JSON.stringify(guards)});
    installProcessGuards((text) => process.stderr.write(text));
    Promise.reject(new Error('one session broke'));
    setTimeout(() => { throw new Error('a callback threw'); }, 10);
    setTimeout(() => process.stdout.write('still serving'), 100);
  `;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, 'still serving');
  assert.match(result.stderr, /unhandled rejection \(the server keeps running\): Error: one session broke/);
  assert.match(result.stderr, /uncaught exception \(the server keeps running\): Error: a callback threw/);
  // Without the guards the same script dies: the test would notice guards that do nothing.
  const unguarded = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script.replace(/installProcessGuards\(.*\);/, '')], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.notEqual(unguarded.status, 0);
  assert.match(unguarded.stderr, /one session broke/);
  assert.doesNotMatch(unguarded.stdout, /still serving/);
});
