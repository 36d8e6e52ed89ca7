import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { buildProgram, commandModules, version } from './main.ts';

const cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));

test("the command table's summaries are the commands' own descriptions, and every command is in it", async () => {
  const full = await buildProgram([], { all: true });
  const listed = Object.fromEntries(commandModules.flatMap((module) => Object.entries(module.commands)));
  const registered = Object.fromEntries(full.commands.map((command) => [command.name(), command.description()]));
  assert.deepEqual(listed, registered);
});

test('a command line loads only the module of its command', async () => {
  const program = await buildProgram(['node', 'torpor', 'ps', '--json']);
  const ps = program.commands.find((command) => command.name() === 'ps')!;
  const run = program.commands.find((command) => command.name() === 'run')!;
  assert.ok(ps.options.some((option) => option.long === '--json'), 'ps is the real command');
  assert.equal(run.options.length, 0, 'run is only a stub');
});

test('the fast --version is the package version, and every command answers --help', () => {
  const packageVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  assert.equal(version, packageVersion);
  const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, TORPOR_HOME: '/nonexistent/torpor-help-test' } });
  assert.equal(run(['--version']).stdout, `${packageVersion}\n`);
  for (const name of Object.keys(Object.assign({}, ...commandModules.map((module) => module.commands)))) {
    const result = run([name, '--help']);
    assert.equal(result.status, 0, `${name} --help: ${result.stderr}`);
    assert.match(result.stdout, new RegExp(`^Usage: torpor ${name} `), name);
  }
});
