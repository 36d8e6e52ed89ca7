import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { endChildProcess } from './child-exit.ts';

test('endChildProcess: the signal first, SIGKILL after the grace period for a child that ignores it', async () => {
  const polite = spawn('sleep', ['30']);
  await once(polite, 'spawn');
  await endChildProcess(polite, { graceMs: 10_000 });
  assert.equal(polite.signalCode, 'SIGTERM');

  // Ignores SIGTERM and SIGINT: only the SIGKILL after the grace period ends it.
  const stubborn = spawn('sh', ['-c', 'trap "" TERM INT; echo ready; while :; do sleep 1; done'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await once(stubborn.stdout, 'data');
  const started = Date.now();
  await endChildProcess(stubborn, { graceMs: 300, signal: 'SIGINT' });
  assert.equal(stubborn.signalCode, 'SIGKILL');
  assert.ok(Date.now() - started >= 250, 'waited for the grace period first');

  // Already gone: returns at once, sends nothing.
  await endChildProcess(stubborn, { graceMs: 10_000 });
});
