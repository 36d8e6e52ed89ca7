import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { projectRoot } from '../util/project-root.ts';
import { TorporError } from '../util/errors.ts';
import { cacheHome, environment, environmentTable, stateHome, variables } from './environment.ts';
import { readEnvironmentTable } from './readme-table.ts';

const root = projectRoot();

function sourceFiles(directory: string): string[] {
  return readdirSync(directory).flatMap((name) => {
    const path = join(directory, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') && !name.endsWith('.test.ts') ? [path] : [];
  });
}

test("README.md's environment table is the one the schema makes", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  assert.equal(readEnvironmentTable(readme), environmentTable(), 'run: node --import tsx scripts/environment-table.ts --write');
});

test('every TORPOR_ variable the sources name is in the schema, and only config/ reads them', () => {
  // Set by torpor for the agent inside a session's machine, never read by the host.
  const setForGuests = new Set(['TORPOR_SESSION_ID']);
  const unknown: string[] = [];
  const directReads: string[] = [];
  for (const file of sourceFiles(join(root, 'src'))) {
    const text = readFileSync(file, 'utf8');
    const where = relative(root, file);
    for (const [name] of text.matchAll(/\bTORPOR_[A-Z_]+\b/g)) {
      if (!(name in variables) && !setForGuests.has(name)) unknown.push(`${where}: ${name}`);
    }
    // Reads only: test helpers set TORPOR_HOME for the code under test.
    if (!where.startsWith('src/config/') && /process\.env(\.(TORPOR_|XDG_|DOCKER_CONFIG)\w*\b|\[['"]TORPOR_\w*['"]\])(?!\s*=[^=])/.test(text))
      directReads.push(where);
  }
  assert.deepEqual(unknown, []);
  assert.deepEqual(directReads, [], 'read environment() from src/config/environment.ts instead');
});

test('defaults, parsed values, and errors that name the variable', () => {
  const defaults = environment({});
  assert.equal(defaults.TORPOR_MEMORY_DIR, '/dev/shm/torpor');
  assert.equal(defaults.TORPOR_ACCEL, 'auto');
  assert.equal(defaults.TORPOR_BOOT_TEMPLATES, true);
  assert.equal(defaults.TORPOR_BOOT_TIMEOUT_MS, 60_000);
  assert.equal(defaults.TORPOR_SNAPSHOT_WORKERS, undefined);
  assert.equal(defaults.TORPOR_NO_BUNDLE, false);

  const set = environment({ TORPOR_BOOT_TEMPLATES: '0', TORPOR_BOOT_TIMEOUT_MS: '200', TORPOR_SNAPSHOT_WORKERS: '0', TORPOR_ACCEL: 'tcg', TORPOR_HOME: '' });
  assert.equal(set.TORPOR_BOOT_TEMPLATES, false);
  assert.equal(set.TORPOR_BOOT_TIMEOUT_MS, 200);
  assert.equal(set.TORPOR_SNAPSHOT_WORKERS, 0);
  assert.equal(set.TORPOR_ACCEL, 'tcg');
  assert.equal(set.TORPOR_HOME, undefined, 'empty means unset');

  for (const [name, value] of [
    ['TORPOR_ACCEL', 'warp'],
    ['TORPOR_BOOT_TIMEOUT_MS', '-5'],
    ['TORPOR_BOOT_TIMEOUT_MS', '1e9'],
    ['TORPOR_BOOT_TEMPLATES', 'no'],
    ['TORPOR_SNAPSHOT_WORKERS', 'many'],
    ['TORPOR_URL', 'not a url'],
  ] as const) {
    assert.throws(
      () => environment({ [name]: value }),
      (error: unknown) =>
        error instanceof TorporError &&
        error.code === 'invalid-environment' &&
        error.message.startsWith(`${name}=`) &&
        /unset it or fix it/.test(error.hint ?? ''),
      `${name}=${value}`,
    );
  }
});

test('one state-directory resolver, absolute, with the XDG fallbacks', () => {
  assert.equal(stateHome({ TORPOR_HOME: '/srv/torpor' }), '/srv/torpor');
  assert.equal(stateHome({ TORPOR_HOME: 'relative/home' }), join(process.cwd(), 'relative/home'));
  assert.equal(stateHome({ XDG_DATA_HOME: '/data' }), '/data/torpor');
  assert.equal(cacheHome({ XDG_CACHE_HOME: '/cache' }), '/cache/torpor');
  assert.equal(cacheHome({ TORPOR_CACHE: '/c' }), '/c');
});
