import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { openContextLog } from '../context/index.ts';
import { SessionManager } from '../session/session-manager.ts';
import { createApp } from './app.ts';

// A session's `network` option is checked before any machine is made: hostile ranges, ports and
// modes are a 400 with a hint, never text that reaches an nft rule. (The policy itself is enforced
// and attacked in src/network/network-policy.test.ts; the coding-agent example's session test uses
// `network: { allowHost: [port] }` to reach its dev LLM.)

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let manager: SessionManager;
let log: Awaited<ReturnType<typeof openContextLog>>;

before(async () => {
  home = await useTemporaryHome();
  log = await openContextLog({ stateDirectory: home.home });
  manager = new SessionManager({ log });
});

after(async () => {
  await manager.close();
  await log.close();
  await home.cleanup();
});

async function create(network: unknown) {
  // The whole app: errors are answered by its one handler.
  const app = createApp({ log, sessions: manager });
  const response = await app.request('/v1/sessions', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ image: 'base', command: ['true'], network }),
  });
  return { status: response.status, body: (await response.json()) as { error?: { code: string; message: string; hint?: string } } };
}

test('bad network options of a session are refused with a 400 and a hint, and create no session', async () => {
  for (const [network, code] of [
    [{ egressAllow: ['10.0.0.1/8'] }, 'invalid-cidr'],
    [{ egressDeny: ['0.0.0.0/0 accept'] }, 'invalid-cidr'],
    [{ allowHost: [70000] }, 'invalid-allow-host'],
    [{ allowHost: ['80; flush ruleset'] }, 'invalid-allow-host'],
    [{ mode: 'none', allowHost: [80] }, 'invalid-network'],
    [{ mode: 'bridge' }, 'invalid-request'],
    [{ allowHost: [80], extra: true }, 'invalid-request'],
  ] as const) {
    const { status, body } = await create(network);
    assert.equal(status, 400, JSON.stringify(network));
    assert.equal(body.error?.code, code, JSON.stringify(body));
    if (code !== 'invalid-request') assert.ok(body.error?.hint, JSON.stringify(body));
  }
  assert.deepEqual(manager.list(), []);
});
