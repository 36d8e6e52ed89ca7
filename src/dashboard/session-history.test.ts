import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { appendFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SessionManager } from '../session/session-manager.ts';
import type { AgentSessionRecord } from '../session/session-store.ts';
import { SessionHistory } from './session-history.ts';

// The manager's side of the contract is only `list()` and its 'change' events; the sessions behind
// them are exercised for real by the browser test. Here: the file format and what gets recorded.
class ChangeSource extends EventEmitter<{ change: [AgentSessionRecord] }> {
  list(): AgentSessionRecord[] {
    return [];
  }
}

const record = (patch: Partial<AgentSessionRecord>): AgentSessionRecord => ({
  id: 's-0123456789ab',
  name: 'chat',
  spec: { image: 'base', command: ['sh'], env: [], cpus: 1, memoryMiB: 256, idleSeconds: 1 },
  state: 'running',
  turns: 0,
  createdAt: '2026-11-29T01:00:00.000Z',
  updatedAt: '2026-11-29T01:00:02.000Z',
  lastActivityAt: '2026-11-29T01:00:02.000Z',
  ...patch,
});

test('changes become history lines: the unannounced creation, states with turns, notes; torn lines are skipped', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-history-'));
  const source = new ChangeSource();
  const history = new SessionHistory(source as unknown as SessionManager, directory);
  try {
    source.emit('change', record({}));
    source.emit('change', record({ state: 'idle', turns: 1, updatedAt: '2026-11-29T01:00:03.000Z' }));
    source.emit('change', record({ state: 'idle', turns: 1, note: 'recovered from snapshot x', updatedAt: '2026-11-29T01:00:04.000Z' }));
    source.emit('change', record({ state: 'idle', turns: 1, note: 'recovered from snapshot x', updatedAt: '2026-11-29T01:00:05.000Z' }));
    await history.settled();
    // A server killed in the middle of an append leaves half a line; the next append starts a new one.
    appendFileSync(join(directory, 's-0123456789ab.jsonl'), '{"at":"2026-11-29T01:00:06.000Z","kind":"sta');
    appendFileSync(join(directory, 's-0123456789ab.jsonl'), '\n');
    source.emit('change', record({ state: 'hibernating', turns: 1, note: 'recovered from snapshot x', updatedAt: '2026-11-29T01:00:07.000Z' }));
    const events = history.read('s-0123456789ab');
    assert.deepEqual(
      events.map((event) => [event.kind, event.at.slice(17, 19), 'state' in event ? event.state : 'note' in event ? event.note : '']),
      [
        ['state', '00', 'creating'],
        ['state', '02', 'running'],
        ['state', '03', 'idle'],
        ['note', '04', 'recovered from snapshot x'],
        ['state', '07', 'hibernating'],
      ],
    );
    assert.deepEqual(history.read('s-unknown'), []);
    assert.deepEqual(history.read('../../../../etc/passwd'), [], 'an id is never a path');
  } finally {
    history.close();
    await rm(directory, { recursive: true, force: true });
  }
});
