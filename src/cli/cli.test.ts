import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';

const cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));
let home: Awaited<ReturnType<typeof useTemporaryHome>>;

function torpor(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, TORPOR_HOME: home.home } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

before(async () => {
  home = await useTemporaryHome();
});
after(async () => {
  await home.cleanup();
});

test('run --rm prints the output, returns the exit code and leaves nothing behind', async () => {
  const result = await torpor(['run', '--rm', 'base', 'sh', '-c', 'echo hello; echo oops >&2; exit 4']);
  assert.equal(result.stdout, 'hello\n');
  assert.match(result.stderr, /oops/);
  assert.equal(result.code, 4);
  // The machine is torn down after the answer (architecture/runtime.md): shown as stopping, never
  // running, for that moment, then gone.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const left = JSON.parse((await torpor(['ps', '-a', '--json'])).stdout) as Array<{ state: { status: string } }>;
    assert.ok(
      left.every((machine) => machine.state.status !== 'running'),
      'a --rm machine shown as running after its answer',
    );
    if (left.length === 0) break;
    assert.ok(Date.now() < deadline, 'run --rm left its machine behind');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
});

test('run -i passes stdin to the process', async () => {
  const result = await torpor(['run', '--rm', '-i', 'base', 'tr', 'a-z', 'A-Z'], 'shout\n');
  assert.equal(result.stdout, 'SHOUT\n');
  assert.equal(result.code, 0);
});

test('detached machines show in ps, exec and logs work, rm -f removes them', async () => {
  const started = await torpor(['run', '-d', '--name', 'ticker', '--memory', '256m', 'base', 'sh', '-c', 'for i in 1 2 3; do echo tick $i; done; sleep 1000']);
  assert.equal(started.code, 0, started.stderr);
  assert.match(started.stdout, /^[0-9a-f]{12}\n$/);
  const listed = JSON.parse((await torpor(['ps', '--json'])).stdout) as Array<{ name: string; memoryMiB: number; state: { status: string } }>;
  assert.deepEqual(
    listed.map((machine) => [machine.name, machine.memoryMiB, machine.state.status]),
    [['ticker', 256, 'running']],
  );
  const table = (await torpor(['ps'])).stdout;
  assert.match(table, /NAME\s+ID\s+IMAGE\s+STATE\s+CPUS\s+MEM\s+UPTIME\s+ACCEL/);
  const exec = await torpor(['exec', 'ticker', 'sh', '-c', 'cat /etc/hostname; exit 9']);
  assert.deepEqual([exec.stdout, exec.code], ['ticker\n', 9]);
  assert.equal((await torpor(['exec', 'ticker', 'missing-command'])).code, 127);
  assert.equal((await torpor(['logs', 'ticker'])).stdout, 'tick 1\ntick 2\ntick 3\n');
  assert.equal((await torpor(['rm', '-f', 'ticker'])).code, 0);
  assert.equal((await torpor(['ps', '-a', '-q'])).stdout, '');
});

test('bad input gets a clear error with what to do', async () => {
  const unknownImage = await torpor(['run', '--rm', 'no-such-image', 'true']);
  assert.equal(unknownImage.code, 125);
  assert.match(unknownImage.stderr, /no such image: no-such-image\n\s+hint: .*torpor images/);
  const badMemory = await torpor(['run', '--memory', 'lots', 'base', 'true']);
  assert.match(badMemory.stderr, /invalid --memory value "lots"\n\s+hint: use a size like 512m/);
  const badPort = await torpor(['run', '-p', '80', 'base', 'true']);
  assert.match(badPort.stderr, /invalid -p value "80"/);
  const notRunning = await torpor(['exec', 'ghost', 'true']);
  assert.match(notRunning.stderr, /no such machine: ghost/);
});

test('snapshot, restore, fork and snapshots ls/rm from the command line', async () => {
  assert.equal((await torpor(['run', '-d', '--name', 'saved', '--memory', '256m', 'base', 'sh', '-c', 'echo state > /root/state; sleep 1000'])).code, 0);
  const snapshot = await torpor(['snapshot', 'saved', '--name', 'saved@1', '--json']);
  assert.equal(snapshot.code, 0, snapshot.stderr);
  const summary = JSON.parse(snapshot.stdout) as { name: string; totalMs: number; stats: { newCompressedBytes: number } };
  assert.equal(summary.name, 'saved@1');
  assert.ok(summary.stats.newCompressedBytes > 0);
  const restored = await torpor(['restore', 'saved@1', '--name', 'again']);
  assert.equal(restored.code, 0, restored.stderr);
  assert.equal((await torpor(['exec', 'again', 'cat', '/root/state'])).stdout, 'state\n');
  const forked = await torpor(['fork', 'saved', '-n', '2', '--json']);
  assert.equal(forked.code, 0, forked.stderr);
  assert.deepEqual(
    (JSON.parse(forked.stdout) as { forks: Array<{ name: string }> }).forks.map((fork) => fork.name),
    ['saved-fork-1', 'saved-fork-2'],
  );
  const listed = JSON.parse((await torpor(['snapshots', 'ls', '--json'])).stdout) as Array<{ name: string }>;
  assert.ok(listed.some((manifest) => manifest.name === 'saved@1'));
  assert.equal((await torpor(['snapshots', 'rm', 'saved@1'])).code, 0);
  const missing = await torpor(['restore', 'saved@1']);
  assert.equal(missing.code, 125);
  assert.match(missing.stderr, /no snapshot named saved@1/);
  assert.equal((await torpor(['rm', '-f', 'saved', 'again', 'saved-fork-1', 'saved-fork-2'])).code, 0);
});
