import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ContextLog } from '../context-log.ts';

/**
 * Kills a writer with SIGKILL in the middle of appending, then checks on a fresh connection that
 * every acknowledged batch is there at its acknowledged offsets, nothing is duplicated, and the
 * producer can resume exactly once: retrying the last acknowledged batch and the possibly
 * half-done next one writes each at most once.
 */
export async function runCrashScenario(childArguments: string[], open: () => Promise<ContextLog>, sessionId: string): Promise<void> {
  const script = fileURLToPath(new URL('./append-until-killed.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...childArguments], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const acknowledged = new Map<number, number>();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let buffer = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        const match = /^ack (\d+) (\d+)$/.exec(line);
        if (match) acknowledged.set(Number(match[1]), Number(match[2]));
        if (acknowledged.size === 150 && child.exitCode === null) {
          child.kill('SIGKILL');
          resolve();
        }
      }
    });
    child.once('exit', () => (acknowledged.size >= 150 ? resolve() : reject(new Error(`writer died early: ${stderr}`))));
  });
  await exited;

  const log = await open();
  try {
    const { entries } = await log.read(sessionId);
    const contents = entries.map((stored) => (stored.entry as { content: string }).content);
    assert.equal(new Set(contents).size, contents.length, 'no entry may be written twice');
    for (const [sequence, offset] of acknowledged) {
      assert.deepEqual(
        contents.slice(offset, offset + 3),
        [0, 1, 2].map((part) => `batch ${sequence} part ${part}`),
        `acknowledged batch ${sequence} must be at ${offset}`,
      );
    }
    const last = Math.max(...acknowledged.keys());
    const batch = (sequence: number) =>
      [0, 1, 2].map((part) => ({ kind: 'message' as const, role: 'user' as const, content: `batch ${sequence} part ${part}` }));
    const retried = await log.append(sessionId, batch(last), { producer: { id: 'crasher', epoch: 0, sequence: last } });
    assert.equal(retried.duplicate, true);
    assert.equal(retried.offsets[0], acknowledged.get(last));
    // The batch in flight at the kill may or may not have committed; either way it ends up there once.
    await log.append(sessionId, batch(last + 1), { producer: { id: 'crasher', epoch: 0, sequence: last + 1 } });
    const after = (await log.read(sessionId)).entries.map((stored) => (stored.entry as { content: string }).content);
    assert.equal(after.filter((content) => content === `batch ${last + 1} part 0`).length, 1);
    assert.equal(new Set(after).size, after.length);
  } finally {
    await log.close();
  }
}
