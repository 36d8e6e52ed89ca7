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
  assert.ok(
    ps.options.some((option) => option.long === '--json'),
    'ps is the real command',
  );
  assert.equal(
    program.commands.find((command) => command.name() === 'run'),
    undefined,
    'run is not even a stub',
  );
  // An unknown word gets every command as a stub, for commander's suggestion.
  const unknown = await buildProgram(['node', 'torpor', 'pss']);
  const run = unknown.commands.find((command) => command.name() === 'run')!;
  assert.equal(run.options.length, 0, 'run is only a stub');
});

test('the fast --version is the package version, and every command answers --help', () => {
  const packageVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  assert.equal(version, packageVersion);
  const run = (args: string[]) =>
    spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, TORPOR_HOME: '/nonexistent/torpor-help-test' } });
  assert.equal(run(['--version']).stdout, `${packageVersion}\n`);
  for (const name of Object.keys(Object.assign({}, ...commandModules.map((module) => module.commands)))) {
    const result = run([name, '--help']);
    assert.equal(result.status, 0, `${name} --help: ${result.stderr}`);
    assert.match(result.stdout, new RegExp(`^Usage: torpor ${name} `), name);
  }
});

test('the fast commands load no heavy package: ps, logs, exec and an idle supervisor import only commander and node built-ins', async () => {
  const { readFileSync: read } = await import('node:fs');
  const { dirname, join } = await import('node:path');
  const { ensureBundles } = (await import(new URL('../../bin/bundles.mjs', import.meta.url).href)) as {
    ensureBundles: () => Promise<{ cli: string; supervisor: string }>;
  };
  const bundles = await ensureBundles();
  // The static import graph of a bundle file: what loads before any code runs.
  const packagesLoadedBy = (entry: string): Set<string> => {
    const packages = new Set<string>();
    const seen = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      for (const [, specifier] of read(file, 'utf8').matchAll(/^import\s(?:[^'"]*?\sfrom\s)?"([^"]+)"/gms)) {
        if (specifier!.startsWith('.')) visit(join(dirname(file), specifier!));
        else packages.add(specifier!);
      }
    };
    visit(entry);
    return packages;
  };
  const chunkOf = (command: string) => {
    const main = read(bundles.cli, 'utf8');
    const match = new RegExp(`import\\("(\\./chunks/${command}-[A-Z0-9]+\\.mjs)"\\)`).exec(main);
    assert.ok(match, `no chunk for ${command}`);
    return join(dirname(bundles.cli), match[1]!);
  };
  const allowed = (name: string) => name === 'commander' || name.startsWith('node:');
  for (const command of ['ps', 'logs', 'exec']) {
    const packages = [...packagesLoadedBy(bundles.cli), ...packagesLoadedBy(chunkOf(command))];
    assert.deepEqual(
      packages.filter((name) => !allowed(name)),
      [],
      command,
    );
  }
  assert.deepEqual(
    [...packagesLoadedBy(bundles.supervisor)].filter((name) => !name.startsWith('node:')),
    [],
    'supervisor',
  );
});

test("ps's quick flag parser agrees with commander on what it accepts, and leaves the rest to commander", async () => {
  const { quickPsFlags } = await import('./commands/ps.ts');
  const lines = [
    [],
    ['-a'],
    ['--all'],
    ['-aq'],
    ['-qa', '--json'],
    ['--spares', '--json'],
    ['-q', '--spares'],
    ['-x'],
    ['--help'],
    ['-ah'],
    ['extra'],
    ['--json=1'],
    ['--all', '--'],
  ];
  for (const words of lines) {
    const quick = quickPsFlags(words);
    if (words.some((word) => ['-x', '--help', '-ah', 'extra', '--json=1', '--'].includes(word))) {
      assert.equal(quick, undefined, `${words.join(' ')} must go to commander`);
      continue;
    }
    const program = await buildProgram(['node', 'torpor', 'ps', ...words]);
    program.exitOverride();
    let parsed: Record<string, unknown> | undefined;
    program.commands.find((command) => command.name() === 'ps')!.action((options: Record<string, unknown>) => void (parsed = options));
    await program.parseAsync(['node', 'torpor', 'ps', ...words]);
    assert.deepEqual(quick, parsed, words.join(' '));
  }
});
