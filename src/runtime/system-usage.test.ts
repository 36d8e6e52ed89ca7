import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm, readFile, symlink, access, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { systemUsage, pruneSystem } from './system-usage.ts';
import { freeOrphanedTemplateMemory, recordTemplateMemoryOwner, templateMemoryFile, templateMemoryFiles } from './template-memory.ts';
import { machineFiles } from './machine-files.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';

const cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));
const mebibyte = Buffer.alloc(1024 * 1024, 7);
let home: string;
let memory: string;
let outside: string;
let sleeper: ChildProcess;
const saved = { home: process.env.TORPOR_HOME, memory: process.env.TORPOR_MEMORY_DIR };

async function writeMachine(id: string, name: string, state: Record<string, unknown>): Promise<void> {
  const files = machineFiles(id);
  await mkdir(files.directory, { recursive: true });
  await writeJsonAtomic(files.config, {
    id,
    name,
    createdAt: new Date().toISOString(),
    image: { reference: 'base', digest: 'sha256:0', diskPath: '/nonexistent' },
    command: ['true'],
    env: [],
    workingDir: '/',
    user: '',
    hostname: name,
    tty: false,
    interactive: false,
    cpus: 1,
    memoryMiB: 64,
    ports: [],
    network: false,
    autoRemove: false,
    accelerator: 'tcg',
    kernelPath: '/nonexistent',
    initramfsPath: '/nonexistent',
    kernelArguments: [],
    bootTimeoutMs: 1000,
  });
  await writeJsonAtomic(files.state, state);
  await writeFile(files.memoryFile, mebibyte);
}

const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'tp-df-'));
  memory = await mkdtemp('/dev/shm/torpor-df-test-');
  outside = await mkdtemp(join(tmpdir(), 'tp-df-outside-'));
  process.env.TORPOR_HOME = home;
  process.env.TORPOR_MEMORY_DIR = memory;
  // A live machine: its supervisor is recognised by pid and the word "supervisor" in its command line.
  sleeper = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', 'supervisor'], { stdio: 'ignore' });
  await writeMachine('aaaaaaaaaaaa', 'stopped', { status: 'exited', exitCode: 0 });
  await writeMachine('bbbbbbbbbbbb', 'alive', { status: 'running', supervisorPid: sleeper.pid });
  await recordTemplateMemoryOwner();
  await writeFile(templateMemoryFile('template-0123456789abcdef'), mebibyte);

  // Another state directory made a template, then was deleted with rm -rf.
  const gone = await mkdtemp(join(tmpdir(), 'tp-df-gone-'));
  process.env.TORPOR_HOME = gone;
  await recordTemplateMemoryOwner();
  await writeFile(templateMemoryFile('template-aaaaaaaaaaaaaaaa'), mebibyte);
  // Hostile: a template "RAM file" that is a symlink to a file outside; freeing must not touch the target.
  await writeFile(join(outside, 'precious'), 'keep me');
  await symlink(join(outside, 'precious'), templateMemoryFile('template-bbbbbbbbbbbbbbbb'));
  process.env.TORPOR_HOME = home;
  await rm(gone, { recursive: true, force: true });

  // Hostile: an owner marker whose content does not hash to its prefix claims a deleted directory.
  await writeFile(join(memory, '00000000-owner'), '/nonexistent/forged');
  await writeFile(join(memory, '00000000-template-cccccccccccccccc.ram'), mebibyte);
});

after(async () => {
  sleeper.kill('SIGKILL');
  process.env.TORPOR_HOME = saved.home;
  process.env.TORPOR_MEMORY_DIR = saved.memory;
  await rm(home, { recursive: true, force: true });
  await rm(memory, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

test('df counts machines, their RAM and template RAM by owner', async () => {
  const usage = await systemUsage();
  assert.equal(usage.machines.count, 2);
  assert.equal(usage.machines.live, 1);
  assert.equal(usage.memory.machines.count, 2);
  assert.equal(usage.memory.machines.reclaimableBytes, mebibyte.length, "only the stopped machine's RAM is reclaimable");
  const owners = (await templateMemoryFiles()).map((file) => file.owner).sort();
  assert.deepEqual(owners, ['orphaned', 'orphaned', 'this', 'unknown']);
  assert.ok(usage.stateDirectoryBytes > 0);
});

test('template RAM of a deleted state directory is freed, and nothing else', async () => {
  const freed = await freeOrphanedTemplateMemory();
  assert.equal(freed.files, 2);
  assert.equal(await readFile(join(outside, 'precious'), 'utf8'), 'keep me', 'a symlink is removed, not followed');
  const left = (await readdir(memory)).sort();
  assert.ok(left.includes('00000000-template-cccccccccccccccc.ram'), 'a forged owner does not get a file freed');
  assert.ok(await exists(templateMemoryFile('template-0123456789abcdef')), "this state directory's template stays");
});

test('prune needs --force without a terminal, then removes stopped machines and caches, not live machines', async () => {
  const environment = { ...process.env, TORPOR_HOME: home, TORPOR_MEMORY_DIR: memory };
  const refused = spawnSync(process.execPath, [cli, 'system', 'prune'], { encoding: 'utf8', env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
  assert.equal(refused.status, 125);
  assert.match(refused.stderr, /hint: torpor system prune --force/);
  assert.ok(await exists(machineFiles('aaaaaaaaaaaa').directory), 'nothing removed without --force');

  const result = await pruneSystem();
  assert.deepEqual(result.machines.removed, ['stopped']);
  assert.equal(result.templateMemory.files, 1);
  assert.ok(!(await exists(machineFiles('aaaaaaaaaaaa').directory)));
  assert.ok(!(await exists(machineFiles('aaaaaaaaaaaa').memoryFile)));
  assert.ok(await exists(machineFiles('bbbbbbbbbbbb').memoryFile), 'the live machine keeps its RAM');
  assert.ok(!(await exists(templateMemoryFile('template-0123456789abcdef'))));

  const json = spawnSync(process.execPath, [cli, 'system', 'df', '--json'], { encoding: 'utf8', env: environment });
  assert.equal(json.status, 0, json.stderr);
  assert.equal((JSON.parse(json.stdout) as { machines: { count: number } }).machines.count, 1);
});
