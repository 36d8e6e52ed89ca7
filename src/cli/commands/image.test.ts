import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../../util/command.ts';

let work: string;

const runner = `
import { Command } from 'commander';
import { registerImageCommands } from ${JSON.stringify(new URL('./image.ts', import.meta.url).pathname)};
const program = new Command('torpor');
registerImageCommands(program);
try { await program.parseAsync(process.argv.slice(1), { from: 'user' }); }
catch (error) { process.stderr.write(JSON.stringify({ code: error.code, message: error.message, hint: error.hint })); process.exitCode = 125; }
`;

/** Runs one torpor command line in a child process, as a user would: stdout, stderr, exit code. */
async function torpor(...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return runCommand(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', runner, '--', ...args], {
    allowFailure: true,
    cwd: new URL('../../..', import.meta.url).pathname,
    env: { ...process.env },
  });
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'torpor-image-cli-'));
  process.env.TORPOR_HOME = join(work, 'home');
  await mkdir(join(work, 'root/etc'), { recursive: true });
  await writeFile(join(work, 'root/etc/motd'), 'hello\n');
  await runCommand('tar', ['-czf', join(work, 'rootfs.tar.gz'), '-C', join(work, 'root'), '.']);
});

after(async () => {
  await rm(work, { recursive: true, force: true });
  delete process.env.TORPOR_HOME;
});

test('image import prints the digest; images lists it; image rm removes it', async () => {
  const imported = await torpor('image', 'import', join(work, 'rootfs.tar.gz'), '--name', 'demo:1');
  const digest = imported.stdout.trim();
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);
  assert.match(imported.stderr, /importing rootfs.tar.gz as rootfs tar\n.*writing ext4 image/s);
  const listed = JSON.parse((await torpor('images', '--json')).stdout);
  assert.deepEqual(
    listed.map((image: { name: string; digest: string; source: string }) => [image.name, image.digest, image.source]),
    [['demo:1', digest, 'tar:rootfs.tar.gz']],
  );
  const table = (await torpor('images')).stdout;
  assert.match(table, /^NAME\s+DIGEST\s+SIZE\s+CREATED\s+SOURCE\n/);
  assert.match(table, new RegExp(`demo:1\\s+${digest.slice(7, 19)}\\s+\\d+(\\.\\d)?MiB\\s+\\d+s ago\\s+tar:rootfs.tar.gz`));
  assert.equal((await torpor('image', 'rm', 'demo:1')).stdout, `untagged demo:1\ndeleted ${digest}\n`);
  assert.deepEqual(JSON.parse((await torpor('images', '--json')).stdout), []);
});

test('errors are TorporErrors with a hint', async () => {
  const failure = async (...args: string[]) => {
    const result = await torpor(...args);
    assert.equal(result.code, 125, result.stderr);
    return JSON.parse(result.stderr) as { code: string; message: string; hint?: string };
  };
  assert.equal((await failure('image', 'rm', 'missing')).code, 'image-unknown');
  assert.match((await failure('login', 'localhost:5000', '-u', 'me')).hint!, /--password-stdin/);
  assert.equal((await failure('pull', 'Not/Valid')).code, 'invalid-reference');
  assert.equal((await failure('image', 'import', join(work, 'missing.tar'), '--name', 'x')).code, 'import-missing');
});
