// Machines over the API, through the typed client, against a real `torpor serve` and real VMs:
// create, exec with streaming output, files, snapshot, restore, fork, remove; plus hostile input.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { startTorporServer, type TorporServerProcess } from './testing/torpor-server.ts';
import { InvalidRequestError, NotFoundError, Torpor, TorporApiError, type ExecEvent } from './index.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: TorporServerProcess;
let torpor: Torpor;

before(async () => {
  home = await useTemporaryHome();
  server = await startTorporServer({ env: { ...process.env, TORPOR_HOME: home.home } });
  torpor = new Torpor({ baseUrl: server.url, token: server.token });
});

after(async () => {
  await server?.stop();
  await home?.cleanup();
});

describe('machines through the client (real VMs)', { timeout: 600_000 }, () => {
  it('runs, streams exec output, moves files, snapshots, restores, forks and removes', async () => {
    const machine = await torpor.machines.create({ image: 'base', name: 'api-box', command: ['sleep', '3600'], resources: { memory: '256m' } });
    assert.equal(machine.name, 'api-box');
    assert.equal(machine.info.state.status, 'running');

    const events: ExecEvent[] = [];
    for await (const event of machine.exec(['sh', '-c', 'echo one; echo two >&2; sleep 0.2; echo three; exit 3'])) events.push(event);
    assert.equal(
      events
        .filter((event) => event.type === 'stdout')
        .map((event) => (event as { data: string }).data)
        .join(''),
      'one\nthree\n',
    );
    assert.equal(
      events
        .filter((event) => event.type === 'stderr')
        .map((event) => (event as { data: string }).data)
        .join(''),
      'two\n',
    );
    assert.deepEqual(events.at(-1), { type: 'exit', code: 3, signal: 0 });
    assert.deepEqual(await machine.exec(['cat'], { stdin: 'piped in' }).output(), { stdout: 'piped in', stderr: '', exitCode: 0 });
    await assert.rejects(machine.exec(['/no/such/program']).output(), (error: TorporApiError) => error.code === 'command-not-found');

    const bytes = new Uint8Array(70_000).map((_, index) => index % 251);
    await machine.files.write('/root/data.bin', bytes);
    assert.deepEqual(await machine.files.read('/root/data.bin'), bytes);
    await machine.files.write('/root/counter', 'before the snapshot\n');
    await assert.rejects(machine.files.read('/root/missing'), NotFoundError);

    const snapshot = await machine.snapshot('api-box-1');
    assert.equal(snapshot.name, 'api-box-1');
    await machine.files.write('/root/counter', 'after the snapshot\n');
    const restored = await torpor.machines.restore('api-box-1', { name: 'api-box-restored' });
    assert.equal(new TextDecoder().decode(await restored.files.read('/root/counter')), 'before the snapshot\n');
    assert.equal(new TextDecoder().decode(await machine.files.read('/root/counter')), 'after the snapshot\n');

    const [fork] = await machine.fork({ count: 1, namePrefix: 'api-fork' });
    assert.equal(new TextDecoder().decode(await fork!.files.read('/root/counter')), 'after the snapshot\n');
    assert.deepEqual((await torpor.machines.list()).map((info) => info.name).sort(), ['api-box', 'api-box-restored', 'api-fork-1']);

    await assert.rejects(machine.remove(), (error: TorporApiError) => error.status === 409 && error.code === 'machine-running');
    for (const handle of [fork!, restored, machine]) await handle.remove({ force: true });
    assert.deepEqual(await torpor.machines.list(), []);
    await assert.rejects(torpor.machines.get('api-box'), NotFoundError);
  });

  it('turns away hostile references, paths and bodies', async () => {
    // Names are file names in the state directory: a reference must not walk out of it.
    for (const reference of ['..', '../machines', '..%2F..%2Fetc', '.hidden']) {
      await assert.rejects(torpor.machines.get(reference), (error: TorporApiError) => error.status === 400 || error.status === 404, reference);
    }
    await assert.rejects(torpor.machines.get('nope'), (error: TorporApiError) => error instanceof NotFoundError && error.code === 'machine-unknown');
    await assert.rejects(torpor.machines.create({ image: 'base', name: '../evil' }), InvalidRequestError);
    await assert.rejects(torpor.machines.create({ image: 'base', resources: { memory: 'lots' } }), InvalidRequestError);
    const unknownImage = await torpor.machines.create({ image: 'no-such-image-here' }).catch((error: TorporApiError) => error);
    assert.ok(unknownImage instanceof TorporApiError && unknownImage.status === 404, String(unknownImage));
    const authorization = { authorization: `Bearer ${server.token}` };
    const relative = await fetch(`${server.url}/v1/machines/nope/files?path=etc/passwd`, { headers: authorization });
    assert.equal(relative.status, 400);
    const badExec = await fetch(`${server.url}/v1/machines/nope/exec`, {
      method: 'POST',
      headers: { ...authorization, 'content-type': 'application/json' },
      body: JSON.stringify({ command: 'rm -rf /' }),
    });
    assert.ok([400, 404].includes(badExec.status));
  });
});
